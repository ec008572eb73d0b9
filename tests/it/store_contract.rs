//! One contract for every store backend: the same cases run against the
//! embedded SQLite file and against the real Postgres server on this
//! machine (a fresh database per test, dropped afterwards).
//!
//! The last tests run a whole gateway on Postgres.

use std::future::Future;
use std::sync::Arc;

use mume_gateway::accounts::keys::PlainKey;
use mume_gateway::store::{
    Claim, CreditKind, CreditResult, HoldRequest, HoldResult, IdempotencyClaim, KeyPatch,
    KeyRecord, NewKey, Store, StoreOptions, StoredResponse, UsageRecord,
};
use serde_json::json;

use crate::support::postgres::PgDatabase;
use crate::support::upstream::completion;
use crate::support::{chat_body, error_reply, keyed, GatewayConfig, TestGateway, Upstream};

/// Runs `case` on a fresh SQLite store and a fresh Postgres store.
async fn on_every_backend<F, Fut>(case: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = Store::open(&StoreOptions {
        url: None,
        path: dir.path().join("contract.db"),
        busy_timeout: std::time::Duration::from_secs(2),
    })
    .await
    .expect("SQLite store");
    case(sqlite).await;

    let db = PgDatabase::create().await;
    let pg = Store::open(&StoreOptions {
        url: Some(db.url.clone()),
        path: dir.path().join("unused.db"),
        busy_timeout: std::time::Duration::from_secs(2),
    })
    .await
    .expect("Postgres store");
    case(pg.clone()).await;
    pg.close().await;
}

fn record(id: &str, balance: Option<i64>) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        name: format!("key {id}"),
        display: format!("sk-mume-…{id}"),
        created_at: 1_000,
        disabled: false,
        expires_at: None,
        balance,
        limits: Default::default(),
        models: vec!["mock/*".into()],
        metadata: json!({"team": "a"}),
    }
}

async fn insert(store: &Store, id: &str, balance: Option<i64>) -> PlainKey {
    let plain = PlainKey::from_parts(&format!("{id:0<8}"), "abcdefghijklmnopqrstuvwxyz0123456");
    store
        .keys
        .insert_key(NewKey {
            record: record(id, balance),
            hash: plain.hash(),
        })
        .await
        .expect("insert a key");
    plain
}

fn hold(key: &str, hold_id: &str, amount: i64, sent: bool, expires_at: i64) -> HoldRequest {
    HoldRequest {
        hold_id: hold_id.into(),
        request_id: format!("req_{hold_id}"),
        key_id: key.into(),
        amount,
        sent,
        now: 2_000,
        expires_at,
    }
}

fn usage(key: &str, hold_id: &str, cost: i64, at: i64) -> UsageRecord {
    UsageRecord {
        hold_id: hold_id.into(),
        request_id: format!("req_{hold_id}"),
        key_id: key.into(),
        model: "mock/echo".into(),
        provider: "mock".into(),
        prompt_tokens: 3,
        completion_tokens: 4,
        cached_tokens: 1,
        cost,
        status: 200,
        outcome: "ok".into(),
        latency_ms: 12,
        streamed: true,
        cancelled: false,
        created_at: at,
        searches: 2,
        mcp_calls: 3,
    }
}

async fn balance(store: &Store, id: &str) -> Option<i64> {
    store.keys.key_by_id(id).await.unwrap().unwrap().balance
}

async fn ledger_sum(store: &Store, id: &str) -> i64 {
    let rows = store.credits.ledger(id).await.unwrap();
    rows.iter().map(|r| r.amount).sum()
}

#[tokio::test]
async fn keys_are_stored_found_changed_and_deleted() {
    on_every_backend(|store| async move {
        let plain = insert(&store, "k1", Some(500)).await;
        insert(&store, "k2", None).await;
        let found = store
            .keys
            .key_by_hash(&plain.hash())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found, record("k1", Some(500)));
        assert_eq!(store.keys.count_keys().await.unwrap(), 2);
        let listed = store.keys.list_keys(1, 10).await.unwrap();
        assert_eq!(listed.len(), 1);
        let patch = KeyPatch {
            disabled: Some(true),
            rpm: Some(Some(60)),
            models: Some(vec![]),
            ..Default::default()
        };
        let changed = store.keys.update_key("k1", &patch).await.unwrap().unwrap();
        assert!(changed.disabled);
        assert_eq!(changed.limits.rpm, Some(60));
        assert_eq!(store.keys.key_by_id("k1").await.unwrap().unwrap(), changed);
        assert!(store
            .keys
            .update_key("nope", &patch)
            .await
            .unwrap()
            .is_none());
        assert!(store.keys.delete_key("k2").await.unwrap());
        assert!(!store.keys.delete_key("k2").await.unwrap());
        // A second key with the same hash is refused.
        let again = store
            .keys
            .insert_key(NewKey {
                record: record("k3", None),
                hash: plain.hash(),
            })
            .await;
        assert!(again.is_err());
        // The initial balance is the ledger's first row.
        assert_eq!(ledger_sum(&store, "k1").await, 500);
    })
    .await;
}

