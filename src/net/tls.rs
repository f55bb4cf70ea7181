//! TLS trust of the gateway's clients (webhook deliveries, scenario calls over https and
//! ftps): which certificates a server may present. The public web roots (Mozilla's,
//! built in) and, when `tls_ca_file` is set, the CA certificates in that PEM file (a
//! private CA, or a self-signed receiver in tests). ring is the crypto provider (as
//! everywhere in the gateway). Built once at start; a bad CA file stops the start.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why the delivery client's TLS configuration could not be built (at start).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls_ca_file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("TLS client setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The rustls client configuration: web roots plus the extra CA certificates of
/// `extra_ca` (PEM, one or more).
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        let bad = |message: String| TlsError::CaFile {
            path: path.display().to_string(),
            message,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("holds no PEM certificate".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad(format!("a certificate is not usable as a CA: {e}")))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Deliveries and scenario calls speak HTTP/1.1 (FTPS ignores ALPN).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("oktell-ca-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            client_config(Some(&dir.join("absent.pem"))),
            Err(TlsError::CaFile { .. })
        ));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(matches!(
            client_config(Some(&empty)),
            Err(TlsError::CaFile { .. })
        ));
        assert!(client_config(None).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }
}
