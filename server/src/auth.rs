//! Token checks (PROTOCOL.md §11.3): a JWT in `Hello.auth_token`, signed
//! with a shared secret (HS256), its issuer, audience, expiry and not-before
//! checked; its claims decide which meetings the holder may join and what
//! they may do there. Tokens are never logged.

use convene_protocol::auth::{Claims, Grant};
use convene_protocol::{ErrorCode, ProtocolError};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Seconds of clock difference tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;

/// Shortest shared secret accepted: HS256 is only as strong as its key.
pub const MIN_SECRET_BYTES: usize = 32;

/// Checks tokens for one server.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Verifier")
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for HS256 tokens signed with `secret`, optionally pinned to
    /// an issuer and an audience.
    pub fn hs256(secret: &[u8], issuer: Option<&str>, audience: Option<&str>) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match issuer {
            Some(i) => validation.set_issuer(&[i]),
            None => validation.iss = None,
        }
        match audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// The claims of a valid token, or the spec's error for an invalid one.
    pub fn verify(&self, token: &str) -> Result<Claims, ProtocolError> {
        if token.is_empty() {
            return Err(ProtocolError::new(
                ErrorCode::AuthRequired,
                "this server requires a token in Hello.auth_token",
            ));
        }
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => {
                    ProtocolError::new(ErrorCode::AuthExpired, "the token has expired")
                }
                ErrorKind::ImmatureSignature => {
                    ProtocolError::new(ErrorCode::AuthExpired, "the token is not valid yet")
                }
                ErrorKind::InvalidSignature => ProtocolError::new(
                    ErrorCode::AuthInvalid,
                    "the token's signature does not verify",
                ),
                ErrorKind::InvalidIssuer => {
                    ProtocolError::new(ErrorCode::AuthInvalid, "the token is from another issuer")
                }
                ErrorKind::InvalidAudience => {
                    ProtocolError::new(ErrorCode::AuthInvalid, "the token is for another audience")
                }
                ErrorKind::InvalidAlgorithm => ProtocolError::new(
                    ErrorCode::AuthInvalid,
                    "the token is signed with an algorithm this server does not accept",
                ),
                _ => ProtocolError::new(ErrorCode::AuthInvalid, "the token is malformed"),
            }),
        }
    }
}

/// The error for an action the token does not grant.
pub fn denied(what: &str, grant: Grant) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::PermissionDenied,
        format!("your token does not grant {} ({what})", grant.name()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(claims: &Claims, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn good() -> Claims {
        Claims {
            sub: "u1".into(),
            meeting: "m".into(),
            exp: now() + 600,
            ..Claims::default()
        }
    }

    fn code(r: Result<Claims, ProtocolError>) -> ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn every_wrong_token_has_its_code() {
        let v = Verifier::hs256(SECRET, Some("idp"), Some("convene"));
        let mut c = good();
        c.iss = Some("idp".into());
        c.aud = Some("convene".into());
        assert_eq!(v.verify(&token(&c, SECRET)).unwrap().sub, "u1");
        assert_eq!(code(v.verify("")), ErrorCode::AuthRequired);
        assert_eq!(code(v.verify("not.a.jwt")), ErrorCode::AuthInvalid);
        assert_eq!(
            code(v.verify(&token(&c, b"another secret of thirty-two bytes"))),
            ErrorCode::AuthInvalid
        );
        let expired = Claims {
            exp: now() - 3600,
            ..c.clone()
        };
        assert_eq!(
            code(v.verify(&token(&expired, SECRET))),
            ErrorCode::AuthExpired
        );
        let early = Claims {
            nbf: Some(now() + 3600),
            ..c.clone()
        };
        assert_eq!(
            code(v.verify(&token(&early, SECRET))),
            ErrorCode::AuthExpired
        );
        let other_iss = Claims {
            iss: Some("evil".into()),
            ..c.clone()
        };
        assert_eq!(
            code(v.verify(&token(&other_iss, SECRET))),
            ErrorCode::AuthInvalid
        );
        let other_aud = Claims {
            aud: Some("elsewhere".into()),
            ..c.clone()
        };
        assert_eq!(
            code(v.verify(&token(&other_aud, SECRET))),
            ErrorCode::AuthInvalid
        );
    }

    #[test]
    fn leeway_is_small() {
        let v = Verifier::hs256(SECRET, None, None);
        let just = Claims {
            exp: now() - 5,
            ..good()
        };
        assert!(v.verify(&token(&just, SECRET)).is_ok(), "within the leeway");
        let past = Claims {
            exp: now() - LEEWAY_SECONDS - 5,
            ..good()
        };
        assert_eq!(
            code(v.verify(&token(&past, SECRET))),
            ErrorCode::AuthExpired
        );
    }

    #[test]
    fn an_unsigned_token_is_refused() {
        // `alg: none` with an empty signature must not pass.
        let v = Verifier::hs256(SECRET, None, None);
        let t = token(&good(), SECRET);
        let mut parts: Vec<&str> = t.split('.').collect();
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
        parts[0] = none;
        parts[2] = "";
        assert_eq!(code(v.verify(&parts.join("."))), ErrorCode::AuthInvalid);
    }
}
