//! `livecomment`: serve the live-comment service on a chosen runtime,
//! mint tokens, or run the runtime comparison.
//!
//! This binary is the only place that installs a `tracing` subscriber,
//! reads the environment and handles signals; the crates it drives
//! do none of that.

mod secret;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use livecomment_core::auth::{self, AuthConfig, Authenticator, Claims, KeySource};
use livecomment_core::{Config, Runtime, RuntimeOptions, Service};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "livecomment",
    version,
    about = "Live comments on five schedulers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Print a signed token for posting.
    Token(TokenArgs),
    /// Compare the runtimes under load: starts `livecomment serve` for
    /// each one and writes results.json, results.md and charts.
    Bench(livecomment_loadgen::BenchArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RuntimeName {
    Tokio,
    May,
    Glommio,
    Mio,
    Threads,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum JwtAlg {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
    #[value(name = "EdDSA")]
    EdDsa,
}

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[derive(Args)]
struct SecretArgs {
    /// HS256 secret; when absent, the data directory's `jwt-secret`.
    #[arg(long, env = "LIVECOMMENT_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Where the generated secret lives.
    #[arg(long, default_value = "./livecomment-data")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, value_enum, default_value = "tokio")]
    runtime: RuntimeName,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Worker threads, executors or event loops (default: the CPUs).
    #[arg(long)]
    workers: Option<usize>,
    #[command(flatten)]
    secret: SecretArgs,
    #[arg(long, value_enum, default_value = "HS256")]
    jwt_alg: JwtAlg,
    /// PEM public key, for RS256, ES256 and EdDSA.
    #[arg(long)]
    jwt_public_key: Option<PathBuf>,
    #[arg(long)]
    jwt_audience: Option<String>,
    #[arg(long)]
    jwt_issuer: Option<String>,
    /// Clock leeway for exp/nbf, at most 60s.
    #[arg(long, value_parser = duration, default_value = "0s")]
    jwt_leeway: Duration,
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    #[arg(long, default_value_t = 4096)]
    max_body: usize,
    #[arg(long, default_value_t = 8192)]
    max_head: usize,
    #[arg(long, default_value_t = 64)]
    max_headers: usize,
    #[arg(long, value_parser = duration, default_value = "10s")]
    head_timeout: Duration,
    #[arg(long, value_parser = duration, default_value = "15s")]
    keepalive: Duration,
    /// Comments retained per stream.
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// A viewer's pending bytes before it is evicted.
    #[arg(long, default_value_t = 1 << 20)]
    viewer_queue: usize,
    #[arg(long, default_value_t = 5.0)]
    rate_per_sec: f64,
    #[arg(long, default_value_t = 10.0)]
    rate_burst: f64,
    #[arg(long, default_value_t = 4096)]
    backlog: u32,
    /// Stack size in bytes of a coroutine (may) or connection thread
    /// (threads).
    #[arg(long)]
    stack_size: Option<usize>,
}

#[derive(Args)]
struct TokenArgs {
    #[arg(long)]
    sub: String,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    role: Option<String>,
    #[arg(long, value_parser = duration, default_value = "1h")]
    ttl: Duration,
    #[command(flatten)]
    secret: SecretArgs,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::Bench(args) => {
            let exe = std::env::current_exe().context("locating the livecomment binary")?;
            livecomment_loadgen::run(args, &exe)
        }
    }
}

fn token(args: TokenArgs) -> Result<()> {
    let secret = secret::for_token(args.secret.jwt_secret, &args.secret.data_dir)?;
    let claims = Claims {
        sub: args.sub,
        exp: auth::unix_now() + args.ttl.as_secs(),
        name: args.name,
        role: args.role,
    };
    println!("{}", auth::mint_hs256(&secret, &claims)?);
    Ok(())
}

fn serve(args: ServeArgs) -> Result<()> {
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let options = RuntimeOptions {
        workers,
        backlog: args.backlog,
        stack_size: args.stack_size,
    };
    let auth = Authenticator::new(&auth_config(&args)?)?;
    let config = Config {
        max_connections: max_connections(args.runtime, args.max_connections, &options),
        max_body: args.max_body,
        max_head: args.max_head,
        max_headers: args.max_headers,
        head_timeout: args.head_timeout,
        keepalive: args.keepalive,
        history: args.history.max(1),
        viewer_queue: args.viewer_queue,
        rate_per_sec: args.rate_per_sec,
        rate_burst: args.rate_burst,
    };
    let runtime_name = runtime_name(args.runtime);
    let service = Arc::new(Service::new(config, auth, runtime_name));

    let listener = livecomment_core::net::bind(args.listen, args.backlog)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    announce(addr, runtime_name, workers)?;
    spawn_signal_handler(service.clone())?;

    match args.runtime {
        RuntimeName::Tokio => livecomment_tokio::Tokio::run(service, listener, &options)?,
        RuntimeName::May => livecomment_may::May::run(service, listener, &options)?,
        RuntimeName::Glommio => livecomment_glommio::Glommio::run(service, listener, &options)?,
        RuntimeName::Mio => livecomment_mio::Mio::run(service, listener, &options)?,
        RuntimeName::Threads => livecomment_threads::Threads::run(service, listener, &options)?,
    }
    Ok(())
}

/// `--max-connections`, lowered to what the runtime can hold on this
/// machine if that is less (threads: see `livecomment_threads::budget`).
fn max_connections(runtime: RuntimeName, configured: usize, options: &RuntimeOptions) -> usize {
    let limit = match runtime {
        RuntimeName::Tokio => livecomment_tokio::Tokio::connection_limit(options),
        RuntimeName::May => livecomment_may::May::connection_limit(options),
        RuntimeName::Glommio => livecomment_glommio::Glommio::connection_limit(options),
        RuntimeName::Mio => livecomment_mio::Mio::connection_limit(options),
        RuntimeName::Threads => livecomment_threads::Threads::connection_limit(options),
    };
    match limit {
        Some(limit) if limit.max < configured => {
            tracing::warn!(
                configured,
                lowered_to = limit.max,
                reason = %limit.reason,
                "--max-connections is more than this runtime can hold on this machine: lowered"
            );
            limit.max
        }
        _ => configured,
    }
}

fn runtime_name(runtime: RuntimeName) -> &'static str {
    match runtime {
        RuntimeName::Tokio => livecomment_tokio::Tokio::NAME,
        RuntimeName::May => livecomment_may::May::NAME,
        RuntimeName::Glommio => livecomment_glommio::Glommio::NAME,
        RuntimeName::Mio => livecomment_mio::Mio::NAME,
        RuntimeName::Threads => livecomment_threads::Threads::NAME,
    }
}

