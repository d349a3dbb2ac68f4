//! Tokens for servers that require them (PROTOCOL.md §11.3): the runner
//! signs one per Hello with the secret it was given.

use bytes::Bytes;
use convene_protocol::auth::{Claims, Grant};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};

/// A token for `actor`: every meeting, every grant but `moderate`, which
/// only actor `m` (the moderator of the moderation cases) gets.
pub fn mint(secret: &str, actor: &str, suffix: &str) -> Result<String, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let grants = Grant::ALL
        .iter()
        .filter(|g| **g != Grant::Moderate || actor == "m")
        .map(|g| g.name().to_string())
        .collect();
    let claims = Claims {
        sub: format!("conformance-{actor}{suffix}"),
        meeting: "*".into(),
        grants,
        exp: now + 600,
        iat: Some(now),
        ..Claims::default()
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
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
