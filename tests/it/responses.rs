//! Non-streaming answers come back as the upstream sent them, except for
//! `model`, which is the public id.

use serde_json::{json, Value};

use crate::support::{chat_body, post_chat, request_id, TestGateway, Upstream};

#[tokio::test]
async fn complete_answer_comes_back_unchanged_except_the_public_model_id() {
    let upstream_body = json!({
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_741_570_283,
        "model": "m-upstream-2025-04-14",
        "system_fingerprint": "fp_44709d6fcb",
        "service_tier": "default",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": null,
                "refusal": "I can't help with that part.",
                "tool_calls": [{
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}
                }],
                "annotations": [{
                    "type": "url_citation",
                    "url_citation": {"start_index": 0, "end_index": 5, "url": "https://example.com/", "title": "Ex"}
                }]
            },
            "logprobs": {"content": [
                {"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105]}]}
            ], "refusal": null},
            "finish_reason": "tool_calls"
        }],
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 10,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "accepted_prediction_tokens": 0}
        },
        "x_vendor_extension": {"kept": [1, 2, 3]}
    });
    let upstream = Upstream::json(200, upstream_body.clone()).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;

    let response = post_chat(&gw, &chat_body("up/m", false)).await;
    assert_eq!(response.status(), 200);
    assert!(request_id(response.headers()).starts_with("req_"));
    assert_eq!(response.headers()["content-type"], "application/json");
    let got: Value = response.json().await.unwrap();

    let mut expected = upstream_body;
    expected["model"] = json!("up/m");
    // The gateway adds what the request cost (OpenRouter's `usage.cost`).
    expected["usage"]["cost"] = json!(0);
    assert_eq!(got, expected);
}
