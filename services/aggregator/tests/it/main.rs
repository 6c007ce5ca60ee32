//! The aggregator against real Postgres, Redis and RabbitMQ: the HTTP contract, exact dedup,
//! crashes, dependency outages, abuse limits and the AMQP ingress.

mod abuse;
mod amqp;
mod api;
mod cli;
mod crash;
mod dedup;
mod faults;
mod overload;
mod poison;
mod redelivery;
mod redis_loss;
mod support;
