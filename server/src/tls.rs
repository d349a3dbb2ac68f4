//! TLS: certificates from files, or a self-signed development certificate
//! that browsers accept through WebTransport's `serverCertificateHashes`
//! (ECDSA P-256, valid at most 14 days; PROTOCOL.md §11.6).

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};

/// Validity of the development certificate: under Chromium's 14-day ceiling.
pub const DEV_CERT_DAYS: i64 = 13;

/// A certificate and key ready to serve, with the certificate's SHA-256 hash.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: Arc<PrivateKeyDer<'static>>,
    /// SHA-256 over the leaf certificate's DER.
    pub sha256: [u8; 32],
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} from {path}: {message}")]
    Pem {
        /// Certificate or key.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// Generating the development certificate failed.
    #[error("cannot generate a development certificate: {0}")]
    Generate(String),
    /// rustls refused the certificate and key.
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
    /// The client CA file gave no usable certificate authority.
    #[error("the client CA certificates in {path} cannot verify clients: {message}")]
    ClientCa {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

/// Verifies clients against the CA certificates in the PEM file `path`
/// (mutual TLS): a client without a certificate signed by one of them fails
/// the handshake.
pub fn client_verifier(
    path: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let fail = |message: String| TlsError::ClientCa {
        path: path.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certificates(path).map_err(fail)? {
        roots.add(c).map_err(|e| fail(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| fail(e.to_string()))
}

/// The CA certificates in the PEM file `path`, for trusting servers of a
/// private CA (webhook receivers).
pub fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_certificates(path).map_err(|message| TlsError::Pem {
        what: "CA certificates",
        path: path.display().to_string(),
        message,
    })
}

/// The certificates of the PEM file `path`, at least one.
fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(certs)
}

impl Identity {
    /// Loads a PEM certificate chain and private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Pem {
                what: "certificates",
                path: cert.display().to_string(),
                message: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Pem {
                what: "certificates",
                path: cert.display().to_string(),
                message: "no certificate in the file".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
            what: "private key",
            path: key.display().to_string(),
            message: e.to_string(),
        })?;
        let sha256 = Sha256::digest(chain[0].as_ref()).into();
        Ok(Identity {
            chain,
            key: Arc::new(key),
            sha256,
        })
    }

    /// A fresh self-signed ECDSA P-256 certificate for `localhost`, 127.0.0.1
    /// and ::1 (plus `extra_names`), valid from an hour ago for [`DEV_CERT_DAYS`].
    pub fn self_signed(extra_names: &[String]) -> Result<Self, TlsError> {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        names.extend(extra_names.iter().cloned());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let mut params =
            rcgen::CertificateParams::new(names).map_err(|e| TlsError::Generate(e.to_string()))?;
        let now = std::time::SystemTime::now();
        let not_before = now - std::time::Duration::from_secs(3600);
        params.not_before = not_before.into();
        params.not_after =
            (not_before + std::time::Duration::from_secs(DEV_CERT_DAYS as u64 * 86_400)).into();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Convene development certificate");
        let cert = params
            .self_signed(&key)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let der = cert.der().clone();
        let sha256 = Sha256::digest(der.as_ref()).into();
        let key = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        Ok(Identity {
            chain: vec![der],
            key: Arc::new(key),
            sha256,
        })
    }

    /// The hash as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// A rustls server configuration offering `alpn` protocols.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        self.server_config_verifying(alpn, None)
    }

    /// A rustls server configuration offering `alpn` protocols that, with
    /// `clients`, accepts only the clients it verifies (mutual TLS).
    pub fn server_config_verifying(
        &self,
        alpn: &[&[u8]],
        clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match clients {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificate_is_p256_and_serves() {
        let id = Identity::self_signed(&[]).unwrap();
        let p256_oid = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        assert!(
            id.chain[0].as_ref().windows(8).any(|w| w == p256_oid),
            "not a P-256 key"
        );
        assert_eq!(id.sha256_hex().len(), 64);
        assert!(id.server_config(&[b"http/1.1"]).is_ok());
    }
}
