//! What reaches the upstream: the client's body unchanged except for the
//! model name (and the usage request on streams), never the fields that
//! would redirect the gateway (SEC-06), never the client's headers (SEC-05).

use serde_json::{json, Value};

use crate::support::upstream::{answer, completion};
use crate::support::{
    client, post_chat, post_chat_bytes, GatewayConfig, Sse, TestGateway, Upstream, UP_KEY,
};

#[tokio::test]
async fn unknown_fields_reach_the_upstream_unchanged_and_redirect_fields_never_do() {
    let upstream = Upstream::json(200, completion("ok")).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let sent = json!({
        "model": "up/m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"}],
        "seed": 42,
        "logprobs": true,
        "top_logprobs": 3,
        "reasoning_effort": "high",
        "temperature": 0.25,
        "x_vendor": {"routing": {"tier": "gold", "weights": [1, 2.5, null, {"deep": [true]}]}},
        "api_base": "http://169.254.169.254/latest",
        "base_url": "http://attacker.invalid/v1",
        "api_key": "sk-client-supplied",
    });

    let response = post_chat(&gw, &sent).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    let got = upstream.only_request().body;
    let mut expected = sent.clone();
    let object = expected.as_object_mut().unwrap();
    for refused in ["api_base", "base_url", "api_key"] {
        object.remove(refused);
    }
    object.insert("model".into(), json!("m-upstream"));
    assert_eq!(
        got, expected,
        "the upstream body is the client's, minus the refused fields"
    );
    assert!(
        !got.to_string().contains("sk-client-supplied"),
        "a client-supplied key never travels upstream"
    );
}

#[tokio::test]
async fn values_reach_the_upstream_byte_for_byte() {
    let upstream = Upstream::json(200, completion("ok")).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    // Numbers a JSON tree would rewrite (an integer past 64 bits, a
    // trailing zero, an exponent), an escape it would decode, and spacing.
    let body = concat!(
        r#"{"model": "up/m", "messages": [ {"role": "user", "content": "caf\u00e9"} ],"#,
        r#" "seed": 123456789012345678901234567890, "temperature": 1.50, "top_p": 1e0,"#,
        r#" "models": ["up/m"], "api_key": "sk-client-supplied"}"#
    );
    let response = post_chat_bytes(&gw, body).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    let got = upstream.only_request().raw;
    let expected = concat!(
        r#"{"model":"m-upstream","messages":[ {"role": "user", "content": "caf\u00e9"} ],"#,
        r#""seed":123456789012345678901234567890,"temperature":1.50,"top_p":1e0}"#
    );
    assert_eq!(std::str::from_utf8(&got).unwrap(), expected);
}

#[tokio::test]
async fn stream_requests_reach_the_upstream_asking_for_usage() {
    let upstream = Upstream::sse(answer(&["hi"])).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;

    // Without stream_options, and with the client explicitly declining usage.
    for options in [None, Some(json!({"include_usage": false}))] {
        let mut body = json!({
            "model": "up/m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": true,
            "seed": 7,
        });
        if let Some(o) = &options {
            body["stream_options"] = o.clone();
        }
        let response = post_chat(&gw, &body).await;
        assert_eq!(response.status(), 200);
        let frames = Sse::new(response).rest().await;
        assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]"));
    }

    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    for request in seen {
        let body = request.body;
        assert_eq!(body["model"], "m-upstream");
        assert_eq!(body["stream"], true);
        assert_eq!(body["seed"], 7);
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
    }
}

#[tokio::test]
async fn client_credentials_and_hop_by_hop_headers_never_reach_the_upstream() {
    let upstream = Upstream::json(200, completion("ok")).await;
    let mut headers = toml::Table::new();
    headers.insert("OpenAI-Organization".into(), "org-gateway".into());
    headers.insert("X-Extra".into(), "from-config".into());
    let config = GatewayConfig::openai(&upstream.base_url).provider("headers", headers);
    let gw = TestGateway::with(&config).await;

    let response = client()
        .post(gw.url("/api/v1/chat/completions"))
        // The client's own key (the default Authorization header) and an
        // x-api-key must stay between the client and the gateway.
        .header("x-api-key", "sk-client-secret-bbbb")
        .header("Cookie", "session=client-secret-cccc")
        .header("Proxy-Authorization", "Basic client-secret-dddd")
        .header("Connection", "keep-alive, x-hop-client")
        .header("Keep-Alive", "timeout=5")
        .header("x-hop-client", "client-secret-eeee")
        .header("OpenAI-Organization", "org-client-secret")
        .header("X-Forwarded-For", "10.9.8.7")
        .header("X-Custom-Client", "client-secret-ffff")
        .header("User-Agent", "client-secret-agent")
        .json(&json!({"model": "up/m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let got = upstream.only_request().headers;
    let values = |name: &str| -> Vec<String> {
        got.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        values("authorization"),
        [format!("Bearer {UP_KEY}")],
        "the upstream gets the gateway's own key, once"
    );
    assert_eq!(values("openai-organization"), ["org-gateway"]);
    assert_eq!(values("x-extra"), ["from-config"]);
    for absent in [
        "x-api-key",
        "cookie",
        "proxy-authorization",
        "keep-alive",
        "x-hop-client",
        "x-forwarded-for",
        "x-custom-client",
    ] {
        assert!(
            got.get(absent).is_none(),
            "{absent} must not reach the upstream"
        );
    }
    for (name, value) in &got {
        let value = value.to_str().unwrap_or_default();
        assert!(
            !value.contains("client-secret")
                && !value.contains("x-hop-client")
                && !value.contains(crate::support::test_key().reveal()),
            "client header content reached the upstream in {name}: {value}"
        );
    }
    assert!(
        got.get("connection")
            .is_none_or(|v| !v.to_str().unwrap().contains("x-hop")),
        "the client's Connection header is not forwarded"
    );
    // The body the upstream got is still the client's.
    let body: Value = upstream.only_request().body;
    assert_eq!(body["model"], "m-upstream");
}
