//! Token checks (PROTOCOL.md §11.3): a JWT in `Hello.auth_token`, signed
//! with a shared secret (HS256) or with one of an issuer's published keys
//! (JWKS: ES256, RS256, EdDSA, chosen by `kid`), its issuer, audience, expiry
//! and not-before checked; its claims decide which meetings the holder may
//! join and what they may do there. Tokens are never logged.

#[cfg(test)]
use convene_protocol::auth::Audience;
use convene_protocol::auth::{Claims, Grant};
use convene_protocol::{ErrorCode, ProtocolError};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::{Notify, watch};

/// Seconds of clock difference tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;

/// Shortest shared secret accepted: HS256 is only as strong as its key.
pub const MIN_SECRET_BYTES: usize = 32;

/// Checks tokens for one server.
pub struct Verifier {
    /// The HS256 secret, if one is configured.
    key: Option<DecodingKey>,
    /// Issuer keys, if a JWKS URL is configured.
    jwks: Option<Arc<Jwks>>,
    /// Issuer, audience, leeway; the algorithm is set per token.
    validation: Validation,
}

/// Why a token was not accepted.
#[derive(Debug)]
pub enum VerifyError {
    /// Refused, with the spec's error.
    Refused(ProtocolError),
    /// Signed with a key id this server does not have (yet): worth one retry
    /// after the issuer's keys were fetched again.
    UnknownKey(String),
}

/// An issuer's public keys, fetched from its JWKS URL and replaced whole on
/// each fetch (so a key the issuer dropped stops working).
pub struct Jwks {
    /// Where the keys are published.
    pub url: String,
    keys: RwLock<HashMap<String, (DecodingKey, Algorithm)>>,
    /// Rung when a token names a key we do not have.
    pub wanted: Notify,
    /// Bumped after every fetch, successful or not.
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<String> = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        f.debug_struct("Jwks")
            .field("url", &self.url)
            .field("kids", &kids)
            .finish()
    }
}

impl Jwks {
    /// An empty key set for `url`; [`Jwks::replace`] fills it.
    pub fn new(url: &str) -> Arc<Jwks> {
        Arc::new(Jwks {
            url: url.to_string(),
            keys: RwLock::new(HashMap::new()),
            wanted: Notify::new(),
            generation: watch::channel(0).0,
        })
    }

    /// Replaces the keys with those of a JWKS document; returns how many were
    /// usable. Symmetric keys and keys without a `kid` are ignored: a
    /// published key must not be able to sign.
    pub fn replace(&self, document: &[u8]) -> Result<usize, String> {
        let set: JwkSet =
            serde_json::from_slice(document).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::OctetKey(_), _) => continue,
                (_, Some(KeyAlgorithm::RS256)) | (AlgorithmParameters::RSA(_), None) => {
                    Algorithm::RS256
                }
                (_, Some(KeyAlgorithm::ES256)) => Algorithm::ES256,
                (AlgorithmParameters::EllipticCurve(p), None) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                (_, Some(KeyAlgorithm::EdDSA)) | (AlgorithmParameters::OctetKeyPair(_), None) => {
                    Algorithm::EdDSA
                }
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, (key, alg));
            }
        }
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(n)
    }

    /// Says a fetch finished (keys replaced or not), waking waiting sessions.
    pub fn fetched(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// A receiver that changes after each fetch.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kid)
            .cloned()
    }
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
        Verifier::new(Some(secret), None, issuer, audience)
    }

    /// A verifier for HS256 tokens (with `secret`) and/or tokens signed with
    /// an issuer's published keys (`jwks`).
    pub fn new(
        secret: Option<&[u8]>,
        jwks: Option<Arc<Jwks>>,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        // An issuer or audience the operator pins must be present: a token
        // without `iss` or `aud` does not pass for lack of the claim.
        let mut required = vec!["exp"];
        required.extend(issuer.map(|_| "iss"));
        required.extend(audience.map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match issuer {
            Some(i) => validation.set_issuer(&[i]),
            None => validation.iss = None,
        }
        match audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        Verifier {
            key: secret.map(DecodingKey::from_secret),
            jwks,
            validation,
        }
    }

    /// The issuer key set, when tokens may be signed with published keys.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// The claims of a valid token, or the spec's error for an invalid one.
    pub fn verify(&self, token: &str) -> Result<Claims, ProtocolError> {
        match self.check(token) {
            Ok(c) => Ok(c),
            Err(VerifyError::Refused(e)) => Err(e),
            Err(VerifyError::UnknownKey(kid)) => Err(unknown_key(&kid)),
        }
    }

    /// Like [`Verifier::verify`], but says when the token names a key this
    /// server does not have, so the caller can fetch the keys and retry.
    pub fn check(&self, token: &str) -> Result<Claims, VerifyError> {
        let refused = VerifyError::Refused;
        if token.is_empty() {
            return Err(refused(ProtocolError::new(
                ErrorCode::AuthRequired,
                "this server requires a token in Hello.auth_token",
            )));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            refused(ProtocolError::new(
                ErrorCode::AuthInvalid,
                "the token is malformed",
            ))
        })?;
        if has_critical_extensions(token) {
            // RFC 7515 §4.1.11: a header naming extensions the recipient must
            // understand, and this server understands none, is refused.
            return Err(refused(ProtocolError::new(
                ErrorCode::AuthInvalid,
                "the token's header has a `crit` parameter, and this server understands no JWS extensions",
            )));
        }
        let (key, alg) = if header.alg == Algorithm::HS256 {
            match &self.key {
                Some(k) => (k.clone(), Algorithm::HS256),
                None => {
                    return Err(refused(ProtocolError::new(
                        ErrorCode::AuthInvalid,
                        "this server does not accept HS256 tokens",
                    )));
                }
            }
        } else {
            let Some(jwks) = &self.jwks else {
                return Err(refused(ProtocolError::new(
                    ErrorCode::AuthInvalid,
                    "the token is signed with an algorithm this server does not accept",
                )));
            };
            let kid = header.kid.clone().unwrap_or_default();
            match jwks.key(&kid) {
                Some((k, a)) if a == header.alg => (k, a),
                Some(_) => {
                    return Err(refused(ProtocolError::new(
                        ErrorCode::AuthInvalid,
                        "the token's algorithm does not match its key",
                    )));
                }
                None => return Err(VerifyError::UnknownKey(kid)),
            }
        };
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        self.decode(token, &key, &validation).map_err(refused)
    }

    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        validation: &Validation,
    ) -> Result<Claims, ProtocolError> {
        match jsonwebtoken::decode::<Claims>(token, key, validation) {
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

/// True when the token's JOSE header has a `crit` parameter (or cannot be
/// read as a JSON object, which `decode_header` has already refused).
fn has_critical_extensions(token: &str) -> bool {
    use base64::Engine;
    let Some(head) = token.split('.').next() else {
        return true;
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head) else {
        return true;
    };
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json) {
        Ok(map) => map.contains_key("crit"),
        Err(_) => true,
    }
}

/// The error for a token signed with a key the issuer does not publish.
pub fn unknown_key(kid: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::AuthInvalid,
        format!("the token is signed with key `{kid}`, which the issuer does not publish"),
    )
}

