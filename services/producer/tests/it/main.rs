//! The producer against real MongoDB-, RabbitMQ-, Redis-, Kafka-protocol servers and a real
//! aggregator: delivery, dead letters, crashes, broken connections, resumed scaling.

mod cli;
mod http;
mod http_answers;
mod jsonl;
mod kafka;
mod mongo;
mod rabbitmq;
mod rabbitmq_refusals;
mod scaling;
mod support;
