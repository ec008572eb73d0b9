//! The gateway under test, in-process on a port-0 listener, built exactly
//! as `main` builds it but with an injected environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mume_gateway::accounts::keys::PlainKey;
use mume_gateway::accounts::KeySpec;
use mume_gateway::server::{serve, ServerOptions};
use mume_gateway::state::AppState;
use mume_gateway::store::{KeyRecord, NewKey, Store};
use mume_gateway::{app, config};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The environment variable the test provider reads its key from, and the
/// key (a canary: it must never show up in a response).
pub const UP_KEY_ENV: &str = "UP_KEY";
pub const UP_KEY: &str = "sk-up-canary-4f9a1c2e7b8d";

/// The unlimited key every test gateway starts with; `support::client()`
/// sends it by default.
pub fn test_key() -> PlainKey {
    PlainKey::from_parts("TestKey0", "abcdefghijklmnopqrstuvwxyz0123456")
}

pub struct TestGateway {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The gateway's store, for tests that look at money directly.
    pub store: Store,
    pub state: AppState,
    /// Holds the store's directory for as long as the gateway lives.
    _dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<()>>,
}

impl TestGateway {
    /// Starts a gateway from TOML text with an empty environment.
    pub async fn start(toml: &str) -> Self {
        Self::start_with_env(toml, &[]).await
    }

    /// Starts a gateway from `config` with the test provider's key set.
    pub async fn with(config: &GatewayConfig) -> Self {
        Self::start_with_env(&config.toml(), &[(UP_KEY_ENV, UP_KEY)]).await
    }

    /// Starts a gateway whose one provider `up` serves model `up/m`
    /// (upstream name `m-upstream`) from `base_url`, with default limits.
    pub async fn for_upstream(base_url: &str) -> Self {
        Self::with(&GatewayConfig::openai(base_url)).await
    }