/// Fetches an issuer's keys now and then: every `refresh`, and sooner (at
/// most every `min_gap`) when a token names an unknown key. Runs until the
/// task is dropped.
pub async fn refresh_jwks(
    jwks: Arc<Jwks>,
    refresh: std::time::Duration,
    min_gap: std::time::Duration,
) {
    loop {
        match crate::fetch::get(&jwks.url, 1 << 20).await {
            Ok(body) => match jwks.replace(&body) {
                Ok(n) => tracing::info!(url = %jwks.url, keys = n, "fetched the issuer's keys"),
                Err(e) => tracing::warn!(url = %jwks.url, "cannot use the issuer's keys: {e}"),
            },
            Err(e) => tracing::warn!(url = %jwks.url, "cannot fetch the issuer's keys: {e}"),
        }
        jwks.fetched();
        tokio::time::sleep(min_gap).await;
        tokio::select! {
            _ = tokio::time::sleep(refresh.saturating_sub(min_gap)) => {}
            _ = jwks.wanted.notified() => {}
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

    /// A pinned issuer or audience must be in the token: leaving the claim
    /// out used to pass.
    #[test]
    fn a_pinned_issuer_or_audience_cannot_be_left_out() {
        let v = Verifier::hs256(SECRET, Some("idp"), Some("convene"));
        let mut c = good();
        c.iss = Some("idp".into());
        c.aud = Some("convene".into());
        assert!(v.verify(&token(&c, SECRET)).is_ok());
        let no_iss = Claims {
            iss: None,
            ..c.clone()
        };
        assert_eq!(
            code(v.verify(&token(&no_iss, SECRET))),
            ErrorCode::AuthInvalid
        );
        let no_aud = Claims {
            aud: None,
            ..c.clone()
        };
        assert_eq!(
            code(v.verify(&token(&no_aud, SECRET))),
            ErrorCode::AuthInvalid
        );
        // Without pins, neither claim is needed.
        assert!(
            Verifier::hs256(SECRET, None, None)
                .verify(&token(&good(), SECRET))
                .is_ok()
        );
    }

    /// `"aud": ["convene", …]`, as identity providers send it, is read.
    #[test]
    fn an_audience_array_is_accepted_when_it_names_us() {
        let v = Verifier::hs256(SECRET, None, Some("convene"));
        let mut c = good();
        c.aud = Some(Audience::Many(vec!["other".into(), "convene".into()]));
        assert_eq!(v.verify(&token(&c, SECRET)).unwrap().sub, "u1");
        c.aud = Some(Audience::Many(vec!["other".into()]));
        assert_eq!(code(v.verify(&token(&c, SECRET))), ErrorCode::AuthInvalid);
    }

    /// A header naming critical extensions is refused (RFC 7515 §4.1.11).
    #[test]
    fn a_critical_header_extension_is_refused() {
        let v = Verifier::hs256(SECRET, None, None);
        let mut header = Header::new(Algorithm::HS256);
        let plain =
            jsonwebtoken::encode(&header, &good(), &EncodingKey::from_secret(SECRET)).unwrap();
        assert!(v.verify(&plain).is_ok());
        // jsonwebtoken's Header has no `crit`: sign a header of our own.
        header.kid = Some("k".into());
        let head =
            serde_json::json!({"alg": "HS256", "typ": "JWT", "crit": ["exp-ext"], "exp-ext": 1});
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let body = b64(&serde_json::to_vec(&good()).unwrap());
        let signing_input = format!("{}.{}", b64(&serde_json::to_vec(&head).unwrap()), body);
        let sig = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        let crit = format!("{signing_input}.{sig}");
        assert_eq!(code(v.verify(&crit)), ErrorCode::AuthInvalid);
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
