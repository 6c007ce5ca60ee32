//! `cargo bench -p sluice-resilience` (needs Redis on 127.0.0.1:6379; `make bench` starts it).
//!
//! - breaker overhead per call while closed, alone and with two threads calling at once;
//! - local GCRA check;
//! - distributed GCRA round trip next to a plain PING on the same connection.

use std::{
    hint::black_box,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use redis::{Client, aio::ConnectionManager};
use sluice_resilience::{BreakerConfig, CircuitBreaker, LocalLimiter, RedisLimiter};

fn breaker(c: &mut Criterion) {
    let b = CircuitBreaker::new("bench", BreakerConfig::database());
    c.bench_function("breaker/closed/uncontended", |bench| {
        bench.iter(|| match b.try_acquire() {
            Ok(permit) => permit.success(),
            Err(err) => panic!("closed breaker refused: {err}"),
        });
    });
    c.bench_function("breaker/closed/2-threads", |bench| {
        bench.iter_custom(|iters| {
            let start = Instant::now();
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let b = b.clone();
                    thread::spawn(move || {
                        for _ in 0..iters {
                            if let Ok(permit) = b.try_acquire() {
                                permit.success();
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.join();
            }
            start.elapsed()
        });
    });
}

fn local_limiter(c: &mut Criterion) {
    let limiter = LocalLimiter::new(1e9, 1_000_000).expect("valid limiter");
    c.bench_function("limiter/local/check", |bench| {
        bench.iter(|| black_box(limiter.check().is_ok()));
    });
}

fn redis_limiter(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url =
        std::env::var("SLUICE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let conn = rt.block_on(async {
        let client = Client::open(url.as_str()).expect("Redis URL");
        ConnectionManager::new(client)
            .await
            .expect("Redis on 127.0.0.1:6379 (make deps)")
    });
    let prefix = format!("bench:{}:", std::process::id());
    let limiter =
        Arc::new(RedisLimiter::new(conn.clone(), prefix.clone(), 1e6, 1_000_000).expect("valid"));
    let mut group = c.benchmark_group("limiter/redis");
    group.bench_function("ping", |bench| {
        bench.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .expect("PING")
            }
        });
    });
    group.bench_function("gcra-check", |bench| {
        bench.to_async(&rt).iter(|| {
            let limiter = limiter.clone();
            async move { limiter.check("k").await.is_ok() }
        });
    });
    group.finish();
    rt.block_on(async {
        let mut conn = conn.clone();
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(format!("{prefix}k"))
            .query_async(&mut conn)
            .await;
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = breaker, local_limiter, redis_limiter
}
criterion_main!(benches);
