//! TLS with rustls: TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`, and a
//! certificate that SIGHUP replaces without dropping connections.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use tokio_rustls::TlsAcceptor;

use crate::sandbox::FilePath;

/// Largest certificate chain or key file read: real chains are a few KiB.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The certificate and key files, and the pair currently served.
pub struct Tls {
    cert: FilePath,
    key: FilePath,
    current: Arc<CurrentCert>,
    acceptor: TlsAcceptor,
    /// When the served certificate expires (Unix seconds; 0 when its DER
    /// could not be read).
    expiry: AtomicU64,
}

/// The certificate handed to each new handshake; swapped by [`Tls::reload`].
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks a certificate chain and its private key (PEM).
fn load(cert: &FilePath, key: &FilePath) -> Result<CertifiedKey, String> {
    let cert_pem = cert
        .read(MAX_PEM_BYTES)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key_pem = key
        .read(MAX_PEM_BYTES)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let private =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("{}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, private, &provider())
        .map_err(|e| format!("certificate and key: {e}"))
}

/// The leaf certificate's `notAfter`, 0 when it cannot be read.
fn expiry_of(pair: &CertifiedKey) -> u64 {
    pair.cert
        .first()
        .and_then(|leaf| crate::http::certificate::not_after(leaf))
        .unwrap_or(0)
}

impl Tls {
    /// Loads the pair; an error stops start-up.
    pub fn new(cert: FilePath, key: FilePath) -> Result<Self, String> {
        let pair = load(&cert, &key)?;
        let expiry = AtomicU64::new(expiry_of(&pair));
        let current = Arc::new(CurrentCert(RwLock::new(Arc::new(pair))));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        Ok(Tls {
            cert,
            key,
            current,
            acceptor,
            expiry,
        })
    }

    /// When the certificate served now expires (Unix seconds; 0: unknown).
    pub fn expiry(&self) -> u64 {
        self.expiry.load(Ordering::Relaxed)
    }

    /// The acceptor that wraps each accepted socket.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The files, for the self-sandbox to allow.
    pub fn files(&self) -> [&FilePath; 2] {
        [&self.cert, &self.key]
    }

    /// Re-reads the pair (SIGHUP). New handshakes use it; connections
    /// already up keep theirs. A broken pair keeps the old one. Blocking.
    pub fn reload(&self) -> io::Result<()> {
        match load(&self.cert, &self.key) {
            Ok(pair) => {
                self.expiry.store(expiry_of(&pair), Ordering::Relaxed);
                *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous certificate");
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
    }
}
