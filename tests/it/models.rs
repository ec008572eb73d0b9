//! The model catalogue, health routes, and a provider whose key is unset.

use mume_gateway::config::EMBEDDED_DEFAULT;
use serde_json::{json, Value};

use crate::support::upstream::completion;
use crate::support::{chat_body, client, error_reply, post_chat, TestGateway, Upstream};

const CATALOG: &str = r#"
[server]
listen = "127.0.0.1:0"

[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[[models]]
id = "up/priced"
upstream = "m-upstream"
name = "Up: Priced"
prompt_price = "0.40"
completion_price = "1.60"
context_length = 128000
max_output_tokens = 4096

[[models]]
id = "up/free"
"#;

#[tokio::test]
async fn model_list_has_the_openai_shape_with_exact_per_token_prices() {
    let gw = TestGateway::start(CATALOG).await;
    let response = client().get(gw.url("/api/v1/models")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let list: Value = response.json().await.unwrap();
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);

    let priced = &data[0];
    assert_eq!(priced["id"], "up/priced");
    assert_eq!(priced["object"], "model");
    assert!(priced["created"]
        .as_u64()
        .is_some_and(|c| c > 1_600_000_000));
    assert_eq!(priced["owned_by"], "up");
    assert_eq!(priced["name"], "Up: Priced");
    assert_eq!(priced["context_length"], 128000);
    assert_eq!(priced["pricing"]["prompt"], "0.0000004");
    assert_eq!(priced["pricing"]["completion"], "0.0000016");

    let free = &data[1];
    assert_eq!(free["id"], "up/free");
    assert_eq!(free["name"], "up/free", "the name defaults to the id");
    assert_eq!(free["pricing"], json!({"prompt": "0", "completion": "0"}));
    for model in data {
        for key in [
            "id",
            "object",
            "created",
            "owned_by",
            "name",
            "context_length",
            "pricing",
        ] {
            assert!(model.get(key).is_some(), "{key} missing in {model}");
        }
    }
}

#[tokio::test]
async fn one_model_by_an_id_containing_a_slash_and_404_for_an_unknown_one() {
    let gw = TestGateway::start(EMBEDDED_DEFAULT).await;
    let get = |path: &str| client().get(gw.url(path)).send();
    let response = get("/api/v1/models/openai/gpt-4.1-mini").await.unwrap();
    assert_eq!(response.status(), 200);
    let model: Value = response.json().await.unwrap();
    assert_eq!(model["id"], "openai/gpt-4.1-mini");
    assert_eq!(model["object"], "model");
    assert_eq!(model["owned_by"], "openai");
    assert_eq!(model["pricing"]["prompt"], "0.0000004");

    let reply = error_reply(get("/api/v1/models/openai/gpt-9-ultra").await.unwrap()).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error["code"], "model_not_found");

    // An id that is not UTF-8 once decoded: a JSON 400 naming `id`.
    let reply = error_reply(get("/api/v1/models/openai/%ff").await.unwrap()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        (reply.error["code"].as_str(), reply.error["param"].as_str()),
        (Some("invalid_path"), Some("id"))
    );
}

#[tokio::test]
async fn health_and_ready_answer_200() {
    let gw = TestGateway::start(EMBEDDED_DEFAULT).await;
    let health = client().get(gw.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "ok");
    let ready = client().get(gw.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
}

#[tokio::test]
async fn provider_with_an_unset_key_variable_answers_503_naming_it() {
    // The injected environment has other variables, not this one.
    let (upstream, gw) =
        with_key_variable("UP_KEY_THAT_IS_NOT_SET", &[("UP_KEY", "sk-other")]).await;
    assert_provider_not_configured(&gw, "UP_KEY_THAT_IS_NOT_SET", "is unset").await;
    assert!(upstream.seen().is_empty(), "nothing was sent upstream");
    // The rest of the gateway is up.
    let models = client().get(gw.url("/api/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 200);
}

/// A gateway whose provider `up` reads its key from `variable`, started
/// with the environment `env`; the upstream answers anything it gets.
async fn with_key_variable(variable: &str, env: &[(&str, &str)]) -> (Upstream, TestGateway) {
    let upstream = Upstream::json(200, completion("never")).await;
    let config = crate::support::GatewayConfig::openai(&upstream.base_url)
        .provider("api_key_env", variable)
        .toml();
    let gw = TestGateway::start_with_env(&config, env).await;
    (upstream, gw)
}

async fn assert_provider_not_configured(gw: &TestGateway, variable: &str, why: &str) {
    for stream in [false, true] {
        let reply = error_reply(post_chat(gw, &chat_body("up/m", stream)).await).await;
        assert_eq!(reply.status, 503, "{}", reply.text);
        assert_eq!(reply.error["code"], "provider_not_configured");
        let message = reply.error["message"].as_str().unwrap();
        assert!(
            message.contains(variable) && message.contains(why),
            "{message}"
        );
    }
}

/// A key of the gateway itself in a provider's key variable (the OpenAI
/// SDK and the `openai` provider both read OPENAI_API_KEY) is never sent
/// upstream: the provider answers 503 saying so.
#[tokio::test]
async fn a_gateway_key_in_the_providers_variable_is_never_sent_upstream() {
    let gateway_key = "sk-mume-AbCdEfGh0123456789abcdefghijklmnopqrstuvwXYZ012";
    let (upstream, gw) =
        with_key_variable("OPENAI_API_KEY", &[("OPENAI_API_KEY", gateway_key)]).await;
    assert_provider_not_configured(&gw, "OPENAI_API_KEY", "key of this gateway").await;
    assert!(upstream.seen().is_empty(), "nothing was sent upstream");
}
