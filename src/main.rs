//! Entry point: parse the CLI and dispatch. All logic lives in the library.

use std::process::ExitCode;
use std::sync::atomic::Ordering;

use clap::Parser;
use mume_gateway::cli::{Cli, Command, ConfigArg, KeysArgs, ServeArgs};
use mume_gateway::providers::Registry;
use mume_gateway::server::{serve, shutdown_signal, ServerOptions};
use mume_gateway::state::AppState;
use mume_gateway::{app, config, keys_cli, telemetry};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig(args)) => check_config(&args),
        Some(Command::Serve(args)) => run(args),
        Some(Command::Keys(args)) => keys(args),
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
    match Registry::build(&config, &env) {
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

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn keys(args: KeysArgs) -> ExitCode {
    let config = match config::load(args.config.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(keys_cli::run(&config, args.action)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: ServeArgs) -> ExitCode {
    let _log = telemetry::init();
    let mut config = match config::load(args.config.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(listen) = args.listen {
        match listen.parse() {
            Ok(addr) => config.server.listen = addr,
            Err(_) => {
                eprintln!("--listen / MUME_LISTEN: {listen:?} is not an address to listen on; give an IP address and a port, such as 127.0.0.1:8080");
                return ExitCode::FAILURE;
            }
        }
    }
    // The first of the serving threads (server.rs): single-threaded, like
    // the others; background work (the sweeper, checkpoints) runs here too.
    let runtime = match tokio::runtime::Builder::new_current_thread()
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
        let (state, warnings) = match AppState::build(&config, &env).await {
            Ok(built) => built,
            Err(e) => {
                eprintln!("{}: {e}", config.source);
                return ExitCode::FAILURE;
            }
        };
        for w in warnings {
            tracing::warn!("{}", w.0);
        }
        match state.starter_key(config.keys.starter_credit).await {
            // Shown once, on stderr and not through the log, and never again.
            Ok(Some(key)) => eprintln!(
                "\nFirst start: created a starter API key with {} USD of credit (shown only now):\n\n    {}\n\nUse it as the API key, e.g. export MUME_API_KEY={} and base_url http://{}/api/v1\n",
                config::usd_string(config.keys.starter_credit),
                key.reveal(),
                key.reveal(),
                config.server.listen,
            ),
            Ok(None) => {}
            Err(e) => {
                eprintln!("{}: {e}", config.store.path.display());
                return ExitCode::FAILURE;
            }
        }
        let listener = match tokio::net::TcpListener::bind(config.server.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {}: {e}", config.server.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(config = %config.source, models = config.models.len(), store = %config.store.path.display(), "mume-gateway listening on http://{addr}/api/v1");
        state.start_sweeper();
        let options = ServerOptions::from(&config.server);
        let flag = state.shutting_down.clone();
        let settlements = state.gateway.billing.settlements();
        let router = app::router(state);
        let shutdown = async move {
            shutdown_signal().await;
            flag.store(true, Ordering::Relaxed);
        };
        serve(listener, router, options, settlements, shutdown).await;
        ExitCode::SUCCESS
    })
}
