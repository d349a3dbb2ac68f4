//! Tokens for servers that require them (PROTOCOL.md §11.3): the runner
//! signs one per Hello with the secret it was given.

use bytes::Bytes;
use convene_protocol::auth::{Claims, Grant};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};

/// A token for `actor`: every meeting, every grant but `moderate`, which
/// only actor `m` (the moderator of the moderation cases) gets, and
/// `record`, which only actor `r` (the recorder of the recording cases) gets.
pub fn mint(secret: &str, actor: &str, suffix: &str) -> Result<String, String> {
    let mut c = base_claims(now()?);
    c.sub = format!("conformance-{actor}{suffix}");
    if actor == "m" {
        c.grants.push(Grant::Moderate.name().to_string());
    }
    if actor == "r" {
        c.grants.push(Grant::Record.name().to_string());
    }
    sign(&c, secret)
}

/// The tokens the authentication cases name as `$token.<kind>`, each wrong
/// (or special) in one way: expired, not yet valid, signed with another key,
/// for another meeting (`conf-auth-other`), granting only `subscribe`, and
/// naming its holder `Grace Hopper`.
pub fn variants(secret: &str, suffix: &str) -> Result<Vec<(String, String)>, String> {
    let now = now()?;
    let base = || {
        let mut c = base_claims(now);
        c.sub = format!("conformance-auth{suffix}");
        c
    };
    let mut out = Vec::new();
    let mut add = |kind: &str, c: Claims, key: &str| -> Result<(), String> {
        out.push((format!("token.{kind}"), sign(&c, key)?));
        Ok(())
    };
    add(
        "expired",
        Claims {
            exp: now - 3600,
            iat: Some(now - 7200),
            ..base()
        },
        secret,
    )?;
    add(
        "not-yet-valid",
        Claims {
            nbf: Some(now + 3600),
            ..base()
        },
        secret,
    )?;
    add("wrong-key", base(), &format!("{secret}-but-another-key"))?;
    add(
        "other-meeting",
        Claims {
            meeting: format!("conf-auth-other{suffix}"),
            ..base()
        },
        secret,
    )?;
    add(
        "subscribe-only",
        Claims {
            grants: vec![Grant::Subscribe.name().to_string()],
            ..base()
        },
        secret,
    )?;
    add(
        "named",
        Claims {
            name: "Grace Hopper".into(),
            sub: format!("conformance-grace{suffix}"),
            ..base()
        },
        secret,
    )?;
    Ok(out)
}

fn now() -> Result<u64, String> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs())
}

/// Any meeting, every grant but `moderate` and `record`, ten minutes.
fn base_claims(now: u64) -> Claims {
    Claims {
        meeting: "*".into(),
        grants: Grant::ALL
            .iter()
            .filter(|g| !matches!(g, Grant::Moderate | Grant::Record))
            .map(|g| g.name().to_string())
            .collect(),
        exp: now + 600,
        iat: Some(now),
        ..Claims::default()
    }
}

fn sign(c: &Claims, secret: &str) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        c,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign a token: {e}"))
}

/// The control frame `frame` (a ClientMessage carrying Hello) with its
/// `auth_token` set.
pub fn with_auth_token(
    env: &MessageDescriptor,
    frame: &Bytes,
    token: &str,
) -> Result<Bytes, String> {
    let body = frame.get(1..).ok_or("an empty frame")?;
    let mut msg = DynamicMessage::decode(env.clone(), body).map_err(|e| e.to_string())?;
    let Some(Value::Message(mut hello)) = msg.get_field_by_name("hello").map(|v| v.into_owned())
    else {
        return Err("not a Hello".into());
    };
    hello.set_field_by_name("auth_token", Value::String(token.to_string()));
    msg.set_field_by_name("hello", Value::Message(hello));
    let mut out = vec![frame[0]];
    msg.encode(&mut out).map_err(|e| e.to_string())?;
    Ok(out.into())
}