    pub async fn start_with_env(toml: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = config::parse(toml, "test").unwrap_or_else(|e| panic!("test config: {e}"));
        if config.store.path.is_relative() {
            config.store.path = dir.path().join(&config.store.path);
        }
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (state, _warnings) = AppState::build(&config, &|name| env.get(name).cloned())
            .await
            .unwrap_or_else(|e| panic!("gateway state: {e}"));
        let store = state.accounts.store.clone();
        let key = test_key();
        store
            .keys
            .insert_key(NewKey {
                record: KeyRecord {
                    id: key.id().to_string(),
                    name: "tests".into(),
                    display: key.display(),
                    created_at: 0,
                    disabled: false,
                    expires_at: None,
                    balance: None,
                    limits: Default::default(),
                    models: Vec::new(),
                    metadata: serde_json::json!({}),
                },
                hash: key.hash(),
            })
            .await
            .expect("test key");
        let app_state = state.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let options = ServerOptions::from(&config.server);
        let flag = state.shutting_down.clone();
        let settlements = state.gateway.billing.settlements();
        let router = app::router(state);
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
            flag.store(true, Ordering::Relaxed);
        };
        let served = tokio::spawn(serve(listener, router, options, settlements, shutdown));
        Self {
            addr,
            base: format!("http://{addr}"),
            store,
            state: app_state,
            _dir: dir,
            shutdown: Some(tx),
            served: Some(served),
        }
    }

    /// Creates a key through the same code the admin API uses; returns
    /// its id and plaintext.
    pub async fn key(&self, spec: KeySpec) -> (String, String) {
        let (record, plain) = self
            .state
            .accounts
            .create_key(spec)
            .await
            .expect("create a key");
        (record.id, plain.reveal().to_string())
    }

    /// POSTs `body` to the chat route with `key`.
    /// A key with `credits` nano-USD and no other limit: (id, plaintext).
    pub async fn key_with_credit(&self, credits: i64) -> (String, String) {
        self.key(KeySpec {
            name: "with-credit".into(),
            credits: Some(credits),
            ..Default::default()
        })
        .await
    }

    pub async fn chat_as(&self, key: &str, body: &serde_json::Value) -> reqwest::Response {
        crate::support::keyed(key)
            .post(self.url("/api/v1/chat/completions"))
            .json(body)
            .send()
            .await
            .expect("request reaches the gateway")
    }

    /// A key's available balance (nano-USD).
    pub async fn balance(&self, id: &str) -> i64 {
        let key = self.store.keys.key_by_id(id).await.unwrap().expect("key");
        key.balance.expect("a limited key")
    }

    /// Holds currently open, across keys.
    pub async fn active_holds(&self) -> u64 {
        self.store.credits.totals().await.unwrap().active_holds
    }

    /// Waits (bounded) until no hold is open.
    pub async fn holds_drain(&self) {
        let started = std::time::Instant::now();
        while self.active_holds().await > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "holds still open after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The sum of a key's ledger amounts (equals its balance change).
    pub async fn ledger_sum(&self, id: &str) -> i64 {
        let rows = self.store.credits.ledger(id).await.unwrap();
        rows.iter().map(|r| r.amount).sum()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Begins graceful shutdown (what SIGTERM does in the binary).
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Whether `serve` returned within `within`.
    pub async fn stopped_within(&mut self, within: Duration) -> bool {
        let Some(served) = self.served.as_mut() else {
            return true;
        };
        match tokio::time::timeout(within, served).await {
            Ok(joined) => {
                joined.expect("serve does not panic");
                self.served = None;
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(served) = self.served.take() {
            served.abort();
        }
    }
}

/// A gateway config with one OpenAI-compatible provider `up` and one model
/// `up/m` (upstream name `m-upstream`), rendered to TOML. Keys can be
/// overridden per test.
#[derive(Clone)]
pub struct GatewayConfig {
    server: toml::Table,
    provider: toml::Table,
    model: toml::Table,
    routing: toml::Table,
    store: toml::Table,
}

impl GatewayConfig {
    pub fn openai(base_url: &str) -> Self {
        let mut server = toml::Table::new();
        server.insert("listen".into(), "127.0.0.1:0".into());
        let mut provider = toml::Table::new();
        for (k, v) in [
            ("name", "up"),
            ("kind", "openai"),
            ("base_url", base_url),
            ("api_key_env", UP_KEY_ENV),
            ("connect_timeout", "2s"),
            ("first_byte_timeout", "10s"),
            ("idle_timeout", "10s"),
            ("total_timeout", "10s"),
        ] {
            provider.insert(k.into(), v.into());
        }
        // One attempt and a circuit that never opens: tests of other
        // features see each upstream answer as it is (tests/it/routing.rs
        // covers retries and circuits).
        provider.insert("max_attempts".into(), 1.into());
        let mut routing = toml::Table::new();
        routing.insert("circuit_failures".into(), 1000.into());
        let mut model = toml::Table::new();
        model.insert("id".into(), "up/m".into());
        model.insert("upstream".into(), "m-upstream".into());
        Self {
            server,
            provider,
            model,
            routing,
            store: toml::Table::new(),
        }
    }

    /// Sets a `[store]` key.
    pub fn store(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.store.insert(key.into(), value.into());
        self
    }

    /// Sets a key of the model table (`up/m`), e.g. its prices.
    pub fn model(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.model.insert(key.into(), value.into());
        self
    }

    /// Sets a `[server]` key.
    pub fn server(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.server.insert(key.into(), value.into());
        self
    }

    /// Sets a key of the provider table.
    pub fn provider(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.provider.insert(key.into(), value.into());
        self
    }

    pub fn toml(&self) -> String {
        let model = self.model.clone();
        let mut root = toml::Table::new();
        root.insert("server".into(), self.server.clone().into());
        root.insert(
            "providers".into(),
            toml::Value::Array(vec![self.provider.clone().into()]),
        );
        root.insert("models".into(), toml::Value::Array(vec![model.into()]));
        root.insert("routing".into(), self.routing.clone().into());
        if !self.store.is_empty() {
            root.insert("store".into(), self.store.clone().into());
        }
        toml::to_string(&root).expect("config renders")
    }
}
