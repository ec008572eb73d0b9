//! How a call to a provider can fail, before the domain decides what the
//! client sees (`gateway::upstream_error`). Messages here never contain a
//! provider key: adapters build them from status, phase and upstream text.

use std::time::Duration;

use crate::gateway::error::GatewayError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The upstream answered with a non-success HTTP status.
    #[error("upstream answered {status}: {message}")]
    Upstream {
        status: u16,
        message: String,
        /// The upstream's own error code, passed on for 400s.
        code: Option<String>,
        param: Option<String>,
        retry_after: Option<Duration>,
    },
    /// Connection refused or reset, TLS failure, body cut short.
    #[error("connection failed: {0}")]
    Transport(String),
    /// No answer within the named phase's limit.
    #[error("timeout: {0}")]
    Timeout(String),
    /// The upstream sent something that is not a valid response or event.
    #[error("invalid response: {0}")]
    Decode(String),
    /// The upstream reported an error inside its stream.
    #[error("upstream stream error: {0}")]
    StreamError(String),
    /// The provider cannot be used as configured (e.g. its key variable is unset).
    #[error("{0}")]
    NotConfigured(String),
    /// The mock provider rehearsing one row of the error table exactly.
    #[error("rehearsal: {0}")]
    Rehearsal(GatewayError),
}
