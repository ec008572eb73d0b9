//! Entry point: parse the CLI and dispatch. All logic lives in the library.

use std::process::ExitCode;
use std::sync::atomic::Ordering;

use clap::Parser;
use mume_gateway::cli::{Cli, Command, ConfigArg, ServeArgs};
use mume_gateway::server::{serve, shutdown_signal, ServerOptions};
use mume_gateway::state::AppState;
use mume_gateway::{app, config, telemetry};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig(args)) => check_config(&args),
        Some(Command::Serve(args)) => run(args),
        None => run(cli.serve),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn check_config(args: &ConfigArg) -> ExitCode {
    let config = match config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match AppState::build(&config, &env) {
        Ok((_, warnings)) => {
            for w in warnings {
                println!("warning: {}", w.0);
            }
            println!(
                "{}: OK ({} providers, {} models)",
                config.source,
                config.providers.len(),
                config.models.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", config.source);
            ExitCode::FAILURE
        }
    }
}

fn run(args: ServeArgs) -> ExitCode {
    telemetry::init();
    let mut config = match config::load(args.config.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    let (state, warnings) = match AppState::build(&config, &env) {
        Ok(built) => built,
        Err(e) => {
            eprintln!("{}: {e}", config.source);
            return ExitCode::FAILURE;
        }
    };
    for w in warnings {
        tracing::warn!("{}", w.0);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.server.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {}: {e}", config.server.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(config = %config.source, models = config.models.len(), "mume-gateway listening on http://{addr}/api/v1");
        let options = ServerOptions::from(&config.server);
        let flag = state.shutting_down.clone();
        let router = app::router(state);
        let shutdown = async move {
            shutdown_signal().await;
            flag.store(true, Ordering::Relaxed);
        };
        serve(listener, router, options, shutdown).await;
        ExitCode::SUCCESS
    })
}
