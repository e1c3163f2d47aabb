//! The `tidemark` binary: `tidemark serve` runs a node.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tidemark::{config, node};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "tidemark", version, about = "A time-series database node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (standalone by default).
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A TOML configuration file.
    #[arg(long, env = "TIDEMARK_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (`node.data_dir`, default ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP listen address (`http.addr`, default 127.0.0.1:8000).
    #[arg(long)]
    http_addr: Option<String>,
    /// Shard cores (`node.shard_cores`, default all cores minus one).
    #[arg(long)]
    shard_cores: Option<usize>,
    /// Any setting, as `section.key=value` (repeatable), e.g.
    /// `--set wal.sync_mode=none`.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TIDEMARK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve(args) => {
            let overrides = config::Overrides {
                data_dir: args.data_dir,
                http_addr: args.http_addr,
                shard_cores: args.shard_cores,
                set: args.set,
            };
            let env = std::env::vars().filter(|(k, _)| k != "TIDEMARK_CONFIG");
            let config = config::Config::load(args.config.as_deref(), env, &overrides)?;
            config.validate()?;
            node::run(config)
        }
    }
}
