//! Integration tests of sluice-dashboard against the real servers of scripts/deps.sh: each
//! test has its own Postgres database, Redis prefix, Mongo database and Kafka topics.

mod auth;
mod browser;
mod cli;
mod data;
mod end_to_end;
mod live;
mod roles;
mod sessions;
mod socket_limit;
mod support;
