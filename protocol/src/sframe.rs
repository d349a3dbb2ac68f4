//! The SFrame header (RFC 9605 §4.3): the key id (KID) and counter (CTR)
//! in front of every end-to-end encrypted frame. A config byte `X KKK Y CCC`
//! says, for each value, either the value itself (0 to 7) or how many
//! big-endian bytes of it follow (1 to 8).
//!
//! It also holds the rest of SFrame: key derivation (§4.4.2), the AEAD of
//! every cipher suite the RFC defines (§4.5, the AES-CTR + HMAC ones
//! included), and frame encryption and decryption (§4.4.3, §4.4.4). Pure
//! Rust, so the browser client runs the same code in wasm32.

/// Why bytes are not an SFrame header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer bytes than the config byte announces.
    #[error("SFrame header cut short: {needed} bytes needed, {got} given")]
    Truncated {
        /// Bytes the header needs.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
}

/// A parsed SFrame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// The key id: which sender key encrypted the frame.
    pub kid: u64,
    /// The counter: makes the nonce unique per key.
    pub ctr: u64,
}

/// Bytes a value needs big-endian, at least 1.
fn width(v: u64) -> usize {
    (8 - v.leading_zeros() as usize / 8).max(1)
}

impl Header {
    /// The header's bytes, each value in as few bytes as it takes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8];
        let mut part = |v: u64, shift: u8| {
            if v < 8 {
                out[0] |= (v as u8) << shift;
            } else {
                let n = width(v);
                out[0] |= (0x8 | (n as u8 - 1)) << shift;
                out.extend_from_slice(&v.to_be_bytes()[8 - n..]);
            }
        };
        part(self.kid, 4);
        part(self.ctr, 0);
        out
    }

    /// Reads a header from the front of `bytes`; returns it and its length.
    pub fn parse(bytes: &[u8]) -> Result<(Header, usize), HeaderError> {
        let truncated = |needed| HeaderError::Truncated {
            needed,
            got: bytes.len(),
        };
        let config = *bytes.first().ok_or(truncated(1))?;
        let mut at = 1;
        let mut value = |nibble: u8| -> Result<u64, HeaderError> {
            if nibble & 0x8 == 0 {
                return Ok(u64::from(nibble & 0x7));
            }
            let n = usize::from(nibble & 0x7) + 1;
            let field = bytes.get(at..at + n).ok_or(truncated(at + n))?;
            at += n;
            Ok(field.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
        };
        let kid = value(config >> 4)?;
        let ctr = value(config & 0xF)?;
        Ok((Header { kid, ctr }, at))
    }
}

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use hmac::Mac as _;

/// Why an SFrame frame did not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SframeError {
    /// The header is malformed or cut short.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// No key is known for the frame's KID (not received yet, or retired).
    #[error("no SFrame key for KID {0:#x}")]
    UnknownKid(u64),
    /// The ciphertext or its authenticated data was altered, or the key is wrong.
    #[error("SFrame authentication failed: tampered frame or wrong key")]
    Authentication,
    /// A counter was seen before for this key: a replayed frame.
    #[error("SFrame counter {0} already used")]
    Replayed(u64),
    /// The key material has the wrong length for the cipher suite.
    #[error("SFrame key of {got} bytes, cipher suite needs {needed}")]
    KeyLength {
        /// Bytes the suite needs.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
}

/// An SFrame cipher suite (RFC 9605 §4.5, Table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CipherSuite {
    /// AES-128 in counter mode with an HMAC-SHA256 tag cut to 80 bits.
    AesCtr128HmacSha256_80 = 1,
    /// AES-128 in counter mode with an HMAC-SHA256 tag cut to 64 bits.
    AesCtr128HmacSha256_64 = 2,
    /// AES-128 in counter mode with an HMAC-SHA256 tag cut to 32 bits.
    AesCtr128HmacSha256_32 = 3,
    /// AES-128-GCM with a 128-bit tag: Convene's default.
    Aes128GcmSha256_128 = 4,
    /// AES-256-GCM with a 128-bit tag, keys derived with SHA-512.
    Aes256GcmSha512_128 = 5,
}

impl CipherSuite {
    /// The suite for its registry value, if the RFC defines it.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::AesCtr128HmacSha256_80,
            2 => Self::AesCtr128HmacSha256_64,
            3 => Self::AesCtr128HmacSha256_32,
            4 => Self::Aes128GcmSha256_128,
            5 => Self::Aes256GcmSha512_128,
            _ => return None,
        })
    }

    /// Key bytes (`Nk`): for the CTR suites, the AES key then the HMAC key.
    pub fn key_len(self) -> usize {
        match self {
            Self::AesCtr128HmacSha256_80
            | Self::AesCtr128HmacSha256_64
            | Self::AesCtr128HmacSha256_32 => 48,
            Self::Aes128GcmSha256_128 => 16,
            Self::Aes256GcmSha512_128 => 32,
        }
    }

    /// Tag bytes (`Nt`): what encryption adds besides the header.
    pub fn tag_len(self) -> usize {
        match self {
            Self::AesCtr128HmacSha256_80 => 10,
            Self::AesCtr128HmacSha256_64 => 8,
            Self::AesCtr128HmacSha256_32 => 4,
            Self::Aes128GcmSha256_128 | Self::Aes256GcmSha512_128 => 16,
        }
    }

    fn sha512(self) -> bool {
        self == Self::Aes256GcmSha512_128
    }
}

