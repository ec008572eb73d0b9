//! The admin API: keys (create once-shown, list paged, get, update,
//! delete), credit top-ups and adjustments through the ledger, totals,
//! and clear 400/404 answers for bad input.

use serde_json::{json, Value};

use crate::support::{chat_body, error_reply, keyed, TestGateway};

const ADMIN: &str = "admin-secret-for-tests-0002";

async fn gateway() -> TestGateway {
    TestGateway::start_with_env(
        "[[providers]]\nname = \"mock\"\nkind = \"mock\"\n[[models]]\nid = \"mock/echo\"\nprompt_price = \"1\"\ncompletion_price = \"1\"\nmax_output_tokens = 100\n",
        &[("MUME_ADMIN_KEY", ADMIN)],
    )
    .await
}

fn admin() -> reqwest::Client {
    keyed(ADMIN)
}

#[tokio::test]
async fn keys_are_created_listed_updated_credited_and_deleted() {
    let gw = gateway().await;
    let created = admin()
        .post(gw.url("/api/v1/keys"))
        .json(&json!({"name": "team-a", "credits": "2.50", "rpm": 100, "models": ["mock/*"], "metadata": {"team": "a"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["data"]["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk-mume-"));
    assert_eq!(created["data"]["balance"], json!(2.5));
    assert_eq!(created["data"]["rpm"], 100);
    assert_eq!(created["data"]["metadata"], json!({"team": "a"}));

    // The plaintext is never shown again.
    let got: Value = admin()
        .get(gw.url(&format!("/api/v1/keys/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!got.to_string().contains(&key[8..]));
    assert_eq!(got["data"]["name"], "team-a");
    let list: Value = admin()
        .get(gw.url("/api/v1/keys?limit=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        list["next_offset"], 1,
        "the test key and team-a: two pages of one"
    );
    let page2: Value = admin()
        .get(gw.url("/api/v1/keys?limit=1&offset=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page2["next_offset"], Value::Null);

    let topped: Value = admin()
        .post(gw.url(&format!("/api/v1/keys/{id}/credits")))
        .json(&json!({"amount": "0.50"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(topped["data"]["balance"], json!(3));
    let adjusted: Value = admin()
        .post(gw.url(&format!("/api/v1/keys/{id}/credits")))
        .json(&json!({"amount": -1, "kind": "adjust", "note": "refund reversal"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(adjusted["data"]["balance"], json!(2));
    let kinds: Vec<String> = gw
        .store
        .credits
        .ledger(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, ["topup", "topup", "adjust"]);

    let totals: Value = admin()
        .get(gw.url("/api/v1/credits"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(totals["data"]["total_credits"], json!(2));
    assert_eq!(totals["data"]["balance"], json!(2));
    assert_eq!(totals["data"]["keys"], 2);

    let patched: Value = admin()
        .patch(gw.url(&format!("/api/v1/keys/{id}")))
        .json(&json!({"disabled": true, "rpm": null}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["data"]["disabled"], true);
    assert_eq!(patched["data"]["rpm"], Value::Null);
    let refused = error_reply(gw.chat_as(&key, &chat_body("mock/echo", false)).await).await;
    assert_eq!(
        refused.error["code"], "key_disabled",
        "takes effect at once"
    );

    let deleted = admin()
        .delete(gw.url(&format!("/api/v1/keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let again = error_reply(
        admin()
            .get(gw.url(&format!("/api/v1/keys/{id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(again.status, 404);
}

#[tokio::test]
async fn bad_admin_input_is_400_or_404_never_500() {
    let gw = gateway().await;
    let post = |path: &str, body: &str| {
        admin()
            .post(gw.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let cases = [
        ("/api/v1/keys", "{not json", 400),
        ("/api/v1/keys", "[]", 400),
        ("/api/v1/keys", r#"{"credits": "1"}"#, 400),
        ("/api/v1/keys", r#"{"name": "x", "credits": "-1"}"#, 400),
        (
            "/api/v1/keys",
            r#"{"name": "x", "credits": "99999999999"}"#,
            400,
        ),
        ("/api/v1/keys", r#"{"name": "x", "credits": 1e300}"#, 400),
        ("/api/v1/keys", r#"{"name": "x", "rpm": -5}"#, 400),
        ("/api/v1/keys", r#"{"name": "x", "rpm": 0}"#, 400),
        (
            "/api/v1/keys",
            r#"{"name": "x", "models": "openai/*"}"#,
            400,
        ),
        (
            "/api/v1/keys",
            r#"{"name": "x", "expires_at": "tomorrow"}"#,
            400,
        ),
        ("/api/v1/keys", r#"{"name": "x", "colour": "blue"}"#, 400),
        ("/api/v1/keys/TestKey0/credits", r#"{"amount": "-1"}"#, 400),
        ("/api/v1/keys/TestKey0/credits", r#"{"amount": "abc"}"#, 400),
        ("/api/v1/keys/nope/credits", r#"{"amount": "1"}"#, 404),
    ];
    for (path, body, status) in cases {
        let e = error_reply(post(path, body).await.unwrap()).await;
        assert_eq!(e.status.as_u16(), status, "{path} {body}: {}", e.text);
        assert!(!e.error["message"].as_str().unwrap().is_empty());
    }
    // An unlimited key has no balance to top up.
    let e = error_reply(
        post("/api/v1/keys/TestKey0/credits", r#"{"amount": "1"}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (e.status.as_u16(), e.error["code"].as_str()),
        (400, Some("unlimited_key"))
    );
    // Taking more than the balance is refused and changes nothing.
    let created: Value = post("/api/v1/keys", r#"{"name": "small", "credits": "1"}"#)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["data"]["id"].as_str().unwrap();
    let e = error_reply(
        post(
            &format!("/api/v1/keys/{id}/credits"),
            r#"{"amount": "-2", "kind": "adjust"}"#,
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(e.status, 400);
    assert_eq!(gw.balance(id).await, 1_000_000_000);
    // A `kind` that is not one of the two, string or not, moves nothing.
    for kind in [r#"true"#, r#"1"#, r#"{}"#, r#""top-up""#] {
        let e = error_reply(
            post(
                &format!("/api/v1/keys/{id}/credits"),
                &format!(r#"{{"amount": "5", "kind": {kind}}}"#),
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(
            (e.status.as_u16(), &e.error["param"]),
            (400, &json!("kind"))
        );
    }
    assert_eq!(gw.balance(id).await, 1_000_000_000);
    let e = error_reply(
        admin()
            .patch(gw.url("/api/v1/keys/nope"))
            .json(&json!({"disabled": true}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e.status, 404);
    // Bad values in the URL: the same JSON error, naming the parameter.
    for (path, param) in [
        ("/api/v1/keys?limit=abc", "limit"),
        ("/api/v1/keys?offset=-1", "offset"),
        ("/api/v1/keys/%ff", "id"),
        ("/api/v1/keys/%ff/credits", "id"),
    ] {
        let request = if path.ends_with("credits") {
            admin().post(gw.url(path)).json(&json!({"amount": "1"}))
        } else {
            admin().get(gw.url(path))
        };
        let e = error_reply(request.send().await.unwrap()).await;
        assert_eq!(e.status, 400, "{path}: {}", e.text);
        assert_eq!(e.error["param"], param, "{path}: {}", e.text);
    }
}
