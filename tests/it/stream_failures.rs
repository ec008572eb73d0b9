//! Failures after the first chunk: the status stays 200, what was sent
//! stays intact, and the stream ends with one error event carrying the
//! request id, never with `[DONE]` (UF-06, UF-07, UF-08).

use std::time::Duration;

use serde_json::Value;

use crate::support::upstream::{chunk, finish_chunk};
use crate::support::{
    assert_sse_headers, assert_stream_failed, chat_body, content_of, data_json, post_chat,
    request_id, GatewayConfig, Play, Sse, TestGateway, Upstream, UP_KEY,
};

/// Streams `script` through a gateway built from `config`, checks the
/// stream failed the documented way, and returns (frames, error object).
async fn failed_stream(
    script: Vec<Play>,
    config: impl Fn(&str) -> GatewayConfig,
) -> (Vec<String>, Value) {
    let upstream = Upstream::sse(script).await;
    let gw = TestGateway::with(&config(&upstream.base_url)).await;
    let response = post_chat(&gw, &chat_body("up/m", true)).await;
    assert_sse_headers(&response);
    let id = request_id(response.headers());
    let frames = Sse::new(response).rest().await;
    let error = assert_stream_failed(&frames, &id);
    for frame in &frames {
        assert!(!frame.contains(UP_KEY), "the provider key leaked: {frame}");
    }
    (frames, error)
}

fn default_config(base_url: &str) -> GatewayConfig {
    GatewayConfig::openai(base_url)
}

#[tokio::test]
async fn upstream_cut_after_two_chunks_ends_with_an_error_event() {
    let (frames, error) = failed_stream(
        vec![
            Play::Data(chunk("one")),
            Play::Data(chunk(" two")),
            Play::Sleep(Duration::from_millis(50)),
            Play::Abort,
        ],
        default_config,
    )
    .await;
    assert_eq!(
        content_of(&frames),
        "one two",
        "earlier chunks arrive intact"
    );
    assert_eq!(
        frames.len(),
        3,
        "two chunks and the error event: {frames:#?}"
    );
    assert_eq!(error["code"], "provider_unreachable");
    assert_eq!(error["type"], "service_unavailable");
    assert!(error["message"].as_str().unwrap().contains("up"));
    let last = data_json(frames.last().unwrap()).unwrap();
    assert_eq!(
        last["id"], "chatcmpl-up-1",
        "the error event continues the same completion"
    );
    assert_eq!(last["model"], "up/m");
}

#[tokio::test]
async fn upstream_silent_past_the_idle_timeout_ends_with_an_error_event() {
    let (frames, error) = failed_stream(vec![Play::Data(chunk("one")), Play::Hang], |url| {
        GatewayConfig::openai(url).provider("idle_timeout", "300ms")
    })
    .await;
    assert_eq!(content_of(&frames), "one");
    assert_eq!(error["code"], "provider_timeout");
}

#[tokio::test]
async fn malformed_upstream_event_ends_the_stream_and_is_never_forwarded() {
    let (frames, error) = failed_stream(
        vec![
            Play::Data(chunk("one")),
            Play::Data("{\"choices\": [ {not json".into()),
            Play::Data(chunk(" after")),
            Play::Data(finish_chunk("stop")),
            Play::Data("[DONE]".into()),
        ],
        default_config,
    )
    .await;
    assert_eq!(
        content_of(&frames),
        "one",
        "nothing after the bad event is relayed"
    );
    assert!(
        frames.iter().all(|f| !f.contains("not json")),
        "the malformed event is not forwarded: {frames:#?}"
    );
    for frame in &frames {
        if let Some(json) = frame.strip_prefix("data: ") {
            serde_json::from_str::<Value>(json).expect("every forwarded event is JSON");
        }
    }
    assert_eq!(error["code"], "provider_invalid_response");
}

#[tokio::test]
async fn upstream_error_event_reaches_the_client_as_the_final_error_event() {
    let (frames, error) = failed_stream(
        vec![
            Play::Data(chunk("one")),
            Play::Data(
                r#"{"error":{"message":"The engine is currently overloaded, please try again later","type":"server_error","code":null}}"#.into(),
            ),
            Play::Hang,
        ],
        default_config,
    )
    .await;
    assert_eq!(content_of(&frames), "one");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("The engine is currently overloaded, please try again later"),
        "the upstream's message reaches the client: {message}"
    );
}

#[tokio::test]
async fn upstream_eof_without_finish_reason_or_done_is_a_failure() {
    let (frames, error) = failed_stream(
        vec![Play::Data(chunk("one")), Play::Data(chunk(" two"))],
        default_config,
    )
    .await;
    assert_eq!(content_of(&frames), "one two");
    assert_eq!(error["code"], "provider_unreachable");
}
