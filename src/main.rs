//! The `keygate` command: parses arguments, loads the config, installs logging and runs; or, for
//! `keygate keys …`, `keygate workspaces …` and `keygate audit`, hands over to [`cli`], the
//! admin API client.

mod cli;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keygate::config::Config;

// Many small, short-lived allocations per request: mimalloc serves them from thread-local pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for an unusable config (sysexits `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;
/// Exit code for failures at start or while running (sysexits `EX_SOFTWARE`).
const EXIT_RUNTIME: u8 = 70;

#[derive(Parser)]
#[command(name = "keygate", version, about = "API-key authentication gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The YAML config file.
        #[arg(
            long,
            short,
            env = "KEYGATE_CONFIG",
            default_value = "config/keygate.yaml"
        )]
        config: PathBuf,
        /// Proxy worker threads, each with its own event loop and listener socket (default: one
        /// per CPU core). Set it to match other proxies' worker counts when comparing them.
        #[arg(long, env = "KEYGATE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
        worker_threads: Option<u16>,
    },
    /// Work with config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    #[command(flatten)]
    Admin(cli::AdminCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a config file; prints every problem and exits 64 if there is one.
    Check {
        /// The YAML config file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match Config::load(&file) {
            Ok(config) => {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                let warnings = config.warnings_in(&text);
                for w in &warnings {
                    eprintln!("warning: {w}");
                }
                match warnings.len() {
                    0 => eprintln!("{}: ok", file.display()),
                    n => eprintln!(
                        "{}: ok, with {n} warning{}",
                        file.display(),
                        if n == 1 { "" } else { "s" }
                    ),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Serve {
            config,
            worker_threads,
        } => serve(&config, worker_threads),
        Command::Admin(command) => cli::run(command),
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: the default soft limit (often 1024) runs
/// out long before `limits.max_connections`, and an `accept` that fails for want of descriptors
/// stalls every client. Warns when even the hard limit is below what the connection caps need.
fn raise_nofile_limit(config: &Config) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            // Each proxied connection may hold one upstream connection too; both listeners have
            // their own cap; the store, files and the runtime need a few more.
            let cap = config.limits.max_connections.get() as u64;
            let needed = 3 * cap + 256;
            if soft < needed {
                tracing::warn!(
                    nofile = soft,
                    max_connections = cap,
                    "the file-descriptor limit is low for limits.max_connections; raise the hard \
                     limit (ulimit -Hn, LimitNOFILE=) or lower max_connections"
                );
            } else {
                tracing::debug!(nofile = soft, "file-descriptor limit");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the file-descriptor limit"),
    }
}

fn serve(path: &Path, worker_threads: Option<u16>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    keygate::telemetry::init(&config.log);
    raise_nofile_limit(&config);
    // One worker: a current-thread runtime does all the work, without the multi-thread
    // scheduler's cross-thread wake-ups. More: one current-thread runtime per worker thread
    // (`server::workers`), and this one for the control plane.
    let workers = match worker_threads {
        Some(n) => NonZeroUsize::new(usize::from(n)).unwrap_or(NonZeroUsize::MIN),
        None => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    runtime.block_on(async move {
        // First, before anything slow: SIGHUP's default action ends the process, and nginx
        // users press it out of habit. From here it reloads the config.
        let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot handle SIGHUP; reload with POST /v1/reload");
                None
            }
        };
        let listeners = match keygate::Listeners::bind_for_workers(&config, workers).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot bind");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        let shutdown = async {
            if let Err(e) = keygate::server::shutdown_signal().await {
                tracing::error!(error = %e, "cannot install signal handlers");
                std::future::pending::<()>().await;
            }
        };
        let app = match keygate::App::from_file(path).await {
            Ok(app) => app.with_proxy_workers(workers),
            Err(e) => {
                tracing::error!(error = %e, "keygate cannot start");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        let reloads = hangups.map(|mut hangups| {
            let reloader = app.reloader().clone();
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP received, reloading the config");
                    // The outcome is logged and counted by the reloader.
                    let _ = reloader.reload().await;
                }
            })
        });
        let served = app.serve(listeners, shutdown).await;
        if let Some(task) = reloads {
            task.abort();
        }
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "keygate stopped");
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    })
}
