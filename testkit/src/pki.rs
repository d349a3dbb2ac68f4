//! Certificates for tests of TLS listeners: a CA, a server certificate it
//! signs for `localhost` and 127.0.0.1, a client certificate it signs (for
//! mutual TLS), and a client certificate from another CA, as PEM files in a
//! directory of their own.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files of a test PKI; the directory is removed on drop.
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

/// A leaf certificate and key in PEM, signed by `issuer`.
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("leaf parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, "convene test");
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("leaf");
    (cert.pem(), key.serialize_pem())
}

impl TestPki {
    /// Writes a fresh PKI into a new directory named after `name`.
    pub fn new(name: &str) -> TestPki {
        let dir = std::env::temp_dir().join(format!("convene-pki-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("PKI directory");
        let write = |file: &str, text: &str| {
            std::fs::write(dir.join(file), text).expect("PEM file");
        };
        let ca_main = ca("convene test CA");
        let ca_other = ca("another CA");
        write("ca.pem", &ca_main.pem());
        write("other-ca.pem", &ca_other.pem());
        let (c, k) = leaf(
            &ca_main,
            &["localhost", "127.0.0.1", "::1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write("server.pem", &c);
        write("server-key.pem", &k);
        let (c, k) = leaf(&ca_main, &["client"], ExtendedKeyUsagePurpose::ClientAuth);
        write("client.pem", &c);
        write("client-key.pem", &k);
        let (c, k) = leaf(&ca_other, &["client"], ExtendedKeyUsagePurpose::ClientAuth);
        write("other-client.pem", &c);
        write("other-client-key.pem", &k);
        TestPki { dir }
    }

    /// A file of the PKI: `ca.pem`, `other-ca.pem`, `server.pem`,
    /// `server-key.pem`, `client.pem`, `client-key.pem`, `other-client.pem`,
    /// `other-client-key.pem`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
