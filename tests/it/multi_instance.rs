//! Several gateway processes (the real binary, on their own loopback
//! ports) sharing one Postgres database and one Redis behave as one:
//! RL-01/RL-02 (one rpm limit across instances), CR-01/CR-02 (credit never
//! overspent, the ledger balances), CR-04 (an instance killed with SIGKILL
//! mid-stream: the survivor's sweeper resolves its hold) and RL-03 (Redis
//! killed under traffic: no failure, and back to Redis once it returns).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use futures::future::join_all;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::limiter_contract::redis_url;
use crate::support::gateway::{UP_KEY, UP_KEY_ENV};
use crate::support::postgres::PgDatabase;
use crate::support::redis::{free_port, OwnRedis};
use crate::support::upstream::{chunk, respond, sse_response, Play, Upstream};
use crate::support::{anonymous, keyed, Sse};

const ADMIN: &str = "admin-secret-for-multi-instance-tests";

struct Instance {
    child: Child,
    base: String,
}

struct Cluster {
    instances: Vec<Instance>,
    db: PgDatabase,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in &mut self.instances {
            let _ = i.child.kill();
            let _ = i.child.wait();
        }
    }
}

impl Cluster {
    /// `n` gateways on one fresh database and `redis`, serving `up/m`
    /// ($1000 / $2000 per million tokens) from `upstream`.
    async fn start(n: usize, upstream: &str, redis: &str) -> Self {
        let db = PgDatabase::create().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let prefix = format!("mume:multi:{}:", ulid::Ulid::new());
        let config = format!(
            r#"
[server]
max_stream_duration = "3s"

[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream}"
api_key_env = "{UP_KEY_ENV}"
first_byte_timeout = "1s"
idle_timeout = "2s"
total_timeout = "2s"
max_attempts = 1

[[models]]
id = "up/m"
upstream = "m-upstream"
prompt_price = "1000"
completion_price = "2000"
max_output_tokens = 100

[store]
url = "{db}"
hold_ttl = "5s"
sweep_interval = "500ms"

[rate_limit]
url = "{redis}"
instances = {n}
key_prefix = "{prefix}"

[routing]
circuit_failures = 1000
"#,
            db = db.url
        );
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).expect("write the config");
        let mut instances = Vec::new();
        for i in 0..n {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join(format!("gw{i}.log"))).expect("log");
            let child = Command::new(env!("CARGO_BIN_EXE_mume-gateway"))
                .arg("serve")
                .arg("--config")
                .arg(&path)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .env(UP_KEY_ENV, UP_KEY)
                .env("MUME_ADMIN_KEY", ADMIN)
                .env_remove("MUME_DATABASE_URL")
                .env_remove("MUME_REDIS_URL")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start the gateway binary");
            instances.push(Instance {
                child,
                base: format!("http://127.0.0.1:{port}"),
            });
        }
        let cluster = Self {
            instances,
            db,
            _dir: dir,
        };
        for i in &cluster.instances {
            let health = format!("{}/health", i.base);
            let started = Instant::now();
            while !anonymous()
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
            {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "{} never became healthy",
                    i.base
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        cluster
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("{}{path}", self.instances[i % self.instances.len()].base)
    }

    /// Creates a key through instance 0's admin API: (id, plaintext).
    async fn key(&self, spec: Value) -> (String, String) {
        let created: Value = keyed(ADMIN)
            .post(self.url(0, "/api/v1/keys"))
            .json(&spec)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            created["data"]["id"].as_str().unwrap().to_string(),
            created["key"].as_str().unwrap().to_string(),
        )
    }

    async fn sql_i64(&self, sql: &str, key_id: &str) -> i64 {
        let mut conn = sqlx::PgConnection::connect(&self.db.url).await.unwrap();
        sqlx::query_scalar(sql)
            .bind(key_id)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }

    async fn balance(&self, key_id: &str) -> i64 {
        self.sql_i64("SELECT balance FROM api_keys WHERE id = $1", key_id)
            .await
    }

    async fn ledger_sum(&self, key_id: &str) -> i64 {
        self.sql_i64(
            "SELECT COALESCE(SUM(amount), 0)::BIGINT FROM ledger WHERE key_id = $1",
            key_id,
        )
        .await
    }

    async fn open_holds(&self, key_id: &str) -> i64 {
        self.sql_i64("SELECT COUNT(*) FROM holds WHERE key_id = $1", key_id)
            .await
    }
}