/// Nonce bytes (`Nn`), the same for every suite.
pub const NONCE_LEN: usize = 12;

/// HKDF-Extract then Expand with the suite's hash (SHA-256, or SHA-512 for suite 5).
fn hkdf(suite: CipherSuite, ikm: &[u8], info: &[u8], out: &mut [u8]) {
    // Lengths are at most 48 bytes, far below HKDF's 255 × hash limit.
    if suite.sha512() {
        hkdf::Hkdf::<sha2::Sha512>::new(Some(&[]), ikm)
            .expand(info, out)
            .expect("HKDF output within limit");
    } else {
        hkdf::Hkdf::<sha2::Sha256>::new(Some(&[]), ikm)
            .expand(info, out)
            .expect("HKDF output within limit");
    }
}

/// The AEAD key of one cipher suite, usable directly (RFC 9605 §4.5).
#[derive(Clone)]
pub struct AeadKey {
    suite: CipherSuite,
    key: Vec<u8>,
    /// The GCM cipher with its key schedule done once, not per frame.
    gcm: Gcm,
}

/// An expanded AES-GCM key, or none for the CTR + HMAC suites.
#[derive(Clone)]
enum Gcm {
    None,
    Aes128(Box<aes_gcm::Aes128Gcm>),
    Aes256(Box<aes_gcm::Aes256Gcm>),
}

impl Gcm {
    fn new(suite: CipherSuite, key: &[u8]) -> Gcm {
        match suite {
            CipherSuite::Aes128GcmSha256_128 => Gcm::Aes128(Box::new(
                aes_gcm::Aes128Gcm::new_from_slice(key).expect("key length checked"),
            )),
            CipherSuite::Aes256GcmSha512_128 => Gcm::Aes256(Box::new(
                aes_gcm::Aes256Gcm::new_from_slice(key).expect("key length checked"),
            )),
            _ => Gcm::None,
        }
    }
}

impl AeadKey {
    /// An AEAD key from raw bytes, which must be `suite.key_len()` long.
    pub fn new(suite: CipherSuite, key: &[u8]) -> Result<Self, SframeError> {
        if key.len() != suite.key_len() {
            return Err(SframeError::KeyLength {
                needed: suite.key_len(),
                got: key.len(),
            });
        }
        Ok(Self {
            suite,
            key: key.to_vec(),
            gcm: Gcm::new(suite, key),
        })
    }

    /// AEAD.Encrypt: ciphertext followed by the tag.
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], pt: &[u8]) -> Vec<u8> {
        match &self.gcm {
            Gcm::Aes128(c) => c
                .encrypt(nonce.into(), Payload { msg: pt, aad })
                .expect("AES-GCM encrypts any frame size we allow"),
            Gcm::Aes256(c) => c
                .encrypt(nonce.into(), Payload { msg: pt, aad })
                .expect("AES-GCM encrypts any frame size we allow"),
            Gcm::None => {
                let mut out = pt.to_vec();
                self.ctr(nonce, &mut out);
                let tag = self.ctr_tag(nonce, aad, &out);
                out.extend_from_slice(&tag);
                out
            }
        }
    }

    /// AEAD.Decrypt: the plaintext, or an error when the tag does not match.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Vec<u8>, SframeError> {
        match &self.gcm {
            Gcm::Aes128(c) => c
                .decrypt(nonce.into(), Payload { msg: ct, aad })
                .map_err(|_| SframeError::Authentication),
            Gcm::Aes256(c) => c
                .decrypt(nonce.into(), Payload { msg: ct, aad })
                .map_err(|_| SframeError::Authentication),
            Gcm::None => {
                let nt = self.suite.tag_len();
                if ct.len() < nt {
                    return Err(SframeError::Authentication);
                }
                let (body, tag) = ct.split_at(ct.len() - nt);
                let expected = self.ctr_tag(nonce, aad, body);
                if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], tag)) {
                    return Err(SframeError::Authentication);
                }
                let mut out = body.to_vec();
                self.ctr(nonce, &mut out);
                Ok(out)
            }
        }
    }

    /// AES-CTR with the nonce followed by a 32-bit block counter from zero (§4.5.1).
    fn ctr(&self, nonce: &[u8; NONCE_LEN], data: &mut [u8]) {
        use ctr::cipher::{KeyIvInit as _, StreamCipher as _};
        let mut iv = [0u8; 16];
        iv[..NONCE_LEN].copy_from_slice(nonce);
        ctr::Ctr32BE::<aes::Aes128>::new_from_slices(&self.key[..16], &iv)
            .expect("AES-128 key and 16-byte IV")
            .apply_keystream(data);
    }

    /// The truncated HMAC over lengths, nonce, AAD and ciphertext (§4.5.1).
    fn ctr_tag(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], ct: &[u8]) -> Vec<u8> {
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&self.key[16..])
            .expect("HMAC takes any key length");
        mac.update(&(aad.len() as u64).to_be_bytes());
        mac.update(&(ct.len() as u64).to_be_bytes());
        mac.update(&(self.suite.tag_len() as u64).to_be_bytes());
        mac.update(nonce);
        mac.update(aad);
        mac.update(ct);
        mac.finalize().into_bytes()[..self.suite.tag_len()].to_vec()
    }
}

