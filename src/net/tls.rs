//! TLS trust for the gateway's clients (scenario calls over https/ftps, webhook
//! deliveries): the web PKI roots, plus the certificates of an extra CA file when one is
//! configured (a private CA, or a self-signed receiver in tests).

use std::path::Path;
use std::sync::Arc;

/// Why the client TLS setup failed (a bad extra CA file).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The root store: webpki roots plus every certificate in `extra_ca` (PEM).
pub fn roots(extra_ca: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        let failed = |message: String| TlsError::CaFile {
            path: path.display().to_string(),
            message,
        };
        let mut added = 0;
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| failed(e.to_string()))?
        {
            let cert = cert.map_err(|e| failed(e.to_string()))?;
            roots.add(cert).map_err(|e| failed(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(failed("no certificate in the file".into()));
        }
    }
    Ok(roots)
}

/// A client configuration (ring, TLS 1.2 and 1.3) trusting [`roots`].
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Setup(e.to_string()))?
    .with_root_certificates(roots(extra_ca)?)
    .with_no_client_auth();
    Ok(Arc::new(config))
}