fn completion(prompt: u64, completion: u64) -> Value {
    json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m-upstream",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}})
}

fn chat(stream: bool) -> Value {
    json!({"model": "up/m", "messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": 100})
}

#[tokio::test]
async fn rl01_rl02_a_60_rpm_key_gets_exactly_60_across_instances() {
    let upstream = Upstream::json(200, completion(1, 1)).await;
    let cluster = Cluster::start(2, &upstream.base_url, &redis_url()).await;
    let (_, key) = cluster.key(json!({"name": "rpm", "rpm": 60})).await;
    let client = keyed(&key);
    let sends = (0..100).map(|i| {
        let (client, url) = (client.clone(), cluster.url(i, "/api/v1/chat/completions"));
        async move { client.post(url).json(&chat(false)).send().await.unwrap() }
    });
    let started = Instant::now();
    let replies = join_all(sends).await;
    // The limit refills one request a second: a burst that took longer
    // than a second may rightly pass one more per second it took.
    let refilled = started.elapsed().as_secs() as usize;
    let ok = replies.iter().filter(|r| r.status() == 200).count();
    let limited: Vec<_> = replies.iter().filter(|r| r.status() == 429).collect();
    assert!(
        (60..=60 + refilled).contains(&ok),
        "{ok} passed: the limit, whichever instance answered (+{refilled} refilled)"
    );
    assert_eq!(limited.len(), 100 - ok);
    assert!(limited
        .iter()
        .all(|r| r.headers().contains_key("retry-after")));
}

