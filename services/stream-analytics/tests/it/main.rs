//! Integration tests of sluice-analytics against the real Kafka-protocol broker and
//! MongoDB-protocol server of scripts/deps.sh.

mod backlog;
mod broker_restart;
mod crash;
mod data;
mod dead_letters;
mod faults;
mod replicas;
mod results;
mod support;
