//! Command-line interface (clap structs only).

use std::net::SocketAddr;
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
}

#[derive(Debug, Args, Clone, Default)]
pub struct ConfigArg {
    /// Config file (TOML). Without it, the embedded default config is used.
    #[arg(long, env = "MUME_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Listen address, overriding server.listen.
    #[arg(long, env = "MUME_LISTEN")]
    pub listen: Option<SocketAddr>,
}
