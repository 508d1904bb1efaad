//! Optional TLS (`--tls-cert`, `--tls-key`): `https://` and `wss://`
//! served directly, without a proxy in front.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::StartError;

/// A TLS acceptor for the certificate chain and private key in these PEM
/// files. Only HTTP/1.1 is offered (WebSocket upgrades need it).
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, StartError> {
    let bad = |what: String| StartError::Tls(what);
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| {
            bad(format!(
                "cannot read a certificate chain from {}: {error}",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(bad(format!(
            "no PEM certificate found in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|error| {
        bad(format!(
            "cannot read a private key from {}: {error}",
            key.display()
        ))
    })?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| bad(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| {
            bad(format!(
                "the certificate and key do not go together: {error}"
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
