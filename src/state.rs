//! Application state: everything handlers share, built once from config.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::gateway::catalog::Catalog;
use crate::gateway::Gateway;
use crate::middleware::limits::HeaderLimits;
use crate::providers::{ProviderError, ProviderWarning, Registry};

#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub body_limit: usize,
    pub header_limits: HeaderLimits,
    /// Set when shutdown begins; `/ready` then answers 503.
    pub shutting_down: Arc<AtomicBool>,
}

impl AppState {
    /// `env` looks up environment variables; tests pass their own.
    pub fn build(
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<ProviderWarning>), ProviderError> {
        let (providers, warnings) = Registry::build(config, env)?;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let server = &config.server;
        let gateway = Gateway::new(
            Catalog::new(&config.models, created),
            providers,
            server.keepalive_interval,
            server.max_stream_duration,
        );
        let state = Self {
            gateway: Arc::new(gateway),
            body_limit: server.body_limit_bytes,
            header_limits: HeaderLimits {
                max_headers: server.max_headers,
                max_bytes: server.max_header_bytes,
            },
            shutting_down: Arc::default(),
        };
        Ok((state, warnings))
    }
}
