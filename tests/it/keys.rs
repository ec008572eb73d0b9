//! Authentication: deny by default, one actionable 401 per failure, a
//! malformed key refused without a store lookup (SEC-03), admin and user
//! credentials kept apart (SEC-04), path tricks stay protected (PR-05),
//! model patterns enforced with 403.

use mume_gateway::accounts::KeySpec;
use mume_gateway::store::KeyPatch;
use serde_json::json;

use crate::support::{anonymous, chat_body, error_reply, keyed, test_key, TestGateway};

const ADMIN: &str = "admin-secret-for-tests-0001";

async fn gateway() -> TestGateway {
    TestGateway::start_with_env(
        r#"
[[providers]]
name = "mock"
kind = "mock"
[[models]]
id = "mock/echo"
[[models]]
id = "mock/slow"
"#,
        &[("MUME_ADMIN_KEY", ADMIN)],
    )
    .await
}

async fn chat_as(gw: &TestGateway, client: reqwest::Client) -> crate::support::ErrorReply {
    let reply = client
        .post(gw.url("/api/v1/chat/completions"))
        .json(&chat_body("mock/echo", false))
        .send()
        .await
        .unwrap();
    error_reply(reply).await
}

#[tokio::test]
async fn each_kind_of_bad_key_gets_its_own_401_and_is_never_echoed() {
    let gw = gateway().await;
    let (id, key) = gw
        .key(KeySpec {
            name: "k".into(),
            ..Default::default()
        })
        .await;
    let mut typo = key.clone();
    typo.replace_range(30..31, if &key[30..31] == "a" { "b" } else { "a" });
    let (_, gone) = gw
        .key(KeySpec {
            name: "gone".into(),
            ..Default::default()
        })
        .await;
    let gone_id = gone[8..16].to_string();
    gw.state.accounts.delete_key(&gone_id).await.unwrap();

    let cases = [
        (anonymous(), "missing_api_key"),
        (keyed("sk-proj-abcdef"), "malformed_api_key"),
        (keyed(&typo), "malformed_api_key"),
        (keyed(&gone), "invalid_api_key"),
        (keyed(ADMIN), "admin_key_not_allowed"),
    ];
    for (client, code) in cases {
        let e = chat_as(&gw, client).await;
        assert_eq!(e.status, 401, "{code}: {}", e.text);
        assert_eq!(e.error["code"], code);
        assert_eq!(e.error["type"], "authentication_error");
        assert!(
            !e.text.contains(&key[8..]) && !e.text.contains(&gone[8..]) && !e.text.contains(ADMIN)
        );
    }
    // x-api-key works as well as Authorization.
    let reply = anonymous()
        .post(gw.url("/api/v1/chat/completions"))
        .header("x-api-key", &key)
        .json(&chat_body("mock/echo", false))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);

    let disable = KeyPatch {
        disabled: Some(true),
        ..Default::default()
    };
    gw.state.accounts.update_key(&id, disable).await.unwrap();
    assert_eq!(
        chat_as(&gw, keyed(&key)).await.error["code"],
        "key_disabled"
    );
    let expire = KeyPatch {
        disabled: Some(false),
        expires_at: Some(Some(1)),
        ..Default::default()
    };
    gw.state.accounts.update_key(&id, expire).await.unwrap();
    assert_eq!(chat_as(&gw, keyed(&key)).await.error["code"], "key_expired");
}

#[tokio::test]
async fn sec03_a_malformed_key_is_refused_without_the_store() {
    let gw = gateway().await;
    gw.store.close().await;
    let e = chat_as(&gw, keyed("sk-mume-short")).await;
    assert_eq!(e.status, 401, "{}", e.text);
    assert_eq!(e.error["code"], "malformed_api_key");
    // A well-formed unknown key needs the store, which is gone: 503.
    let unknown = mume_gateway::accounts::keys::PlainKey::generate();
    let e = chat_as(&gw, keyed(unknown.reveal())).await;
    assert_eq!(e.status, 503);
    assert_eq!(e.error["code"], "store_unavailable");
}

#[tokio::test]
async fn sec04_admin_routes_refuse_user_keys_and_user_routes_refuse_the_admin_key() {
    let gw = gateway().await;
    let user = test_key();
    for (method, path) in [
        ("GET", "/api/v1/keys"),
        ("POST", "/api/v1/keys"),
        ("GET", "/api/v1/keys/TestKey0"),
        ("PATCH", "/api/v1/keys/TestKey0"),
        ("DELETE", "/api/v1/keys/TestKey0"),
        ("POST", "/api/v1/keys/TestKey0/credits"),
        ("GET", "/api/v1/credits"),
    ] {
        let m: reqwest::Method = method.parse().unwrap();
        let none = error_reply(
            anonymous()
                .request(m.clone(), gw.url(path))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(none.status, 401, "{method} {path} with no key");
        let as_user = error_reply(
            keyed(user.reveal())
                .request(m.clone(), gw.url(path))
                .json(&json!({}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(as_user.status, 403, "{method} {path} with a user key");
        assert_eq!(as_user.error["type"], "permission_error");
    }
    for (method, path) in [
        ("POST", "/api/v1/chat/completions"),
        ("GET", "/api/v1/key"),
        ("GET", "/api/v1/generation?id=x"),
    ] {
        let m: reqwest::Method = method.parse().unwrap();
        let as_admin =
            error_reply(keyed(ADMIN).request(m, gw.url(path)).send().await.unwrap()).await;
        assert_eq!(as_admin.status, 401, "{method} {path} with the admin key");
    }
    // Public routes need nothing.
    for path in [
        "/health",
        "/ready",
        "/api/v1/models",
        "/api/v1/models/mock/echo",
    ] {
        assert_eq!(
            anonymous().get(gw.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
}

#[tokio::test]
async fn pr05_path_tricks_are_never_served_without_a_key() {
    let gw = gateway().await;
    for path in [
        "//api/v1/keys",
        "/api/v1//keys",
        "/api/v1/../v1/keys",
        "/api/v1/keys%2F..",
        "/api/v1%2Fkeys",
        "/API/V1/KEYS",
        "/api/v1/chat/completions/",
        "/api/v1/key/../keys",
    ] {
        let url = format!("{}{path}", gw.base);
        let status = anonymous()
            .get(&url)
            .header("Host", "admin.internal")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "{path} without a key");
        let status = keyed(test_key().reveal())
            .get(&url)
            .send()
            .await
            .unwrap()
            .status();
        assert!(
            status == 404 || status == 403 || status == 405,
            "{path} with a user key: {status}"
        );
    }
}

#[tokio::test]
async fn a_model_outside_the_keys_patterns_is_403() {
    let gw = gateway().await;
    let (_, key) = gw
        .key(KeySpec {
            name: "echo-only".into(),
            models: vec!["mock/e*".into()],
            ..Default::default()
        })
        .await;
    let ok = gw.chat_as(&key, &chat_body("mock/echo", false)).await;
    assert_eq!(ok.status(), 200);
    let e = error_reply(gw.chat_as(&key, &chat_body("mock/slow", false)).await).await;
    assert_eq!(e.status, 403);
    assert_eq!(e.error["code"], "permission_denied");
}