fn auth_config(args: &ServeArgs) -> Result<AuthConfig> {
    use jsonwebtoken::Algorithm;
    let key = match args.jwt_alg {
        JwtAlg::Hs256 => KeySource::Secret(secret::for_serve(
            args.secret.jwt_secret.clone(),
            &args.secret.data_dir,
        )?),
        alg => {
            let path = args
                .jwt_public_key
                .as_ref()
                .context("--jwt-alg other than HS256 needs --jwt-public-key FILE")?;
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the public key {}", path.display()))?;
            let alg = match alg {
                JwtAlg::Rs256 => Algorithm::RS256,
                JwtAlg::Es256 => Algorithm::ES256,
                _ => Algorithm::EdDSA,
            };
            KeySource::PublicKeyPem { alg, pem }
        }
    };
    Ok(AuthConfig {
        key,
        audience: args.jwt_audience.clone(),
        issuer: args.jwt_issuer.clone(),
        leeway: args.jwt_leeway,
    })
}

/// Prints the readiness line on stdout (tests and tools wait for it)
/// and the how-to on stderr.
fn announce(addr: SocketAddr, runtime: &str, workers: usize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "livecomment listening on http://{addr}")?;
    out.flush()?;
    tracing::info!(%addr, runtime, workers, "listening");
    tracing::info!("get a token to post with: livecomment token --sub alice");
    Ok(())
}

/// On SIGINT or SIGTERM: drain, then exit 0 once every connection has
/// closed, or after a grace period, whichever comes first, always
/// within 5 s.
fn spawn_signal_handler(service: Arc<Service>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(signal, "shutting down: draining connections");
                service.begin_shutdown();
                let give_up = Instant::now() + Duration::from_secs(3);
                while service.metrics().connections() > 0 && Instant::now() < give_up {
                    std::thread::sleep(Duration::from_millis(20));
                }
                tracing::info!(open = service.metrics().connections(), "exiting");
                std::process::exit(0);
            }
        })?;
    Ok(())
}
