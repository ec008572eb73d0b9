//! The gateway under test, in-process on a port-0 listener, built exactly
//! as `main` builds it but with an injected environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mume_gateway::server::{serve, ServerOptions};
use mume_gateway::state::AppState;
use mume_gateway::{app, config};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The environment variable the test provider reads its key from, and the
/// key (a canary: it must never show up in a response).
pub const UP_KEY_ENV: &str = "UP_KEY";
pub const UP_KEY: &str = "sk-up-canary-4f9a1c2e7b8d";

pub struct TestGateway {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub base: String,
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
        let config = config::parse(toml, "test").unwrap_or_else(|e| panic!("test config: {e}"));
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (state, _warnings) = AppState::build(&config, &|name| env.get(name).cloned())
            .unwrap_or_else(|e| panic!("gateway state: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let options = ServerOptions::from(&config.server);
        let flag = state.shutting_down.clone();
        let router = app::router(state);
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
            flag.store(true, Ordering::Relaxed);
        };
        let served = tokio::spawn(serve(listener, router, options, shutdown));
        Self {
            addr,
            base: format!("http://{addr}"),
            shutdown: Some(tx),
            served: Some(served),
        }
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
        Self { server, provider }
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
        let mut model = toml::Table::new();
        model.insert("id".into(), "up/m".into());
        model.insert("upstream".into(), "m-upstream".into());
        let mut root = toml::Table::new();
        root.insert("server".into(), self.server.clone().into());
        root.insert(
            "providers".into(),
            toml::Value::Array(vec![self.provider.clone().into()]),
        );
        root.insert("models".into(), toml::Value::Array(vec![model.into()]));
        toml::to_string(&root).expect("config renders")
    }
}
