//! Throwaway certificates for TLS tests, made with rcgen: a CA and a server certificate for
//! `localhost` and `127.0.0.1` signed by it, as PEM files in a temporary directory.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A CA and a server certificate signed by it, as PEM files in a directory removed on drop:
/// `ca.pem`, `cert.pem`, `key.pem`, and `other-key.pem` (a key that matches nothing).
pub struct Certs {
    dir: PathBuf,
    /// The CA certificate, for clients to trust.
    pub ca_pem: String,
}

impl Certs {
    pub fn new() -> Certs {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hamq-tls-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let mut certs = Certs {
            dir,
            ca_pem: String::new(),
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "hamq test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = server.signed_by(&key, &issuer).expect("server certificate");
        certs.ca_pem = ca_cert.pem();
        certs.write("ca.pem", &certs.ca_pem);
        certs.write("cert.pem", &cert.pem());
        certs.write("key.pem", &key.serialize_pem());
        let other = KeyPair::generate().expect("another key");
        certs.write("other-key.pem", &other.serialize_pem());
        certs
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn path_str(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Env for a broker with a TLS listener on a free port (and the plain one as given).
    pub fn broker_env(&self) -> Vec<(String, String)> {
        vec![
            ("HAMQ_STOMP_TLS_LISTEN".into(), "127.0.0.1:0".into()),
            ("HAMQ_TLS_CERT".into(), self.path_str("cert.pem")),
            ("HAMQ_TLS_KEY".into(), self.path_str("key.pem")),
        ]
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
