//! `convene token`: mints a development token (HS256 JWT, PROTOCOL.md
//! §11.3) from the same shared secret a server was given, for tests and
//! local use. Production tokens come from the operator's identity provider.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use convene_protocol::auth::{Claims, Grant};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// `convene token` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    /// The shared secret (at least 32 bytes); prefer the environment or --secret-file.
    #[arg(
        long,
        env = "CONVENE_AUTH_SECRET",
        hide_env_values = true,
        conflicts_with = "secret_file"
    )]
    secret: Option<String>,
    /// Read the secret from this file (surrounding whitespace ignored).
    #[arg(long, env = "CONVENE_AUTH_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// The meeting: an id, or a prefix ending in `*` (`*` alone: any meeting).
    #[arg(long)]
    meeting: String,
    /// The user id (`sub`) others see.
    #[arg(long)]
    user: String,
    /// The display name others see (default: the user id).
    #[arg(long)]
    name: Option<String>,
    /// What the holder may do, comma-separated: publish_audio, publish_video,
    /// publish_screen, subscribe, chat, moderate.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "publish_audio,publish_video,publish_screen,subscribe,chat",
        value_parser = parse_grant
    )]
    grants: Vec<Grant>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    ttl: u64,
    /// The issuer (`iss`), if the server checks one.
    #[arg(long)]
    issuer: Option<String>,
    /// The audience (`aud`), if the server checks one.
    #[arg(long)]
    audience: Option<String>,
}

fn parse_grant(s: &str) -> Result<Grant, String> {
    Grant::from_name(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = Grant::ALL.iter().map(|g| g.name()).collect();
        format!("`{s}` is not a grant; one of {}", names.join(", "))
    })
}

pub(crate) fn run(args: TokenArgs) -> anyhow::Result<std::process::ExitCode> {
    let secret = match (&args.secret, &args.secret_file) {
        (Some(s), _) => s.as_bytes().to_vec(),
        (None, Some(p)) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read --secret-file {}", p.display()))?
            .trim()
            .as_bytes()
            .to_vec(),
        (None, None) => anyhow::bail!(
            "give the server's token secret with --secret-file, --secret or CONVENE_AUTH_SECRET"
        ),
    };
    if secret.len() < 32 {
        anyhow::bail!(
            "the secret has {} bytes; servers refuse secrets under 32",
            secret.len()
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let claims = Claims {
        sub: args.user.clone(),
        name: args.name.clone().unwrap_or_else(|| args.user.clone()),
        meeting: args.meeting.clone(),
        grants: args.grants.iter().map(|g| g.name().to_string()).collect(),
        exp: now + args.ttl,
        nbf: None,
        iat: Some(now),
        iss: args.issuer.clone(),
        aud: args.audience.as_deref().map(Into::into),
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&secret),
    )
    .context("cannot sign the token")?;
    println!("{token}");
    Ok(std::process::ExitCode::SUCCESS)
}
