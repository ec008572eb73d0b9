//! Malformed requests are 400s whose envelope names the field at fault
//! (PR-07 for the JSON bombs). None of them reaches a provider.

use mume_gateway::config::EMBEDDED_DEFAULT;
use serde_json::Value;

use crate::support::{client, post_chat_raw, TestGateway};

/// (what, body, expected code, expected param)
fn cases() -> Vec<(&'static str, Vec<u8>, &'static str, Value)> {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!(
        "{{\"model\":\"mock/echo\",\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}],\"x\":{}{}}}",
        "{\"a\":".repeat(10_000) + "1",
        "}".repeat(10_000)
    );
    let user = r#"[{"role":"user","content":"hi"}]"#;
    vec![
        (
            "malformed JSON",
            br#"{"model": "mock/echo", "messages": ["#.to_vec(),
            "invalid_json",
            Value::Null,
        ),
        (
            "not an object",
            b"[1, 2, 3]".to_vec(),
            "invalid_type",
            Value::Null,
        ),
        (
            "missing messages",
            br#"{"model": "mock/echo"}"#.to_vec(),
            "missing_field",
            "messages".into(),
        ),
        (
            "empty messages",
            br#"{"model": "mock/echo", "messages": []}"#.to_vec(),
            "empty_messages",
            "messages".into(),
        ),
        (
            "messages not an array",
            br#"{"model": "mock/echo", "messages": "hello"}"#.to_vec(),
            "invalid_type",
            "messages".into(),
        ),
        (
            "message without role",
            br#"{"model": "mock/echo", "messages": [{"content": "x"}]}"#.to_vec(),
            "invalid_message",
            "messages[0].role".into(),
        ),
        (
            "missing model",
            format!(r#"{{"messages": {user}}}"#).into_bytes(),
            "missing_field",
            "model".into(),
        ),
        (
            "model not a string",
            format!(r#"{{"model": 7, "messages": {user}}}"#).into_bytes(),
            "invalid_type",
            "model".into(),
        ),
        (
            "unknown model",
            format!(r#"{{"model": "nope/never", "messages": {user}}}"#).into_bytes(),
            "model_not_found",
            "model".into(),
        ),
        (
            "stream not a bool",
            format!(r#"{{"model": "mock/echo", "messages": {user}, "stream": "yes"}}"#)
                .into_bytes(),
            "invalid_type",
            "stream".into(),
        ),
        (
            "10,000-deep arrays",
            deep.into_bytes(),
            "json_too_deep",
            Value::Null,
        ),
        (
            "10,000-deep objects in a valid request",
            deep_object.into_bytes(),
            "json_too_deep",
            Value::Null,
        ),
        (
            "invalid UTF-8",
            b"{\"model\": \"mock/\xff\xfe\", \"messages\": []}".to_vec(),
            "invalid_json",
            Value::Null,
        ),
        ("empty body", Vec::new(), "invalid_json", Value::Null),
    ]
}

#[tokio::test]
async fn malformed_requests_are_400_naming_the_field_at_fault() {
    let gw = TestGateway::start(EMBEDDED_DEFAULT).await;
    for (what, body, code, param) in cases() {
        let reply = post_chat_raw(&gw, body).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.text);
        assert_eq!(reply.error["type"], "invalid_request_error", "{what}");
        assert_eq!(reply.error["code"], code, "{what}: {}", reply.text);
        assert_eq!(reply.error["param"], param, "{what}: {}", reply.text);
    }
}

/// An unknown model id is quoted in the message, but not a huge one whole.
#[tokio::test]
async fn a_huge_unknown_model_id_is_not_echoed_whole() {
    let gw = TestGateway::start(EMBEDDED_DEFAULT).await;
    let id = format!("nope/{}", "é".repeat(100_000));
    let body = serde_json::json!({"model": id, "messages": [{"role": "user", "content": "x"}]});
    let reply = post_chat_raw(&gw, body.to_string().into_bytes()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error["code"], "model_not_found");
    let message = reply.error["message"].as_str().unwrap();
    assert!(message.len() < 1_000, "{} bytes", message.len());
    assert!(
        message.contains("\"nope/éé") && message.contains("…"),
        "{message}"
    );
}

#[tokio::test]
async fn gateway_still_serves_after_json_bombs() {
    let gw = TestGateway::start(EMBEDDED_DEFAULT).await;
    let array = format!("[{}0]", "0,".repeat(1_000_000));
    let reply = post_chat_raw(&gw, array.into_bytes()).await;
    assert_eq!(
        reply.status, 400,
        "a million-element array is not a request"
    );
    let response = client()
        .post(gw.url("/api/v1/chat/completions"))
        .json(&crate::support::chat_body("mock/echo", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
