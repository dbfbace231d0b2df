//! `lc-bench`: the comparison harness on its own, for working on the
//! harness without the server's `bench` subcommand. Same flags as
//! `livecomment bench`, plus `--server-exe` (default: `livecomment` next
//! to this binary).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use livecomment_loadgen::BenchArgs;

#[derive(Parser)]
#[command(name = "lc-bench", about = "Compare livecomment runtimes under load")]
struct Cli {
    /// The `livecomment` binary to run as `serve`.
    #[arg(long, value_name = "PATH")]
    server_exe: Option<PathBuf>,

    #[command(flatten)]
    bench: BenchArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let server_exe = match cli.server_exe {
        Some(path) => path,
        None => std::env::current_exe()
            .context("locating lc-bench")?
            .with_file_name("livecomment"),
    };
    livecomment_loadgen::run(cli.bench, &server_exe)
}
