//! Command-line interface (clap structs only).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "mume-gateway",
    version,
    about = "Self-hosted, OpenAI-compatible LLM gateway"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand, the gateway serves.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Validate a config file, print every problem, exit non-zero if any.
    CheckConfig(ConfigArg),
    /// Manage API keys directly in the store (no running gateway needed).
    Keys(KeysArgs),
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(subcommand)]
    pub action: KeysAction,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key and print it (only the key) on stdout, once.
    Create {
        #[arg(long)]
        name: String,
        /// Prepaid credit in USD, e.g. 5.00. Without it the key is unlimited.
        #[arg(long)]
        credits: Option<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u32>,
        /// Most requests in flight at once.
        #[arg(long)]
        max_concurrent: Option<u32>,
        /// Allowed model patterns, comma-separated (e.g. "openai/*,mock/echo").
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
    },
    /// List keys: id, name, label, balance, limits, state.
    List {
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Disable a key: its requests get 401 from then on.
    Disable { id: String },
    /// Enable a disabled key again.
    Enable { id: String },
    /// Add credit to a key (written to the ledger).
    Topup {
        id: String,
        /// USD to add, e.g. 10.00.
        #[arg(long)]
        credits: String,
    },
    /// Show a key's balance, spend and ledger.
    Usage { id: String },
}

#[derive(Debug, Args, Clone, Default)]
pub struct ConfigArg {
    /// Config file (TOML). Without it, the embedded default config is used.
    #[arg(long, env = "MUME_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Listen address, overriding server.listen.
    // Read as text and parsed only when serving: an unusable MUME_LISTEN
    // in the environment must not stop `check-config` or `keys`.
    #[arg(long, env = "MUME_LISTEN")]
    pub listen: Option<String>,
}
