//! The producer against real MongoDB-, RabbitMQ-, Redis-, Kafka-protocol servers and a real
//! aggregator: delivery, dead letters, crashes, broken connections, resumed scaling.

mod http;
mod kafka;
mod mongo;
mod rabbitmq;
mod scaling;
mod support;
