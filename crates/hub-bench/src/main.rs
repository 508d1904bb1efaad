//! `hub-bench`: load for WebSocket broadcast servers on this machine. Run
//! `hub-bench --help`.

mod cli;

use std::error::Error as _;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser as _;
use hub_bench::{Bare, Broadcast, Error, Idle, Padding};

use crate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Broadcast(args) => {
            let c = args.common;
            let run = Broadcast::new(c.url)
                .also_urls(c.also)
                .clients(c.clients)
                .senders(args.senders)
                .groups(args.groups)
                .also_pids(args.also_pids)
                .messages(args.messages)
                .size(args.size)
                .padding(if args.prose {
                    Padding::Prose
                } else {
                    Padding::X
                })
                .rate(args.rate)
                .source_ips(c.source_ips)
                .server_pid(c.server_pid)
                .timeout(args.timeout)
                .handshake_timeout(c.handshake_timeout)
                .compression(c.compression)
                .server_no_context(c.server_no_context)
                .progress(!c.quiet)
                .run()
                .await;
            run.and_then(|report| {
                print!("{report}");
                save(c.json.as_deref(), |path| report.write_json(path))?;
                Ok(report.passed())
            })
        }
        Command::Idle(args) => {
            let c = args.common;
            let run = Idle::new(c.url)
                .also_urls(c.also)
                .clients(c.clients)
                .source_ips(c.source_ips)
                .server_pid(c.server_pid)
                .hold(args.hold)
                .handshake_timeout(c.handshake_timeout)
                .compression(c.compression)
                .server_no_context(c.server_no_context)
                .progress(!c.quiet)
                .run()
                .await;
            run.and_then(|report| {
                print!("{report}");
                save(c.json.as_deref(), |path| report.write_json(path))?;
                Ok(report.passed())
            })
        }
        Command::Bare(args) => {
            match Bare::bind(std::net::SocketAddr::new(args.host, args.port)).await {
                Ok(bare) => {
                    println!("listening on ws://{}/ws", bare.local_addr());
                    bare.serve().await;
                    Ok(true)
                }
                Err(error) => Err(error),
            }
        }
        Command::Plot(args) => match hub_bench::plot::draw(&args.results, &args.out) {
            Ok(written) => {
                for path in written {
                    println!("wrote {}", path.display());
                }
                Ok(true)
            }
            Err(error) => {
                eprintln!("hub-bench: {error}");
                return ExitCode::from(2);
            }
        },
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            let mut text = format!("hub-bench: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            if let Error::SenderConnect { source, .. } = &error {
                if let Some(advice) = source.advice() {
                    text.push_str(&format!(" ({advice})"));
                }
            }
            eprintln!("{text}");
            ExitCode::from(2)
        }
    }
}

fn save(path: Option<&Path>, write: impl FnOnce(&Path) -> Result<(), Error>) -> Result<(), Error> {
    path.map_or(Ok(()), write)
}
