//! The testkit's own tests: every dependency works for real, tests stay isolated, resources are
//! cleaned up, the fault proxy cuts and restores, child services start and stop.

mod amqp;
mod kafka;
mod mongo;
mod postgres;
mod proxy;
mod redis;
mod spawn;
