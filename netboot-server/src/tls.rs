//! netbootd's TLS side: a certificate made at start from the store's key (hosts pin the key, not
//! the certificate, so it may change with every start).

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A rustls server configuration for the PKCS#8 PEM `key_pem`.
pub fn server_config(key_pem: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let key = rcgen::KeyPair::from_pem(key_pem).context("netbootd's TLS key")?;
    let params = rcgen::CertificateParams::new(vec!["netbootd.lectern".to_owned()])
        .context("certificate parameters")?;
    let cert = params
        .self_signed(&key)
        .context("signing netbootd's certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .context("netbootd's TLS certificate")?;
    Ok(Arc::new(config))
}
