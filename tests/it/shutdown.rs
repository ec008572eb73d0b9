//! Graceful shutdown: no new connections, in-flight streams finish.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::support::postgres::PgDatabase;
use crate::support::upstream::{chunk, finish_chunk};
use crate::support::{
    chat_body, content_of, data_json, post_chat, GatewayConfig, Play, Sse, TestGateway, Upstream,
    PATIENCE,
};

#[tokio::test]
async fn shutdown_refuses_new_connections_and_lets_the_inflight_stream_finish() {
    let mut script = Vec::new();
    for i in 0..5 {
        if i > 0 {
            script.push(Play::Sleep(Duration::from_millis(200)));
        }
        script.push(Play::Data(chunk(&format!("w{i} "))));
    }
    script.push(Play::Data(finish_chunk("stop")));
    script.push(Play::Data("[DONE]".into()));
    let upstream = Upstream::sse(script).await;
    let config = GatewayConfig::openai(&upstream.base_url).server("shutdown_grace", "20s");
    let mut gw = TestGateway::with(&config).await;

    let response = post_chat(&gw, &chat_body("up/m", true)).await;
    assert_eq!(response.status(), 200);
    let mut sse = Sse::new(response);
    let first = sse.expect_frame(PATIENCE).await;
    assert_eq!(
        data_json(&first).unwrap()["choices"][0]["delta"]["content"],
        "w0 "
    );

    gw.shutdown();

    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match TcpStream::connect(gw.addr).await {
                Err(_) => break,
                // Still in the accept loop's last instant; try again.
                Ok(socket) => drop(socket),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "new connections are still accepted after shutdown"
    );

    let mut frames = vec![first];
    frames.extend(sse.rest().await);
    assert_eq!(content_of(&frames), "w0 w1 w2 w3 w4 ");
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]"));

    assert!(
        gw.stopped_within(Duration::from_secs(10)).await,
        "serve returns once the last stream is done, well before the 20 s grace"
    );
}

/// A stream still open when the grace period ends is ended by the gateway
/// while its serving thread still runs, and the thread waits for its
/// settlement, so its charge settles from what it delivered. Dropped with
/// the thread's runtime instead, a settlement that has to wait for its
/// store (Postgres) never finished, and the sweeper would later charge
/// the whole hold.
#[tokio::test]
async fn a_stream_cut_by_the_end_of_the_grace_period_is_settled() {
    stream_cut_by_shutdown_is_settled(None).await;
}

#[tokio::test]
async fn a_stream_cut_by_the_end_of_the_grace_period_is_settled_on_postgres() {
    let db = PgDatabase::create().await;
    stream_cut_by_shutdown_is_settled(Some(&db.url)).await;
}

async fn stream_cut_by_shutdown_is_settled(store_url: Option<&str>) {
    let upstream = Upstream::sse(vec![Play::Data(chunk("w0 ")), Play::Hang]).await;
    let mut config = GatewayConfig::openai(&upstream.base_url)
        .server("shutdown_grace", "300ms")
        // The first connection goes to the second serving thread, whose
        // runtime stops with the server.
        .server("threads", 2)
        .model("prompt_price", "1")
        .model("completion_price", "1")
        .model("max_output_tokens", 1000);
    if let Some(url) = store_url {
        config = config.store("url", url);
    }
    let mut gw = TestGateway::with(&config).await;
    let initial = 1_000_000_000;
    let (id, key) = gw.key_with_credit(initial).await;
    let response = gw.chat_as(&key, &chat_body("up/m", true)).await;
    assert_eq!(response.status(), 200);
    let mut sse = Sse::new(response);
    sse.expect_frame(PATIENCE).await;
    assert_eq!(gw.active_holds().await, 1);

    gw.shutdown();
    assert!(gw.stopped_within(Duration::from_secs(10)).await);
    let rest = sse.rest().await;
    assert!(
        !rest.iter().any(|f| f == "data: [DONE]"),
        "the stream was cut: {rest:?}"
    );

    gw.holds_drain().await;
    assert_eq!(gw.active_holds().await, 0, "the hold was settled");
    let ledger = gw.store.credits.ledger(&id).await.unwrap();
    let held = -ledger.iter().find(|r| r.kind == "hold").unwrap().amount;
    let charged = initial - gw.balance(&id).await;
    assert!(
        charged > 0 && charged < held,
        "charged {charged} of a {held} hold: what was delivered, not the worst case"
    );
    assert_eq!(gw.ledger_sum(&id).await, gw.balance(&id).await);
}