/// The key and salt of one KID, derived from a base key (RFC 9605 §4.4.2).
#[derive(Clone)]
pub struct KeyContext {
    /// The key id whose frames this decrypts.
    pub kid: u64,
    aead: AeadKey,
    salt: [u8; NONCE_LEN],
}

impl KeyContext {
    /// Derives `sframe_key` and `sframe_salt` for `kid` from `base_key`.
    pub fn derive(suite: CipherSuite, kid: u64, base_key: &[u8]) -> Self {
        let label = |what: &str| {
            let mut l = format!("SFrame 1.0 Secret {what} ").into_bytes();
            l.extend_from_slice(&kid.to_be_bytes());
            l.extend_from_slice(&(suite as u16).to_be_bytes());
            l
        };
        let mut key = vec![0u8; suite.key_len()];
        hkdf(suite, base_key, &label("key"), &mut key);
        let mut salt = [0u8; NONCE_LEN];
        hkdf(suite, base_key, &label("salt"), &mut salt);
        Self {
            kid,
            aead: AeadKey {
                suite,
                gcm: Gcm::new(suite, &key),
                key,
            },
            salt,
        }
    }

    /// The cipher suite of this key.
    pub fn suite(&self) -> CipherSuite {
        self.aead.suite
    }

    /// The derived salt (`sframe_salt`).
    pub fn salt(&self) -> &[u8; NONCE_LEN] {
        &self.salt
    }

    /// The nonce for a counter: the salt XOR the counter, big-endian.
    pub fn nonce(&self, ctr: u64) -> [u8; NONCE_LEN] {
        let mut nonce = self.salt;
        for (n, c) in nonce[NONCE_LEN - 8..].iter_mut().zip(ctr.to_be_bytes()) {
            *n ^= c;
        }
        nonce
    }

    /// Encrypts one frame: the SFrame header then the ciphertext and tag.
    /// `metadata` is authenticated but not sent (§4.4.3).
    pub fn encrypt(&self, ctr: u64, metadata: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Header { kid: self.kid, ctr }.encode();
        let header_len = out.len();
        let mut aad = Vec::with_capacity(header_len + metadata.len());
        aad.extend_from_slice(&out);
        aad.extend_from_slice(metadata);
        let ct = self.aead.seal(&self.nonce(ctr), &aad, plaintext);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts a frame whose header (already parsed as `header`, `header_len`
    /// bytes) names this key.
    pub fn decrypt(
        &self,
        frame: &[u8],
        header: Header,
        header_len: usize,
        metadata: &[u8],
    ) -> Result<Vec<u8>, SframeError> {
        let (head, ct) = frame.split_at(header_len);
        let mut aad = Vec::with_capacity(head.len() + metadata.len());
        aad.extend_from_slice(head);
        aad.extend_from_slice(metadata);
        self.aead.open(&self.nonce(header.ctr), &aad, ct)
    }
}

/// The bytes SFrame adds to a frame encrypted under `kid` at `ctr`.
pub fn overhead(suite: CipherSuite, kid: u64, ctr: u64) -> usize {
    Header { kid, ctr }.encode().len() + suite.tag_len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_live_in_the_config_byte() {
        assert_eq!(Header { kid: 7, ctr: 3 }.encode(), vec![0x73]);
        assert_eq!(
            Header::parse(&[0x73, 0xAA]),
            Ok((Header { kid: 7, ctr: 3 }, 1))
        );
    }

    #[test]
    fn a_short_header_is_an_error_not_a_panic() {
        assert!(Header::parse(&[]).is_err());
        // KID of 8 bytes announced, 2 given.
        assert_eq!(
            Header::parse(&[0xF0, 1, 2]),
            Err(HeaderError::Truncated { needed: 9, got: 3 })
        );
    }
}
