//! The binary: `check-config` reports every problem, `serve` refuses a bad
//! config with the same words, the JSON logs carry the access fields, and
//! no secret (gateway key, admin key, provider key) ever shows up in the
//! logs, the error bodies or the store (SEC-01, SEC-02).

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use serde_json::{json, Value};

use crate::support::upstream::completion;
use crate::support::{anonymous, request_id, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_mume-gateway");

const BAD_CONFIG: &str = r#"
[server]
listen = "nowhere"
colour = "blue"

[[providers]]
name = "mock"
kind = "mock"

[[models]]
id = "ghost/m"
"#;

/// The problems BAD_CONFIG must be reported with.
const PROBLEMS: [&str; 3] = ["server.colour", "server.listen", "models[0].provider"];

/// A file under the system temp dir, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("mume-it-{}-{name}", std::process::id()));
        fs::write(&path, contents).expect("write temp file");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The binary with a clean slate: no config or listen override from the
/// environment of whoever runs the tests.
fn gateway_command() -> Command {
    let mut command = Command::new(BIN);
    for var in [
        "MUME_CONFIG",
        "MUME_LISTEN",
        "MUME_LOG",
        "MUME_LOG_FORMAT",
        "MUME_ADMIN_KEY",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command
}

#[test]
fn check_config_lists_every_problem_of_a_bad_file_and_fails() {
    let file = TempFile::new("bad-check.toml", BAD_CONFIG);
    let output = gateway_command()
        .arg("check-config")
        .arg("--config")
        .arg(&file.0)
        .output()
        .unwrap();
    assert!(!output.status.success(), "a bad config must fail the check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("3 problems found"), "{stderr}");
    for problem in PROBLEMS {
        assert!(
            stderr.contains(problem),
            "{problem} not reported:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("\"ghost\""),
        "names the missing provider:\n{stderr}"
    );
}

#[test]
fn check_config_accepts_the_embedded_default() {
    let output = gateway_command()
        .arg("check-config")
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("OK"), "{stdout}");
}

/// A key pasted where the NAME of its variable belongs is a problem that
/// `check-config` reports by its config key, never repeating the key.
#[test]
fn check_config_refuses_a_key_given_as_its_variable_name_without_showing_it() {
    let groq = "gsk_AbCdEfGh0123456789IjKlMnOp0123456789QrStUvWx01234567";
    let file = TempFile::new(
        "key-as-name.toml",
        &format!("[[providers]]\nname = \"groq\"\nkind = \"openai\"\nbase_url = \"https://api.groq.com/openai/v1\"\napi_key_env = \"{groq}\"\n"),
    );
    let output = gateway_command()
        .arg("check-config")
        .arg("--config")
        .arg(&file.0)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("providers[0].api_key_env")
            && stderr.contains("NAME of an environment variable"),
        "{stderr}"
    );
    assert!(
        !stdout.contains(groq) && !stderr.contains(groq),
        "the key is never shown:\n{stdout}{stderr}"
    );
}

/// MUME_LISTEN matters only to `serve`: a bad value does not stop the
/// other commands, and `serve` names it.
#[test]
fn a_bad_listen_address_stops_only_serve() {
    let check = gateway_command()
        .arg("check-config")
        .env_remove("OPENAI_API_KEY")
        .env("MUME_LISTEN", "nowhere")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let serve = gateway_command()
        .arg("serve")
        .arg("--listen")
        .arg("nowhere")
        .output()
        .unwrap();
    assert!(!serve.status.success());
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(
        stderr.contains("MUME_LISTEN") && stderr.contains("\"nowhere\""),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_to_start_with_a_bad_config() {
    let file = TempFile::new("bad-serve.toml", BAD_CONFIG);
    let mut child = gateway_command()
        .arg("serve")
        .arg("--config")
        .arg(&file.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("serve started with a bad config");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for problem in PROBLEMS {
        assert!(
            stderr.contains(problem),
            "{problem} not reported:\n{stderr}"
        );
    }
}

/// Kills the child when the test ends, whatever happens.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CANARY: &str = "sk-canary-SECRET-123456789";
const ADMIN: &str = "mume-admin-SECRET-987654321";

/// Every 12-character run of `secret` that occurs in `haystack`.
fn leaked<'a>(secret: &'a str, haystack: &str) -> Vec<&'a str> {
    (0..=secret.len().saturating_sub(12))
        .map(|i| &secret[i..i + 12])
        .filter(|run| haystack.contains(run))
        .collect()
}

#[tokio::test]
async fn json_logs_have_access_fields_and_no_secret_is_ever_written_anywhere() {
    // The upstream answers `m-upstream`, and refuses `m-denied` quoting
    // the key it was sent, as some servers do.
    let upstream = Upstream::start(|request| async move {
        if request.body["model"] == "m-denied" {
            let auth = request.headers["authorization"]
                .to_str()
                .unwrap()
                .to_string();
            let body = json!({"error": {"message": format!("Incorrect API key provided: {auth}")}});
            let mut response = axum::Json(body).into_response();
            *response.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
            return response;
        }
        axum::Json(completion("logged")).into_response()
    })
    .await;
    let store_dir = tempfile::tempdir().unwrap();
    let config = TempFile::new(
        "logs.toml",
        &format!(
            r#"
[[providers]]
name = "mock"
kind = "mock"

[[providers]]
name = "up"
kind = "openai"
base_url = "{}"
api_key_env = "OPENAI_API_KEY"

[[models]]
id = "mock/echo"
[[models]]
id = "mock/error-500"
[[models]]
id = "up/m"
upstream = "m-upstream"
[[models]]
id = "up/denied"
upstream = "m-denied"

[store]
path = "{}"
"#,
            upstream.base_url,
            store_dir.path().join("sec.db").display()
        ),
    );
    let stdout = TempFile::new("logs.stdout", "");
    let stderr = TempFile::new("logs.stderr", "");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut child = Running(
        gateway_command()
            .arg("serve")
            .arg("--config")
            .arg(&config.0)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("MUME_LOG_FORMAT", "json")
            .env("MUME_LOG", "trace")
            .env("OPENAI_API_KEY", CANARY)
            .env("MUME_ADMIN_KEY", ADMIN)
            .stdout(fs::File::create(&stdout.0).unwrap())
            .stderr(fs::File::create(&stderr.0).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        if let Ok(r) = anonymous().get(format!("{base}/health")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(child.0.try_wait().unwrap().is_none(), "the gateway exited");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the gateway never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // First start: the starter key is shown once on stderr.
    let banner = fs::read_to_string(&stderr.0).unwrap();
    let starter = banner
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("sk-mume-"))
        .unwrap_or_else(|| panic!("no starter key on stderr:\n{banner}"))
        .to_string();
    let created: Value = anonymous()
        .post(format!("{base}/api/v1/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "second", "credits": "1.00"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second = created["key"]
        .as_str()
        .expect("the new key, once")
        .to_string();

    let chat = |model: &str, stream: bool| {
        anonymous()
            .post(format!("{base}/api/v1/chat/completions"))
            .bearer_auth(&starter)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi there"}], "stream": stream}))
            .send()
    };
    let mut expected = Vec::new();
    let ok = chat("up/m", false).await.unwrap();
    let ok_id = request_id(ok.headers());
    assert_eq!(ok.status(), 200);
    ok.bytes().await.unwrap();
    for (model, stream, status) in [
        ("mock/echo", true, 200),
        ("nope/x", false, 400),
        ("mock/error-500", false, 500),
        ("up/denied", false, 503),
        ("up/denied", true, 503),
    ] {
        let response = chat(model, stream).await.unwrap();
        assert_eq!(response.status(), status, "{model}");
        let id = request_id(response.headers());
        let body = response.text().await.unwrap();
        assert!(!body.contains(CANARY), "the key reached a client: {body}");
        expected.push((id, status));
    }
    // Wrong credentials of every kind, on user and admin routes.
    let mut typo = second.clone();
    typo.replace_range(20..21, if &second[20..21] == "a" { "b" } else { "a" });
    let attempts = [
        ("/api/v1/chat/completions", typo.as_str(), 401),
        ("/api/v1/chat/completions", ADMIN, 401),
        ("/api/v1/keys", second.as_str(), 403),
        ("/api/v1/keys", "mume-admin-WRONG-987654321", 401),
        ("/api/v1/key", second.as_str(), 200),
    ];
    for (path, token, status) in attempts {
        let response = anonymous()
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let id = request_id(response.headers());
        let got = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(got, status, "{path}: {body}");
        for secret in [CANARY, ADMIN, &starter, &second, &typo] {
            assert!(
                leaked(secret, &body).is_empty(),
                "{path} echoed a secret: {body}"
            );
        }
        expected.push((id, got));
    }
    let missing = anonymous()
        .get(format!("{base}/nope"))
        .bearer_auth(&starter)
        .send()
        .await
        .unwrap();
    expected.push((request_id(missing.headers()), 404));

    // Wait until every access line is written, then stop the process.
    let wait = Instant::now();
    while !expected
        .iter()
        .all(|(id, _)| fs::read_to_string(&stdout.0).unwrap().contains(id.as_str()))
    {
        assert!(
            wait.elapsed() < Duration::from_secs(10),
            "access lines missing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(child);

    let out = fs::read_to_string(&stdout.0).unwrap();
    let err = fs::read_to_string(&stderr.0).unwrap();
    // The banner is the one place the starter key is shown; nothing else
    // on stderr or in the log may hold a run of any secret.
    let err_rest = err.replace(&starter, "");
    let mut stored = String::new();
    for entry in fs::read_dir(store_dir.path()).unwrap() {
        stored.push_str(&String::from_utf8_lossy(
            &fs::read(entry.unwrap().path()).unwrap(),
        ));
    }
    assert!(!stored.is_empty(), "the store was written");
    for secret in [CANARY, ADMIN, &starter, &second, &typo] {
        for (place, text) in [("log", &out), ("stderr", &err_rest), ("store", &stored)] {
            let runs = leaked(secret, text);
            assert!(runs.is_empty(), "{place} holds part of a secret: {runs:?}");
        }
    }

    let lines: Vec<Value> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access = |id: &str| -> Value {
        lines
            .iter()
            .find(|l| l["target"] == "mume::access" && l["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}:\n{out}"))
            .clone()
    };
    let line = access(&ok_id);
    assert_eq!(line["model"], "up/m", "{line}");
    assert_eq!(line["provider"], "up", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["path"], "/api/v1/chat/completions", "{line}");
    assert!(
        line["latency_ms"].as_f64().is_some_and(|l| l >= 0.0),
        "{line}"
    );
    for (id, status) in &expected {
        let line = access(id);
        assert_eq!(line["status"], *status, "{line}");
        assert!(line["latency_ms"].is_number(), "{line}");
    }
}
