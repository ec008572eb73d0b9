//! Application state: everything handlers share, built once from config.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::accounts::keys::PlainKey;
use crate::accounts::{Accounts, AdminSecret, KeySpec};
use crate::billing::{sweep_forever, Billing};
use crate::config::{Config, StoreConfig};
use crate::gateway::catalog::Catalog;
use crate::gateway::mcp::run::McpSetup;
use crate::gateway::responses::purge_forever;
use crate::gateway::router::Router;
use crate::gateway::{Gateway, GatewayParts};
use crate::middleware::limits::HeaderLimits;
use crate::providers::{ProviderError, ProviderWarning, Registry};
use crate::ratelimit::redis::RedisLimiter;
use crate::ratelimit::{MemoryLimiter, RateLimiter};
use crate::search::Searcher;
use crate::store::{Store, StoreError, StoreOptions};

/// The environment variable holding the admin secret (never the config file).
pub const ADMIN_KEY_ENV: &str = "MUME_ADMIN_KEY";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Limiter(String),
}

#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub accounts: Arc<Accounts>,
    pub body_limit: usize,
    pub header_limits: HeaderLimits,
    /// Set when shutdown begins; `/ready` then answers 503.
    pub shutting_down: Arc<AtomicBool>,
    store_config: Arc<StoreConfig>,
}

/// The variable that overrides `store.url`.
pub const DATABASE_URL_ENV: &str = "MUME_DATABASE_URL";
/// The variable that overrides `rate_limit.url`.
pub const REDIS_URL_ENV: &str = "MUME_REDIS_URL";

/// Opens the configured store (creating and migrating it if needed);
/// `MUME_DATABASE_URL`, looked up with `env`, overrides `store.url`.
pub async fn open_store(
    config: &StoreConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Store, StoreError> {
    let url = env(DATABASE_URL_ENV)
        .filter(|u| !u.is_empty())
        .or_else(|| config.url.clone());
    Store::open(&StoreOptions {
        url,
        path: config.path.clone(),
        busy_timeout: config.busy_timeout,
    })
    .await
}

impl AppState {
    /// `env` looks up environment variables; tests pass their own.
    pub async fn build(
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<ProviderWarning>), BuildError> {
        crate::install_tls_provider();
        crate::metrics::install();
        let (providers, warnings) = Registry::build(config, env)?;
        let store = open_store(&config.store, env).await?;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let server = &config.server;
        let limiter: Arc<dyn RateLimiter> = match env(REDIS_URL_ENV)
            .filter(|u| !u.is_empty())
            .or_else(|| config.rate_limit.url.clone())
        {
            Some(url) => RedisLimiter::start(
                &url,
                &config.rate_limit.key_prefix,
                config.rate_limit.instances,
            )
            .await
            .map_err(BuildError::Limiter)?,
            None => Arc::new(MemoryLimiter::default()),
        };
        let billing = Arc::new(Billing::new(
            store.clone(),
            limiter.clone(),
            config.store.hold_ttl,
        ));
        let gateway = Gateway::new(GatewayParts {
            catalog: Catalog::new(&config.models, created),
            providers,
            router: Arc::new(Router::new(config.routing)),
            retry: config
                .providers
                .iter()
                .map(|p| (p.name.clone(), p.retry))
                .collect(),
            limiter,
            billing,
            store: store.clone(),
            keepalive: server.keepalive_interval,
            max_stream_duration: server.max_stream_duration,
            request_limit: crate::config::longest_request(server, &config.providers),
            responses_retention: config.store.responses_retention,
            searcher: config
                .web_search
                .as_ref()
                .map(|w| Arc::new(Searcher::build(w, env))),
            mcp: Arc::new(McpSetup::build(&config.mcp, env)),
        });
        let admin = env(ADMIN_KEY_ENV)
            .filter(|s| !s.is_empty())
            .map(|s| AdminSecret::new(&s));
        let state = Self {
            gateway,
            accounts: Arc::new(Accounts::new(store, admin)),
            body_limit: server.body_limit_bytes,
            header_limits: HeaderLimits {
                max_headers: server.max_headers,
                max_bytes: server.max_header_bytes,
            },
            shutting_down: Arc::default(),
            store_config: Arc::new(config.store.clone()),
        };
        Ok((state, warnings))
    }

    /// Starts the background sweeper of expired holds (call inside the
    /// runtime). It runs once at once, then every `sweep_interval`.
    /// The same task purges stored responses past their retention.
    pub fn start_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let store = self.accounts.store.clone();
        let every = self.store_config.sweep_interval;
        let retention = self.store_config.responses_retention;
        tokio::spawn(async move {
            tokio::join!(
                sweep_forever(store.clone(), every),
                purge_forever(store.responses, retention, every)
            );
        })
    }

    /// On first start (no key in the store), creates the starter key.
    /// Returns it so the caller can show it once.
    pub async fn starter_key(
        &self,
        credit: crate::config::NanoUsd,
    ) -> Result<Option<PlainKey>, StoreError> {
        if self.accounts.store.keys.count_keys().await? > 0 {
            return Ok(None);
        }
        let spec = KeySpec {
            name: "starter".into(),
            credits: Some(credit),
            ..Default::default()
        };
        match self.accounts.create_key(spec).await {
            Ok((_, plain)) => Ok(Some(plain)),
            Err(e) => Err(StoreError::Unavailable(e.message)),
        }
    }
}
