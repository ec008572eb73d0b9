//! One contract for every rate limiter: the same cases run against the
//! in-process limiter and against the Redis limiter on the machine's Redis
//! (127.0.0.1:6379, or `MUME_TEST_REDIS_URL`), each run under a key prefix
//! of its own. Then the Redis limiter's fallback: a Redis of the test's own
//! is killed and restarted (RL-03).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use mume_gateway::ratelimit::redis::RedisLimiter;
use mume_gateway::ratelimit::{LimitKind, LimiterHealth, MemoryLimiter, RateLimiter};
use mume_gateway::store::KeyLimits;

use crate::support::redis::{free_port, OwnRedis};

pub fn redis_url() -> String {
    std::env::var("MUME_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn prefix() -> String {
    format!("mume:test:{}:", ulid::Ulid::new())
}

async fn on_every_limiter<F, Fut>(case: F)
where
    F: Fn(Arc<dyn RateLimiter>) -> Fut,
    Fut: Future<Output = ()>,
{
    case(Arc::new(MemoryLimiter::default())).await;
    let redis = RedisLimiter::start(&redis_url(), &prefix(), 1)
        .await
        .expect("a Redis URL");
    assert_eq!(
        redis.health(),
        LimiterHealth::Redis,
        "Redis at {} must be up (tests/run.sh starts it)",
        redis_url()
    );
    case(redis).await;
}

fn rpm(n: u32) -> KeyLimits {
    KeyLimits {
        rpm: Some(n),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_burst_gets_exactly_the_limit_then_a_retry_after() {
    on_every_limiter(|limiter| async move {
        for i in 0..60u64 {
            let (_, status) = limiter
                .admit("k", rpm(60), None)
                .await
                .expect("within the limit");
            assert_eq!(status.requests.unwrap().remaining, 59 - i);
        }
        let refused = limiter.admit("k", rpm(60), None).await.unwrap_err();
        assert_eq!(refused.kind, LimitKind::Requests);
        assert_eq!(refused.limit, 60);
        assert!(
            !refused.retry_after.is_zero() && refused.retry_after <= Duration::from_millis(1000),
            "{:?}",
            refused.retry_after
        );
        assert_eq!(refused.status.requests.unwrap().remaining, 0);
        // Another key is not affected.
        assert!(limiter.admit("other", rpm(60), None).await.is_ok());
    })
    .await;
}

#[tokio::test]
async fn parallel_requests_get_exactly_the_limit() {
    on_every_limiter(|limiter| async move {
        let tries = (0..200).map(|_| {
            let limiter = limiter.clone();
            async move { limiter.admit("k", rpm(60), None).await.is_ok() }
        });
        let started = Instant::now();
        let admitted = join_all(tries).await.into_iter().filter(|ok| *ok).count();
        // One more per second the burst took (the limit refills).
        let refilled = started.elapsed().as_secs() as usize;
        assert!((60..=60 + refilled).contains(&admitted), "{admitted}");
    })
    .await;
}

#[tokio::test]
async fn tokens_are_charged_after_the_fact_and_owed() {
    on_every_limiter(|limiter| async move {
        let limits = KeyLimits {
            tpm: Some(1000),
            ..Default::default()
        };
        let too_big = limiter.admit("k", limits, Some(1001)).await.unwrap_err();
        assert_eq!(too_big.kind, LimitKind::TokensTooLarge { max_tokens: 1001 });
        assert!(limiter.admit("k", limits, Some(1000)).await.is_ok());
        // 1500 tokens at 1000 a minute: 30 s past the window.
        limiter.charge_tokens("k", limits, 1500).await;
        let owed = limiter.admit("k", limits, None).await.unwrap_err();
        assert_eq!(owed.kind, LimitKind::Tokens);
        assert!(
            owed.retry_after > Duration::from_secs(25)
                && owed.retry_after <= Duration::from_secs(30),
            "{:?}",
            owed.retry_after
        );
    })
    .await;
}

#[tokio::test]
async fn concurrency_slots_come_back_when_requests_end() {
    on_every_limiter(|limiter| async move {
        let limits = KeyLimits {
            max_concurrent: Some(2),
            ..Default::default()
        };
        let (a, _) = limiter.admit("k", limits, None).await.unwrap();
        let (_b, _) = limiter.admit("k", limits, None).await.unwrap();
        let refused = limiter.admit("k", limits, None).await.unwrap_err();
        assert_eq!(refused.kind, LimitKind::Concurrency);
        drop(a);
        // The Redis lease is removed in the background: give it a moment.
        let started = Instant::now();
        loop {
            if limiter.admit("k", limits, None).await.is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "the slot never came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

pub async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rl03_without_redis_limits_hold_per_instance_and_redis_is_used_again_once_back() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut redis = Some(OwnRedis::start(port));
    let limiter = RedisLimiter::start(&url, &prefix(), 4).await.unwrap();
    eventually(Duration::from_secs(5), "connecting to Redis", || {
        limiter.health() == LimiterHealth::Redis
    })
    .await;
    assert!(limiter.admit("k", rpm(40), None).await.is_ok());

    // Redis dies: no request fails, and each instance enforces 40 ÷ 4.
    drop(redis.take());
    let mut admitted = 0;
    for _ in 0..20 {
        let started = Instant::now();
        if limiter.admit("k2", rpm(40), None).await.is_ok() {
            admitted += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a dead Redis must not stall requests"
        );
    }
    assert_eq!(admitted, 10);
    assert_eq!(limiter.health(), LimiterHealth::Fallback { instances: 4 });

    // Redis is back: the limiter returns to it within 5 s.
    let back = Instant::now();
    let _redis = OwnRedis::start(port);
    eventually(Duration::from_secs(5), "going back to Redis", || {
        limiter.health() == LimiterHealth::Redis
    })
    .await;
    assert!(back.elapsed() <= Duration::from_secs(5));
    let (_, status) = limiter.admit("k3", rpm(40), None).await.unwrap();
    assert_eq!(
        status.requests.unwrap().remaining,
        39,
        "decided by Redis again"
    );
}

#[tokio::test]
async fn an_unreachable_redis_at_start_is_a_fallback_not_an_error() {
    let url = crate::support::upstream::closed_port_url().replace("http://", "redis://");
    let url = url.trim_end_matches("/v1").to_string();
    let limiter = RedisLimiter::start(&url, &prefix(), 2).await.unwrap();
    assert_eq!(limiter.health(), LimiterHealth::Fallback { instances: 2 });
    let limits = KeyLimits {
        rpm: Some(10),
        ..Default::default()
    };
    let admitted = join_all((0..10).map(|_| limiter.admit("k", limits, None)))
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count();
    assert_eq!(admitted, 5, "10 ÷ 2 instances");
}

/// A request refused for concurrency does not use up one of the minute's
/// requests: the slot is checked first.
#[tokio::test]
async fn a_concurrency_refusal_leaves_the_minute_alone() {
    on_every_limiter(|limiter| async move {
        let limits = KeyLimits {
            rpm: Some(3),
            max_concurrent: Some(1),
            ..Default::default()
        };
        let (held, status) = limiter.admit("k", limits, None).await.unwrap();
        assert_eq!(status.requests.unwrap().remaining, 2);
        for _ in 0..5 {
            let refused = limiter.admit("k", limits, None).await.unwrap_err();
            assert_eq!(refused.kind, LimitKind::Concurrency);
        }
        drop(held);
        // The lease of a Redis permit is given back in the background.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, status) = limiter
            .admit("k", limits, None)
            .await
            .expect("two of the minute's three are left");
        assert_eq!(status.requests.unwrap().remaining, 1);
    })
    .await;
}

/// While Redis is down each instance paces a key at its share of `tpm`,
/// but whether a `max_tokens` can ever pass is the key's whole budget's to
/// say: a request within it is not told never to retry.
#[tokio::test]
async fn in_fallback_max_tokens_is_judged_against_the_whole_budget() {
    let url = crate::support::upstream::closed_port_url().replace("http://", "redis://");
    let url = url.trim_end_matches("/v1").to_string();
    let limiter = RedisLimiter::start(&url, &prefix(), 2).await.unwrap();
    assert_eq!(limiter.health(), LimiterHealth::Fallback { instances: 2 });
    let limits = KeyLimits {
        tpm: Some(10_000),
        ..Default::default()
    };
    assert!(limiter.admit("k", limits, Some(8_000)).await.is_ok());
    let refused = limiter.admit("k", limits, Some(10_001)).await.unwrap_err();
    assert_eq!(
        refused.kind,
        LimitKind::TokensTooLarge { max_tokens: 10_001 }
    );
    assert_eq!(refused.limit, 10_000, "the key's budget, not its share");
}

/// A concurrency lease whose admit call timed out (Redis stalled), or
/// whose request went away, is removed once Redis runs the call: it does
/// not hold a slot for the lease's 30 s.
#[tokio::test]
async fn a_lease_whose_admit_timed_out_is_removed() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let _redis = OwnRedis::start(port);
    let prefix = prefix();
    let limiter = RedisLimiter::start(&url, &prefix, 1).await.unwrap();
    eventually(Duration::from_secs(5), "connecting to Redis", || {
        limiter.health() == LimiterHealth::Redis
    })
    .await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    // Every client's commands wait for 600 ms: the admit call times out
    // after 250 ms, and Redis runs it (adding its lease) afterwards.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(600)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let limits = KeyLimits {
        max_concurrent: Some(1),
        ..Default::default()
    };
    let (permit, _) = limiter.admit("k", limits, None).await.unwrap();
    drop(permit);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let leases = format!("{prefix}{{k}}:leases");
    let started = Instant::now();
    loop {
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let n: u64 = redis::cmd("ZCARD")
            .arg(&leases)
            .query_async(&mut c)
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the lease of a timed-out admit still holds a slot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
