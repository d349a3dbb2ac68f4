//! `convene`: the Convene command-line client.
//!
//! `convene stream` publishes a camera, a test pattern or a video file as H.264;
//! `convene receive` watches a meeting and reports what arrives;
//! `convene load` simulates many participants against a server and reports
//! connect times, loss, end-to-end latency and throughput; `convene token`
//! mints development tokens; `convene admin` talks to a node's admin API.

use clap::{Parser, Subcommand};

mod admin;
mod args;
mod audio;
mod e2ee;
mod file;
mod frame;
mod h264;
mod load;
mod media;
mod mic;
mod pattern;
mod receive;
mod record;
mod source;
mod stats;
mod stream;
mod token;

/// The Convene command-line client.
#[derive(Debug, Parser)]
#[command(name = "convene", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing syntax), e.g. `debug` or `convene_client=debug`.
    #[arg(
        long,
        env = "CONVENE_LOG",
        default_value = "warn,web_transport_quinn=error",
        global = true
    )]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a camera, a test pattern or a video file (Y4M, MP4) as H.264
    /// video, with sound from a tone, a microphone or the file, into a
    /// meeting. Reconnects when the server goes away.
    Stream(stream::StreamArgs),
    /// Watch a meeting: decode everyone's video and report frame rate,
    /// resolution, bitrate, loss and latency; optionally save pictures.
    Receive(receive::ReceiveArgs),
    /// Record a meeting, as a participant everyone sees: one MP4 file per
    /// participant and track kind (H.264, Opus), playable while written and
    /// after a crash; everyone's sound mixed; optionally a live HLS stream
    /// of one participant or of whoever speaks.
    Record(record::RecordArgs),
    /// Simulate participants (synthetic media, no codec cost) and measure
    /// connect time, loss, latency and throughput.
    Load(load::LoadArgs),
    /// Mint a development token (HS256) from a server's shared secret.
    Token(token::TokenArgs),
    /// Operate a server node through its admin API: list meetings, remove a
    /// participant, end a meeting, mint a token, show stats, start and stop a recorder.
    Admin(admin::AdminArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("convene: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Stream(args) => stream::run(args).await,
            Command::Receive(args) => receive::run(args).await,
            Command::Record(args) => record::run(args).await,
            Command::Load(args) => load::run(args).await,
            Command::Token(args) => token::run(args),
            Command::Admin(args) => admin::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("convene: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