#[tokio::test]
async fn holds_and_settlements_move_money_exactly_once() {
    on_every_backend(|store| async move {
        insert(&store, "k", Some(1_000)).await;
        insert(&store, "free", None).await;
        let credits = &store.credits;
        assert_eq!(
            credits
                .hold(&hold("k", "h1", 600, true, 9_000))
                .await
                .unwrap(),
            HoldResult::Held
        );
        assert_eq!(
            credits
                .hold(&hold("k", "h2", 600, true, 9_000))
                .await
                .unwrap(),
            HoldResult::Insufficient { balance: 400 }
        );
        assert_eq!(
            credits
                .hold(&hold("free", "h3", 600, true, 9_000))
                .await
                .unwrap(),
            HoldResult::Unlimited
        );
        assert_eq!(
            credits
                .hold(&hold("ghost", "h4", 1, true, 9_000))
                .await
                .unwrap(),
            HoldResult::NoKey
        );
        assert_eq!(balance(&store, "k").await, Some(400));
        let totals = credits.totals().await.unwrap();
        assert_eq!((totals.held, totals.active_holds), (600, 1));

        // Charged 250 of the 600 held: 350 comes back, once.
        credits.settle(&usage("k", "h1", 250, 3_000)).await.unwrap();
        credits.settle(&usage("k", "h1", 250, 3_000)).await.unwrap();
        assert_eq!(balance(&store, "k").await, Some(750));
        assert_eq!(ledger_sum(&store, "k").await, 750);
        let kinds: Vec<String> = credits
            .ledger("k")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.kind)
            .collect();
        assert_eq!(kinds, ["topup", "hold", "settle"]);
        // A cost above the hold is capped at the hold.
        credits
            .hold(&hold("k", "h5", 100, true, 9_000))
            .await
            .unwrap();
        credits
            .settle(&usage("k", "h5", 10_000, 3_000))
            .await
            .unwrap();
        assert_eq!(balance(&store, "k").await, Some(650));

        let record = store
            .usage
            .generation("k", "req_h1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record, usage("k", "h1", 250, 3_000));
        assert!(store
            .usage
            .generation("free", "req_h1")
            .await
            .unwrap()
            .is_none());
        let summary = store.usage.summary("k", 0, 2_500, 4_000).await.unwrap();
        assert_eq!(
            (
                summary.total,
                summary.since_day,
                summary.since_week,
                summary.since_month
            ),
            (10_250, 10_250, 10_250, 0)
        );
        assert_eq!(summary.requests, 2);
        let totals = credits.totals().await.unwrap();
        assert_eq!(totals.spent, 350);
        assert_eq!(totals.credited, 1_000);
        assert_eq!(totals.active_holds, 0);
    })
    .await;
}

#[tokio::test]
async fn concurrent_holds_never_overspend() {
    on_every_backend(|store| async move {
        insert(&store, "k", Some(10_000)).await;
        let store = Arc::new(store);
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .credits
                        .hold(&hold("k", &format!("c{i}"), 1_000, true, 9_000))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut held = 0;
        for t in tasks {
            if t.await.unwrap() == HoldResult::Held {
                held += 1;
            }
        }
        assert_eq!(held, 10);
        assert_eq!(balance(&store, "k").await, Some(0));
        assert_eq!(ledger_sum(&store, "k").await, 0);
    })
    .await;
}

#[tokio::test]
async fn top_ups_and_adjustments_stay_in_range() {
    on_every_backend(|store| async move {
        insert(&store, "k", Some(100)).await;
        insert(&store, "free", None).await;
        let c = &store.credits;
        assert_eq!(
            c.credit("k", CreditKind::TopUp, 50, Some("gift"), 5)
                .await
                .unwrap(),
            CreditResult::Applied { balance: 150 }
        );
        assert_eq!(
            c.credit("k", CreditKind::Adjust, -200, None, 6)
                .await
                .unwrap(),
            CreditResult::OutOfRange { balance: 150 }
        );
        assert_eq!(
            c.credit("k", CreditKind::Adjust, -150, None, 7)
                .await
                .unwrap(),
            CreditResult::Applied { balance: 0 }
        );
        assert_eq!(
            c.credit("free", CreditKind::TopUp, 5, None, 8)
                .await
                .unwrap(),
            CreditResult::Unlimited
        );
        assert_eq!(
            c.credit("ghost", CreditKind::TopUp, 5, None, 9)
                .await
                .unwrap(),
            CreditResult::NoKey
        );
        let rows = c.ledger("k").await.unwrap();
        assert_eq!(rows[1].note.as_deref(), Some("gift"));
        assert_eq!(ledger_sum(&store, "k").await, 0);
    })
    .await;
}

