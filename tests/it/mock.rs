//! The built-in mock provider, through the embedded default config: the
//! echo model, and each rehearsed row of the error table.

use mume_gateway::config::EMBEDDED_DEFAULT;
use serde_json::{json, Value};

use crate::support::{
    assert_sse_headers, assert_stream_failed, client, content_of, error_reply, request_id, Sse,
    TestGateway,
};

fn ask(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}], "stream": stream})
}

async fn send(gw: &TestGateway, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url("/api/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn mock_echo_repeats_the_user_text_whole_and_streamed() {
    let gw = TestGateway::start(EMBEDDED_DEFAULT).await;
    let text = "the quick  brown fox";

    let response = send(&gw, &ask("mock/echo", text, false)).await;
    assert_eq!(response.status(), 200);
    let done: Value = response.json().await.unwrap();
    assert_eq!(done["object"], "chat.completion");
    assert_eq!(done["model"], "mock/echo");
    assert_eq!(done["choices"][0]["message"]["content"], text);
    assert_eq!(done["choices"][0]["finish_reason"], "stop");

    let response = send(&gw, &ask("mock/echo", text, true)).await;
    assert_sse_headers(&response);
    let frames = Sse::new(response).rest().await;
    assert_eq!(content_of(&frames), text);
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]"));
}

#[tokio::test]
async fn mock_error_models_answer_their_status() {
    let gw = TestGateway::start(EMBEDDED_DEFAULT).await;
    for (model, status) in [
        ("mock/error-400", 400),
        ("mock/error-401", 401),
        ("mock/error-402", 402),
        ("mock/error-429", 429),
        ("mock/error-500", 500),
        ("mock/error-503", 503),
    ] {
        for stream in [false, true] {
            let reply = error_reply(send(&gw, &ask(model, "hi", stream)).await).await;
            assert_eq!(
                reply.status, status,
                "{model} (stream {stream}): {}",
                reply.text
            );
            let message = reply.error["message"].as_str().unwrap();
            match status {
                429 => {
                    let after: u64 = reply.headers["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(after >= 1, "Retry-After is at least 1");
                }
                402 => assert_eq!(reply.headers["x-should-retry"], "false"),
                500 => {
                    assert_eq!(reply.error["code"], "internal_error");
                    assert!(
                        !message.contains("rehearse") && !message.contains("mock/"),
                        "a 500 says nothing internal: {message}"
                    );
                }
                _ => assert!(message.contains("rehearsal"), "{message}"),
            }
        }
    }
}

#[tokio::test]
async fn mock_cut_stream_ends_with_the_error_event() {
    let gw = TestGateway::start(EMBEDDED_DEFAULT).await;
    let response = send(&gw, &ask("mock/cut", "one two three four five six", true)).await;
    assert_sse_headers(&response);
    let id = request_id(response.headers());
    let frames = Sse::new(response).rest().await;
    let error = assert_stream_failed(&frames, &id);
    assert_eq!(error["code"], "provider_unreachable");
    assert!(
        content_of(&frames).starts_with("one "),
        "some words came before the cut: {frames:#?}"
    );
}

#[tokio::test]
async fn a_stream_past_its_time_limit_ends_even_while_events_keep_coming() {
    // mock/echo's events are ready the moment they are asked for, so the
    // relay never waits on its upstream. A long answer, more than the
    // sockets buffer, and a client that reads nothing for a while: the
    // relay waits on the client past the limit, and when the client reads
    // again the next event is always ready.
    let config = EMBEDDED_DEFAULT.replace(
        "max_stream_duration = \"30m\"",
        "max_stream_duration = \"500ms\"",
    );
    assert_ne!(config, EMBEDDED_DEFAULT);
    let gw = TestGateway::start(&config).await;
    let words = 100_000;
    let text = vec!["word"; words].join(" ");
    let response = send(&gw, &ask("mock/echo", &text, true)).await;
    let id = request_id(response.headers());
    let mut sse = Sse::new(response);
    assert!(sse.next_frame().await.is_some());
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let frames = sse.rest().await;
    let error = assert_stream_failed(&frames, &id);
    assert_eq!(error["code"], "stream_too_long");
    assert!(
        frames.len() < words,
        "the stream was cut, not relayed to its end"
    );
}
