use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use tokio::sync::watch;
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;

fn config() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: 3,
        failure_rate: 2.0,
        window: Duration::from_secs(10),
        min_calls: 1,
        open_for: Duration::from_secs(5),
        half_open_probes: 2,
        half_open_successes: 2,
        ..BreakerConfig::database()
    }
}

/// Trips `b` (3 failures in a row with `config()`) and waits out the cooldown.
async fn trip_and_cool_down(b: &CircuitBreaker) {
    for _ in 0..3 {
        fail(b).await;
    }
    assert_eq!(b.state(), State::Open);
    tokio::time::advance(Duration::from_secs(5)).await;
}

async fn fail(b: &CircuitBreaker) {
    let _ = b.call(async { Err::<(), _>("boom") }).await;
}

async fn succeed(b: &CircuitBreaker) -> Result<(), CallError<&'static str>> {
    b.call(async { Ok::<_, &str>(()) }).await
}

#[tokio::test(start_paused = true)]
async fn trips_after_consecutive_failures_and_a_success_resets_the_streak() {
    let b = CircuitBreaker::try_new("t", config()).expect("valid");
    fail(&b).await;
    fail(&b).await;
    succeed(&b).await.expect("closed");
    fail(&b).await;
    fail(&b).await;
    assert_eq!(b.state(), State::Closed);
    fail(&b).await;
    assert_eq!(b.state(), State::Open);
    match succeed(&b).await {
        Err(CallError::Rejected(Error::CircuitOpen { retry_in, .. })) => {
            assert_eq!(retry_in, Duration::from_secs(5));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn trips_on_failure_rate_only_with_enough_calls() {
    let b = CircuitBreaker::try_new(
        "rate",
        BreakerConfig {
            consecutive_failures: 0,
            failure_rate: 0.5,
            min_calls: 10,
            ..config()
        },
    )
    .expect("valid");
    for _ in 0..4 {
        succeed(&b).await.expect("closed");
        fail(&b).await;
    }
    assert_eq!(b.state(), State::Closed, "8 calls are below min_calls");
    succeed(&b).await.expect("closed");
    fail(&b).await;
    assert_eq!(b.state(), State::Open, "5 of 10 failed");
}

#[tokio::test(start_paused = true)]
async fn failures_that_left_the_window_do_not_count() {
    let b = CircuitBreaker::try_new(
        "window",
        BreakerConfig {
            consecutive_failures: 0,
            failure_rate: 0.5,
            min_calls: 4,
            ..config()
        },
    )
    .expect("valid");
    fail(&b).await;
    fail(&b).await;
    tokio::time::advance(Duration::from_secs(11)).await;
    succeed(&b).await.expect("closed");
    succeed(&b).await.expect("closed");
    succeed(&b).await.expect("closed");
    fail(&b).await;
    assert_eq!(b.state(), State::Closed, "1 of 4 in the window failed");
}

#[tokio::test(start_paused = true)]
async fn half_open_after_cooldown_closes_after_m_successes() {
    let b = CircuitBreaker::try_new("recover", config()).expect("valid");
    for _ in 0..3 {
        fail(&b).await;
    }
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(succeed(&b).await.is_err(), "still cooling down");
    tokio::time::advance(Duration::from_secs(1)).await;
    succeed(&b).await.expect("first probe");
    assert_eq!(b.state(), State::HalfOpen);
    succeed(&b).await.expect("second probe");
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_again() {
    let b = CircuitBreaker::try_new("reopen", config()).expect("valid");
    for _ in 0..3 {
        fail(&b).await;
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    fail(&b).await;
    assert_eq!(b.state(), State::Open);
    assert!(succeed(&b).await.is_err(), "a new cooldown started");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_slot() {
    let b = CircuitBreaker::try_new(
        "drop",
        BreakerConfig {
            half_open_probes: 1,
            ..config()
        },
    )
    .expect("valid");
    for _ in 0..3 {
        fail(&b).await;
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    let probe = b.try_acquire().expect("probe");
    assert!(probe.is_probe());
    assert!(b.try_acquire().is_err(), "the only slot is taken");
    drop(probe);
    b.try_acquire().expect("slot freed").success();
}

#[tokio::test(start_paused = true)]
async fn an_outcome_from_an_earlier_closed_period_is_not_counted() {
    let b = CircuitBreaker::try_new("generations", config()).expect("valid");
    // Started in the first closed period, it outlives a whole open / half-open / closed cycle.
    let old = b.try_acquire().expect("closed");
    trip_and_cool_down(&b).await;
    succeed(&b).await.expect("probe");
    succeed(&b).await.expect("probe");
    assert_eq!(b.state(), State::Closed);
    fail(&b).await;
    fail(&b).await;
    old.failure();
    assert_eq!(
        b.state(),
        State::Closed,
        "two failures of this period plus one of the last are not three in a row"
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_from_an_earlier_half_open_round_is_not_counted() {
    let b = CircuitBreaker::try_new("rounds", config()).expect("valid");
    trip_and_cool_down(&b).await;
    let old_probe = b.try_acquire().expect("first round's probe");
    fail(&b).await;
    assert_eq!(b.state(), State::Open, "the other probe failed");
    tokio::time::advance(Duration::from_secs(5)).await;
    succeed(&b).await.expect("second round's probe");
    old_probe.success();
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "one success of this round; the other belongs to the last round"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_half_open_round_has_every_probe_slot() {
    let b = CircuitBreaker::try_new("slots", config()).expect("valid");
    trip_and_cool_down(&b).await;
    let _still_running = b.try_acquire().expect("first round's probe");
    fail(&b).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    let first = b.try_acquire().expect("second round, first slot");
    let second = b
        .try_acquire()
        .expect("second round, second slot: the last round's probe holds none");
    assert!(first.is_probe() && second.is_probe());
    assert!(b.try_acquire().is_err(), "both slots are taken");
}

#[tokio::test(start_paused = true)]
async fn a_hung_probe_times_out_and_frees_its_slot() {
    let b = CircuitBreaker::try_new(
        "hung",
        BreakerConfig {
            half_open_probes: 1,
            ..config()
        },
    )
    .expect("valid");
    trip_and_cool_down(&b).await;
    let _hung = b.try_acquire().expect("probe");
    assert!(b.try_acquire().is_err(), "the only slot is taken");
    tokio::time::advance(Duration::from_secs(3600)).await;
    let probe = b
        .try_acquire()
        .expect("an hour later the hung probe no longer holds the slot");
    assert!(probe.is_probe());
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_times_out_counts_as_failed_at_its_deadline() {
    let b = CircuitBreaker::try_new(
        "deadline",
        BreakerConfig {
            half_open_probes: 1,
            probe_timeout: Duration::from_secs(10),
            ..config()
        },
    )
    .expect("valid");
    trip_and_cool_down(&b).await;
    let late = b.try_acquire().expect("probe");
    tokio::time::advance(Duration::from_secs(10)).await;
    late.success();
    assert_eq!(
        b.state(),
        State::Open,
        "an answer at the deadline is too late to count"
    );
    match b.try_acquire() {
        Err(Error::CircuitOpen { retry_in, .. }) => {
            assert_eq!(retry_in, Duration::from_secs(5), "open since the deadline");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    let in_time = b.try_acquire().expect("the next round's probe");
    tokio::time::advance(Duration::from_secs(9)).await;
    in_time.success();
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "one success in time, one more needed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_1000_concurrent_calls_in_half_open_exactly_n_reach_the_callee() {
    const PROBES: u32 = 3;
    let b = CircuitBreaker::try_new(
        "herd",
        BreakerConfig {
            open_for: Duration::ZERO,
            half_open_probes: PROBES,
            half_open_successes: PROBES,
            ..config()
        },
    )
    .expect("valid");
    for _ in 0..3 {
        fail(&b).await;
    }
    assert_eq!(b.state(), State::Open);

    let reached = Arc::new(AtomicU32::new(0));
    let rejected = Arc::new(AtomicU32::new(0));
    let (release, released) = watch::channel(false);
    let calls: Vec<_> = (0..1000)
        .map(|_| {
            let (b, reached, rejected) = (b.clone(), reached.clone(), rejected.clone());
            let mut released = released.clone();
            tokio::spawn(async move {
                let outcome = b
                    .call(async move {
                        reached.fetch_add(1, Ordering::SeqCst);
                        let _ = released.wait_for(|r| *r).await;
                        Ok::<_, &str>(())
                    })
                    .await;
                if matches!(outcome, Err(CallError::Rejected(_))) {
                    rejected.fetch_add(1, Ordering::SeqCst);
                }
                outcome
            })
        })
        .collect();
    // Probes stay in the callee until released, so every other call must be rejected.
    let settled = async {
        while rejected.load(Ordering::SeqCst) + reached.load(Ordering::SeqCst) < 1000 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), settled)
        .await
        .expect("every call settled");
    assert_eq!(reached.load(Ordering::SeqCst), PROBES);
    assert_eq!(rejected.load(Ordering::SeqCst), 1000 - PROBES);
    release.send(true).expect("release");
    for call in calls {
        let _ = call.await.expect("join");
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        PROBES,
        "exactly N reached the callee"
    );
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn registry_exports_state_calls_rejections_and_transitions() {
    let registry = prometheus::Registry::new();
    let breakers = BreakerRegistry::new(&registry).expect("metrics");
    let b = breakers.get_or_create("pg", config()).expect("valid");
    assert!(
        breakers
            .get_or_create("pg", BreakerConfig::broker())
            .is_ok()
    );
    for _ in 0..3 {
        fail(&b).await;
    }
    assert!(succeed(&b).await.is_err());
    let text = {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut buf,
        )
        .expect("encode");
        String::from_utf8(buf).expect("utf8")
    };
    for line in [
        r#"sluice_circuit_breaker_state{name="pg"} 1"#,
        r#"sluice_circuit_breaker_calls_total{name="pg",outcome="failure"} 3"#,
        r#"sluice_circuit_breaker_rejections_total{name="pg"} 1"#,
        r#"sluice_circuit_breaker_transitions_total{from="closed",name="pg",to="open"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert_eq!(breakers.states(), vec![("pg".to_owned(), State::Open)]);
    assert!(
        breakers
            .get_or_create(
                "bad",
                BreakerConfig {
                    half_open_probes: 0,
                    ..config()
                }
            )
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn tower_layer_counts_classified_responses_and_rejects_when_open() {
    let b = CircuitBreaker::try_new("http", config()).expect("valid");
    let mut svc = CircuitBreakerLayer::new(b.clone())
        .classify_responses(|status: &u16| *status >= 500)
        .layer(service_fn(|status: u16| async move {
            Ok::<_, std::io::Error>(status)
        }));
    for _ in 0..3 {
        let status = svc
            .ready()
            .await
            .expect("ready")
            .call(503)
            .await
            .expect("a response");
        assert_eq!(status, 503);
    }
    assert_eq!(b.state(), State::Open);
    let err = svc
        .ready()
        .await
        .expect("ready")
        .call(200)
        .await
        .expect_err("rejected");
    assert!(err.downcast_ref::<Error>().is_some(), "{err}");
}

#[test]
fn invalid_configs_name_the_setting() {
    let err = CircuitBreaker::try_new(
        "x",
        BreakerConfig {
            half_open_probes: 0,
            ..config()
        },
    )
    .expect_err("invalid");
    assert!(err.to_string().contains("half_open_probes"), "{err}");
    let err = CircuitBreaker::try_new(
        "x",
        BreakerConfig {
            failure_rate: f64::NAN,
            ..config()
        },
    )
    .expect_err("invalid");
    assert!(err.to_string().contains("failure_rate"), "{err}");
    for probe_timeout in [Duration::ZERO, Duration::MAX] {
        let err = CircuitBreaker::try_new(
            "x",
            BreakerConfig {
                probe_timeout,
                ..config()
            },
        )
        .expect_err("invalid");
        assert!(err.to_string().contains("probe_timeout"), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_for_too_long_for_the_clock_is_refused_instead_of_panicking() {
    let forever = BreakerConfig {
        open_for: Duration::MAX,
        ..config()
    };
    // `new` falls back to the database preset rather than panicking when the breaker trips.
    let b = CircuitBreaker::new("forever", forever.clone());
    for _ in 0..5 {
        fail(&b).await;
    }
    assert!(matches!(
        succeed(&b).await,
        Err(CallError::Rejected(Error::CircuitOpen { .. }))
    ));
    let err = CircuitBreaker::try_new("forever", forever).expect_err("invalid");
    assert!(err.to_string().contains("open_for"), "{err}");
}