#[tokio::test]
async fn cr01_cr02_credit_is_never_overspent_across_instances_and_the_ledger_balances() {
    // Each answer costs 50 × $0.001 + 100 × $0.002 = $0.25: a $1 key can
    // pay for 4, whatever the instances do at once.
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        respond(200, &[], Body::from(completion(50, 100).to_string()))
    })
    .await;
    let cluster = Cluster::start(3, &upstream.base_url, &redis_url()).await;
    let (id, key) = cluster
        .key(json!({"name": "credit", "credits": "1.00"}))
        .await;
    let client = keyed(&key);
    let sends = (0..40).map(|i| {
        let (client, url) = (client.clone(), cluster.url(i, "/api/v1/chat/completions"));
        async move { client.post(url).json(&chat(false)).send().await.unwrap() }
    });
    let replies = join_all(sends).await;
    let mut spent = 0i64;
    for r in replies {
        match r.status().as_u16() {
            200 => {
                let body: Value = r.json().await.unwrap();
                // usage.cost in USD, exact to the nano-dollar.
                let cost = body["usage"]["cost"].as_f64().unwrap();
                spent += (cost * 1e9).round() as i64;
            }
            402 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    let started = Instant::now();
    while cluster.open_holds(&id).await > 0 {
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let balance = cluster.balance(&id).await;
    assert!(balance >= 0);
    assert!(spent <= 1_000_000_000, "spent {spent}");
    assert!(spent > 0);
    assert_eq!(
        balance,
        1_000_000_000 - spent,
        "what was charged is what the answers cost"
    );
    assert_eq!(
        cluster.ledger_sum(&id).await,
        balance,
        "the ledger balances"
    );
}

#[tokio::test]
async fn cr04_a_killed_instance_holds_are_resolved_by_the_survivor() {
    let upstream = Upstream::start(|_| async {
        sse_response(vec![Play::Data(chunk("partial")), Play::Hang], None)
    })
    .await;
    let mut cluster = Cluster::start(2, &upstream.base_url, &redis_url()).await;
    let (id, key) = cluster
        .key(json!({"name": "crash", "credits": "1.00"}))
        .await;
    let response = keyed(&key)
        .post(cluster.url(1, "/api/v1/chat/completions"))
        .json(&chat(true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut sse = Sse::new(response);
    sse.expect_frame(Duration::from_secs(5)).await;
    assert_eq!(cluster.open_holds(&id).await, 1, "the stream holds credit");

    // SIGKILL: no settlement, no goodbye.
    cluster.instances[1].child.kill().unwrap();
    cluster.instances[1].child.wait().unwrap();
    let killed = Instant::now();
    while cluster.open_holds(&id).await > 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the survivor never swept the dead instance's hold"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let balance = cluster.balance(&id).await;
    assert_eq!(
        cluster.ledger_sum(&id).await,
        balance,
        "the ledger balances"
    );
    // The request had been sent: its hold, the most it could cost, is charged.
    assert!(balance < 1_000_000_000);
    let settled = cluster
        .sql_i64(
            "SELECT COUNT(*) FROM ledger WHERE key_id = $1 AND kind = 'settle' AND note LIKE 'hold expired%'",
            &id,
        )
        .await;
    assert_eq!(settled, 1);
}

#[tokio::test]
async fn rl03_redis_killed_under_traffic_fails_no_request_and_is_used_again_once_back() {
    let upstream = Upstream::json(200, completion(1, 1)).await;
    let port = free_port();
    let mut redis = Some(OwnRedis::start(port));
    let redis_url = format!("redis://127.0.0.1:{port}");
    let cluster = Cluster::start(2, &upstream.base_url, &redis_url).await;
    let health = |i: usize| {
        let url = cluster.url(i, "/health");
        async move {
            let h: Value = anonymous()
                .get(url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            h["rate_limiter"].clone()
        }
    };
    for i in 0..2 {
        let started = Instant::now();
        while health(i).await != json!("redis") {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "instance {i} never reached Redis"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (_, key) = cluster.key(json!({"name": "traffic", "rpm": 100000})).await;
    let client = keyed(&key);
    let send = |i: usize| {
        let (client, url) = (client.clone(), cluster.url(i, "/api/v1/chat/completions"));
        async move {
            client
                .post(url)
                .json(&chat(false))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for i in 0..10 {
        assert_eq!(send(i).await, 200);
    }
    drop(redis.take());
    for i in 0..40 {
        assert_eq!(send(i).await, 200, "a dead Redis never fails a request");
    }
    assert_eq!(health(0).await["mode"], "fallback");
    assert_eq!(health(0).await["instances"], 2);
    let _redis = OwnRedis::start(port);
    let back = Instant::now();
    for i in 0..2 {
        while health(i).await != json!("redis") {
            assert!(
                back.elapsed() < Duration::from_secs(5),
                "instance {i} did not go back to Redis within 5 s"
            );
            let _ = send(i).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn a_key_disabled_on_one_instance_is_refused_by_every_instance_within_the_cache_time() {
    let upstream = Upstream::json(200, completion(1, 1)).await;
    let cluster = Cluster::start(2, &upstream.base_url, &redis_url()).await;
    let (id, key) = cluster.key(json!({"name": "revoked"})).await;
    let client = keyed(&key);
    let send = |i: usize| {
        let (client, url) = (client.clone(), cluster.url(i, "/api/v1/chat/completions"));
        async move {
            client
                .post(url)
                .json(&chat(false))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Both instances have the key in their cache.
    assert_eq!(send(0).await, 200);
    assert_eq!(send(1).await, 200);
    let disabled = keyed(ADMIN)
        .patch(cluster.url(0, &format!("/api/v1/keys/{id}")))
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), 200);
    let at = Instant::now();
    while send(1).await != 401 {
        assert!(
            at.elapsed() < Duration::from_secs(6),
            "instance 1 still accepts the key well after the 2 s cache"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
