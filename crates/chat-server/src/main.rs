//! `chat-server`: serves the chat page, `/ws`, `/echo`, `/healthz` and
//! `/metrics`. Run `chat-server --help` for the flags.

use std::process::ExitCode;

use chat_server::{Args, Server};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than the system's allocator. With glibc's (one arena),
/// room fan-out waited on malloc's lock and gave memory back to the kernel
/// after batches of frames, each time flushing every core's TLB: see
/// BENCHMARKS.md, "The server's allocator".
#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(serve()),
        Err(error) => {
            eprintln!("chat-server: cannot start the runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> ExitCode {
    let args = Args::parse();
    if let Some(user) = &args.issue_token {
        let issued = args
            .auth()
            .map_err(|error| error.to_string())
            .and_then(|auth| auth.issue(user, args.token_ttl).map_err(|e| e.to_string()));
        return match issued {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("chat-server: {error}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    #[cfg(unix)]
    purge_in_background();
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("chat-server: cannot listen for signals: {error}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::bind(&args).await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("chat-server: {error}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if server.is_tls() { "https" } else { "http" };
    match server.local_addr() {
        Ok(addr) => println!("chat-server listening on {scheme}://{addr}/"),
        Err(error) => {
            eprintln!("chat-server: {error}");
            return ExitCode::FAILURE;
        }
    }
    server.run(signals.shutdown()).await;
    tracing::info!("bye");
    ExitCode::SUCCESS
}

/// Lets jemalloc give freed memory back to the system from a thread of its
/// own, within its decay time (10 s), even while the server is idle.
/// Without it, memory freed by a burst (history trimmed to its budget, say)
/// is given back only as later allocations happen.
#[cfg(unix)]
fn purge_in_background() {
    if let Err(error) = tikv_jemalloc_ctl::background_thread::write(true) {
        // Where jemalloc has no background threads (macOS), memory is given
        // back as the server allocates.
        tracing::debug!(%error, "jemalloc purges without a background thread");
    }
}

/// SIGINT and SIGTERM listeners, installed before the server announces
/// itself so that no early signal is missed.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }

    /// Completes on the first signal; a second one exits at once.
    async fn shutdown(mut self) {
        self.next().await;
        tracing::info!("signal received; shutting down (send another to exit now)");
        tokio::spawn(async move {
            self.next().await;
            eprintln!("chat-server: second signal; exiting now");
            std::process::exit(130);
        });
    }
}
