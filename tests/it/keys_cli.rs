//! The `keys` CLI on the store, the starter key of a first start, and
//! recovery from `kill -9` with holds open (CR-04).

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mume_gateway::store::{HoldRequest, HoldResult, Store, StoreOptions};
use serde_json::json;

use crate::support::{anonymous, keyed, TestGateway};

const BIN: &str = env!("CARGO_BIN_EXE_mume-gateway");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    let text = format!(
        r#"
[server]
max_stream_duration = "20s"

[store]
path = "{}"
hold_ttl = "25s"
sweep_interval = "1s"

[[providers]]
name = "mock"
kind = "mock"
first_byte_timeout = "2s"
total_timeout = "2s"

[[models]]
id = "mock/slow"
prompt_price = "1000"
completion_price = "1000"
max_output_tokens = 100
"#,
        dir.join("store.db").display()
    );
    fs::write(&path, text).unwrap();
    path
}

fn cli(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .env_remove("MUME_CONFIG")
        .arg("keys")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn keys_cli_creates_lists_disables_tops_up_and_reports_usage() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (ok, key, err) = cli(
        &config,
        &[
            "create",
            "--name",
            "ci-bot",
            "--credits",
            "2.50",
            "--rpm",
            "30",
            "--models",
            "mock/*,openai/gpt-4.1-mini",
        ],
    );
    assert!(ok, "{err}");
    let key = key.trim();
    assert!(
        key.starts_with("sk-mume-") && !key.contains(' '),
        "only the key on stdout: {key:?}"
    );
    let id = &key[8..16];
    let (ok, list, _) = cli(&config, &["list"]);
    assert!(ok);
    assert!(
        list.contains(id) && list.contains("ci-bot") && list.contains("2.5") && list.contains("30"),
        "{list}"
    );
    assert!(!list.contains(&key[8..]), "the list never shows the key");
    let (ok, out, _) = cli(&config, &["topup", id, "--credits", "1.25"]);
    assert!(ok && out.contains("3.75"), "{out}");
    let (ok, out, _) = cli(&config, &["disable", id]);
    assert!(ok && out.contains("disabled"), "{out}");
    let (ok, usage, _) = cli(&config, &["usage", id]);
    assert!(
        ok && usage.contains("balance: 3.75 USD") && usage.contains("topup"),
        "{usage}"
    );
    let (ok, _, err) = cli(&config, &["topup", "nope", "--credits", "1"]);
    assert!(!ok && err.contains("no key"), "{err}");
    let (ok, _, err) = cli(&config, &["create", "--name", "x", "--credits", "lots"]);
    assert!(!ok && err.contains("--credits"), "{err}");
    // A limit of 0 is refused, as the admin API refuses it.
    for limit in ["--rpm", "--tpm", "--max-concurrent"] {
        let (ok, _, err) = cli(&config, &["create", "--name", "x", limit, "0"]);
        let field = limit.trim_start_matches("--").replace('-', "_");
        assert!(!ok && err.contains(&format!("`{field}`")), "{limit}: {err}");
    }
}

fn start(config: &std::path::Path, stderr: &std::path::Path) -> (Killed, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(BIN)
        .env_remove("MUME_CONFIG")
        .env_remove("MUME_LISTEN")
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    (Killed(child), format!("http://127.0.0.1:{port}"))
}

async fn wait_healthy(base: &str) {
    let started = Instant::now();
    while anonymous()
        .get(format!("{base}/health"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the gateway never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn first_start_prints_a_starter_key_once_and_kill_9_leaves_no_hold_behind() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let first_err = dir.path().join("first.stderr");
    let (mut gw, base) = start(&config, &first_err);
    wait_healthy(&base).await;
    let banner = fs::read_to_string(&first_err).unwrap();
    let key = banner
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("sk-mume-"))
        .unwrap_or_else(|| panic!("no starter key:\n{banner}"))
        .to_string();

    // A stream is running, its hold open and sent upstream: kill -9.
    let mut reply = keyed(&key)
        .post(format!("{base}/api/v1/chat/completions"))
        .json(&json!({"model": "mock/slow", "stream": true, "messages": [{"role": "user", "content": "one two three four five six"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    reply.chunk().await.unwrap();
    gw.0.kill().unwrap();
    gw.0.wait().unwrap();
    drop(reply);

    let store = Store::open(&StoreOptions {
        url: None,
        path: dir.path().join("store.db"),
        busy_timeout: Duration::from_secs(2),
    })
    .await
    .unwrap();
    assert_eq!(
        store.credits.totals().await.unwrap().active_holds,
        1,
        "the killed request's hold is open"
    );

    // Restart: nothing is printed, and the sweeper resolves the hold once
    // its TTL (25 s) has passed, within the 60 s CR-04 allows.
    let second_err = dir.path().join("second.stderr");
    let (_gw, base) = start(&config, &second_err);
    wait_healthy(&base).await;
    assert!(
        !fs::read_to_string(&second_err)
            .unwrap()
            .contains("sk-mume-"),
        "the starter key is shown only once"
    );
    let started = Instant::now();
    while store.credits.totals().await.unwrap().active_holds > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the hold was never resolved"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let id = &key[8..16];
    let ledger = store.credits.ledger(id).await.unwrap();
    let last = ledger.last().unwrap();
    assert_eq!(last.kind, "settle", "sent upstream: charged, {ledger:?}");
    assert!(last.note.as_deref().unwrap_or("").contains("expired"));
    assert_eq!(
        ledger
            .iter()
            .filter(|r| r.kind == "settle" || r.kind == "release")
            .count(),
        1,
        "settled once"
    );
}

#[tokio::test]
async fn an_expired_hold_never_sent_upstream_is_released_in_full() {
    let gw = TestGateway::start("[[providers]]\nname = \"mock\"\nkind = \"mock\"\n").await;
    let (id, _) = gw
        .key(mume_gateway::accounts::KeySpec {
            name: "k".into(),
            credits: Some(1_000),
            ..Default::default()
        })
        .await;
    let held = gw
        .store
        .credits
        .hold(&HoldRequest {
            hold_id: "h1".into(),
            request_id: "r1".into(),
            key_id: id.clone(),
            amount: 600,
            sent: false,
            now: 0,
            expires_at: 10,
        })
        .await
        .unwrap();
    assert_eq!(held, HoldResult::Held);
    assert_eq!(gw.balance(&id).await, 400);
    let swept = gw.store.credits.sweep_expired(11).await.unwrap();
    assert_eq!((swept.released, swept.settled), (1, 0));
    assert_eq!(gw.balance(&id).await, 1_000);
    // Settling it afterwards (a late request end) changes nothing.
    assert_eq!(
        gw.store.credits.sweep_expired(12).await.unwrap().released,
        0
    );
}