#[tokio::test]
async fn expired_holds_are_released_or_charged() {
    on_every_backend(|store| async move {
        insert(&store, "k", Some(1_000)).await;
        store
            .credits
            .hold(&hold("k", "sent", 300, true, 5_000))
            .await
            .unwrap();
        store
            .credits
            .hold(&hold("k", "unsent", 200, false, 5_000))
            .await
            .unwrap();
        store
            .credits
            .hold(&hold("k", "live", 100, true, 50_000))
            .await
            .unwrap();
        let swept = store.credits.sweep_expired(6_000).await.unwrap();
        assert_eq!((swept.settled, swept.released), (1, 1));
        // 300 charged, 200 back, 100 still held.
        assert_eq!(balance(&store, "k").await, Some(600));
        assert_eq!(ledger_sum(&store, "k").await, 600);
        assert_eq!(store.credits.totals().await.unwrap().active_holds, 1);
        assert_eq!(store.credits.sweep_expired(6_000).await.unwrap().settled, 0);
    })
    .await;
}

#[tokio::test]
async fn idempotency_claims_follow_their_lifecycle() {
    on_every_backend(|store| async move {
        let claim = |body: u8, request: &str, now: i64| IdempotencyClaim {
            key_id: "k".into(),
            idem_key: "idem-1".into(),
            body_hash: [body; 32],
            request_id: request.into(),
            now,
            not_before: now - 1_000,
        };
        let i = &store.idempotency;
        assert_eq!(
            i.claim(&claim(1, "r1", 10_000)).await.unwrap(),
            Claim::Claimed
        );
        assert_eq!(
            i.claim(&claim(1, "r2", 10_001)).await.unwrap(),
            Claim::InFlight {
                request_id: "r1".into()
            }
        );
        assert_eq!(
            i.claim(&claim(2, "r2", 10_001)).await.unwrap(),
            Claim::Mismatch
        );
        i.complete("k", "idem-1", Some(b"{}")).await.unwrap();
        assert_eq!(
            i.claim(&claim(1, "r3", 10_002)).await.unwrap(),
            Claim::Done {
                request_id: "r1".into(),
                response: Some(b"{}".to_vec())
            }
        );
        // Past the window the key is free again.
        assert_eq!(
            i.claim(&claim(2, "r4", 20_000)).await.unwrap(),
            Claim::Claimed
        );
        // Only the request that holds the claim can give it up: a late
        // abandon by an earlier request leaves it alone.
        i.abandon("k", "idem-1", "r1").await.unwrap();
        assert!(matches!(
            i.claim(&claim(2, "r6", 20_001)).await.unwrap(),
            Claim::InFlight { .. }
        ));
        i.abandon("k", "idem-1", "r4").await.unwrap();
        assert_eq!(
            i.claim(&claim(3, "r5", 20_001)).await.unwrap(),
            Claim::Claimed
        );
    })
    .await;
}

#[tokio::test]
async fn stored_responses_belong_to_one_key_and_expire() {
    on_every_backend(|store| async move {
        let r = StoredResponse {
            id: "resp_1".into(),
            key_id: "k".into(),
            previous_response_id: Some("resp_0".into()),
            input: json!([{"id": "msg_1", "type": "message"}]),
            response: json!({"id": "resp_1", "object": "response"}),
            created_at: 5_000,
        };
        let s = &store.responses;
        s.put_response(&r).await.unwrap();
        assert_eq!(
            s.get_response("k", "resp_1", 0).await.unwrap(),
            Some(r.clone())
        );
        assert_eq!(s.get_response("other", "resp_1", 0).await.unwrap(), None);
        assert_eq!(s.get_response("k", "resp_1", 5_001).await.unwrap(), None);
        assert!(!s.delete_response("other", "resp_1").await.unwrap());
        assert_eq!(s.purge_responses(5_000).await.unwrap(), 0);
        assert_eq!(s.purge_responses(5_001).await.unwrap(), 1);
        assert!(!s.delete_response("k", "resp_1").await.unwrap());
    })
    .await;
}

