//! Graceful shutdown: no new connections, in-flight streams finish.

use std::time::Duration;

use tokio::net::TcpStream;

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
