//! Inter-node TLS (`tls.cert`, `tls.key`, `tls.ca`): rustls server and
//! client configurations, loaded once at start. Mutual: a node presents its
//! certificate both as a server and as a client, and accepts a peer only
//! when `tls.ca` signed the peer's certificate. The control port uses them
//! through tokio-rustls, the replication streams through monoio-rustls.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::TlsConfig;

/// The loaded TLS configurations.
#[derive(Debug, Clone)]
pub struct Tls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

fn tls_err(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {e}", path.display()),
    )
}

/// A certificate chain and its private key, from PEM files.
pub fn load_cert_and_key(
    cert: &Path,
    key: &Path,
) -> io::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(cert, e))?;
    if certs.is_empty() {
        return Err(tls_err(cert, "no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e))?;
    Ok((certs, key_der))
}

impl Tls {
    /// Loads the three files; `None` when TLS is off (validated: all or none).
    pub fn load(cfg: &TlsConfig) -> io::Result<Option<Tls>> {
        let (Some(cert), Some(key), Some(ca)) = (&cfg.cert, &cfg.key, &cfg.ca) else {
            return Ok(None);
        };
        let (certs, key_der) = load_cert_and_key(cert, key)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| tls_err(ca, e))? {
            roots
                .add(c.map_err(|e| tls_err(ca, e))?)
                .map_err(|e| tls_err(ca, e))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| tls_err(ca, e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(cert, e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key_der.clone_key())
            .map_err(|e| tls_err(cert, e))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(cert, e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key_der)
            .map_err(|e| tls_err(cert, e))?;
        Ok(Some(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
        }))
    }
}

/// The name a peer's certificate must carry: the host part of `addr`
/// (an IP address or a DNS name).
pub fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_addresses() {
        assert_eq!(
            server_name("127.0.0.1:7000").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert_eq!(
            server_name("[::1]:7000").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert_eq!(
            server_name("db-1.example:7000").unwrap(),
            ServerName::try_from("db-1.example").unwrap()
        );
    }
}