/// A gateway whose store is a fresh Postgres database, serving `up/m` at
/// $1000 / $2000 per million tokens from `base_url`.
async fn gateway_on_postgres(base_url: &str) -> (TestGateway, PgDatabase) {
    let db = PgDatabase::create().await;
    let config = GatewayConfig::openai(base_url)
        .model("prompt_price", "1000")
        .model("completion_price", "2000")
        .model("max_output_tokens", 100)
        .store("url", db.url.as_str());
    (TestGateway::with(&config).await, db)
}

#[tokio::test]
async fn a_gateway_on_postgres_charges_exactly_and_stores_responses() {
    let upstream = Upstream::json(200, completion("hi")).await;
    let (gw, _db) = gateway_on_postgres(&upstream.base_url).await;
    let (id, key) = gw.key_with_credit(1_000_000_000).await;
    let reply = gw.chat_as(&key, &chat_body("up/m", false)).await;
    assert_eq!(reply.status(), 200);
    let response = keyed(&key)
        .post(gw.url("/api/v1/responses"))
        .json(&json!({"model": "up/m", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let r: serde_json::Value = response.json().await.unwrap();
    gw.holds_drain().await;
    // Twice 3 prompt tokens at 1,000,000 and 1 completion token at 2,000,000.
    assert_eq!(gw.balance(&id).await, 1_000_000_000 - 10_000_000);
    assert_eq!(gw.ledger_sum(&id).await, 1_000_000_000 - 10_000_000);
    let stored = keyed(&key)
        .get(gw.url(&format!("/api/v1/responses/{}", r["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
}

#[tokio::test]
async fn cr08_with_postgres_gone_spending_requests_get_503_and_no_upstream_call() {
    let upstream = Upstream::json(200, completion("hi")).await;
    let (gw, _db) = gateway_on_postgres(&upstream.base_url).await;
    let (_, key) = gw.key_with_credit(1_000_000_000).await;
    assert_eq!(
        gw.chat_as(&key, &chat_body("up/m", false)).await.status(),
        200
    );
    gw.store.close().await;
    let started = std::time::Instant::now();
    let e = error_reply(gw.chat_as(&key, &chat_body("up/m", false)).await).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(e.status, 503);
    assert_eq!(e.error["code"], "store_unavailable");
    assert_eq!(upstream.seen().len(), 1, "no upstream call without a hold");
}

/// `MUME_DATABASE_URL` and `MUME_REDIS_URL` select the shared backends
/// (what docker-compose.yml sets), over a config that names neither.
#[tokio::test]
async fn the_environment_selects_postgres_and_redis() {
    let upstream = Upstream::json(200, completion("hi")).await;
    let db = PgDatabase::create().await;
    let redis = crate::limiter_contract::redis_url();
    let gw = TestGateway::start_with_env(
        &GatewayConfig::openai(&upstream.base_url).toml(),
        &[
            (
                crate::support::gateway::UP_KEY_ENV,
                crate::support::gateway::UP_KEY,
            ),
            ("MUME_DATABASE_URL", db.url.as_str()),
            ("MUME_REDIS_URL", redis.as_str()),
        ],
    )
    .await;
    let health: serde_json::Value = crate::support::anonymous()
        .get(gw.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["rate_limiter"], "redis");
    let (id, _) = gw.key_with_credit(5).await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let found: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE id = $1")
        .bind(&id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(found, 1, "the key lives in Postgres");
}

/// A Postgres URL that asks for TLS connects over TLS (the test server
/// has `ssl = on`, Debian's default, with its self-signed certificate):
/// `sslmode=require` encrypts without checking the certificate, and
/// `verify-ca` checks it against the public roots and refuses it.
#[tokio::test]
async fn a_postgres_url_asking_for_tls_is_served_over_tls() {
    let db = PgDatabase::create().await;
    let open = |sslmode: &str| {
        let options = StoreOptions {
            url: Some(format!("{}?sslmode={sslmode}", db.url)),
            path: "unused.db".into(),
            busy_timeout: std::time::Duration::from_secs(2),
        };
        async move { Store::open(&options).await }
    };
    let store = open("require")
        .await
        .expect("sslmode=require connects (the test server must have ssl = on)");
    let name = db.url.rsplit('/').next().unwrap();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(
        &crate::support::postgres::postgres_admin_url(),
    )
    .await
    .unwrap();
    let (sessions, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1",
    )
    .bind(name)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(sessions > 0, "the store holds a connection");
    assert_eq!(encrypted, sessions, "every connection of the store is TLS");
    store.close().await;
    let err = open("verify-ca")
        .await
        .err()
        .expect("a self-signed certificate does not verify");
    assert!(err.to_string().contains("certificate"), "{err}");
}
