//! TLS with rustls: server configs for listeners and client configs for upstreams.
//!
//! A listener's certificates are chosen by SNI against the names in each certificate
//! (wildcards included, as webpki matches them), first match wins; clients without
//! SNI, or with a name no certificate covers, get the first certificate. ALPN offers
//! h2 and http/1.1; TLS 1.3 and 1.2 with ring's AEAD suites only. Configs are built
//! with the runtime, so a reload picks up renewed certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::ClientConfig;
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::CertificateConfig;

/// A certificate, key or CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("`{key}`: {file}: {reason}")]
pub struct TlsError {
    /// The config key that names the file.
    pub key: String,
    pub file: PathBuf,
    pub reason: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The server config for a listener's `certificates`; `key` is the config key of the
/// list, for errors.
pub fn server_config(
    certs: &[CertificateConfig],
    base: &Path,
    key: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut loaded = Vec::new();
    for (i, pair) in certs.iter().enumerate() {
        let cert_file = base.join(pair.cert.get_ref());
        let key_file = base.join(pair.key.get_ref());
        let error = |which: &str, file: &Path, reason: String| TlsError {
            key: format!("{key}[{i}].{which}"),
            file: file.to_path_buf(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
            .map_err(|e| error("cert", &cert_file, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| error("cert", &cert_file, e.to_string()))?;
        if chain.is_empty() {
            return Err(error("cert", &cert_file, "no PEM certificate found".into()));
        }
        let private =
            PrivateKeyDer::from_pem_file(&key_file).map_err(|e| error("key", &key_file, e.to_string()))?;
        let signer =
            ring::sign::any_supported_type(&private).map_err(|e| error("key", &key_file, e.to_string()))?;
        let certified = CertifiedKey::new(chain, signer);
        certified.keys_match().map_err(|e| {
            error("key", &key_file, format!("does not belong to {}: {e}", cert_file.display()))
        })?;
        loaded.push(Arc::new(certified));
    }
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError { key: key.into(), file: PathBuf::new(), reason: e.to_string() })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs: loaded }));
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Picks the first certificate valid for the client's SNI name, else the first.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_name = hello.server_name().and_then(|name| {
            let name = ServerName::try_from(name).ok()?;
            self.certs.iter().find(|c| {
                c.end_entity_cert().ok().is_some_and(|leaf| {
                    webpki::EndEntityCert::try_from(leaf)
                        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
                })
            })
        });
        by_name.or_else(|| self.certs.first()).cloned()
    }
}

/// The client config for an upstream: `ca_file`'s roots or the system's, and ALPN
/// for the protocol spoken (`h2` or `http/1.1`).
pub fn client_config(ca_file: Option<&Path>, h2: bool, key: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(file) => {
            let error = |reason: String| TlsError { key: key.into(), file: file.to_path_buf(), reason };
            for cert in CertificateDer::pem_file_iter(file).map_err(|e| error(e.to_string()))? {
                roots.add(cert.map_err(|e| error(e.to_string()))?).map_err(|e| error(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(error("no PEM certificate found".into()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::warn!(
                    "no system CA certificates found: upstream TLS will trust nothing; set ca_file"
                );
            }
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError { key: key.into(), file: PathBuf::new(), reason: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    Ok(Arc::new(config))
}
