//! sluice-resilience against the real Redis: the distributed limiter across OS processes and
//! its behaviour when Redis is unreachable.

mod redis_limiter;
