//! Mutual TLS for the API. We accept connections ourselves, rather than letting tonic do it,
//! so that a refused handshake is logged with its reason (an unknown CA, an expired or
//! missing client certificate): the client only sees its connection closed, and the
//! operator needs to know why.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused handshakes logged one by one per minute; the rest are counted and summed up, so an
/// unauthenticated peer cannot flood the log.
const REFUSALS_LOGGED_PER_MINUTE: u32 = 10;

/// Counts refused handshakes per minute.
#[derive(Debug)]
struct Refusals {
    window_start: std::time::Instant,
    logged: u32,
    suppressed: u32,
}

static REFUSALS: std::sync::Mutex<Option<Refusals>> = std::sync::Mutex::new(None);

/// Whether to log this refusal; at the start of a new minute, how many were left out of the
/// last one.
fn note_refusal() -> (bool, u32) {
    let mut r = REFUSALS.lock().unwrap_or_else(|p| p.into_inner());
    let now = std::time::Instant::now();
    let r = r.get_or_insert(Refusals {
        window_start: now,
        logged: 0,
        suppressed: 0,
    });
    let mut left_out = 0;
    if now.duration_since(r.window_start) >= Duration::from_secs(60) {
        left_out = r.suppressed;
        *r = Refusals {
            window_start: now,
            logged: 0,
            suppressed: 0,
        };
    }
    if r.logged < REFUSALS_LOGGED_PER_MINUTE {
        r.logged += 1;
        (true, left_out)
    } else {
        r.suppressed += 1;
        (false, left_out)
    }
}

fn refused(peer: SocketAddr, why: String) {
    let (log, left_out) = note_refusal();
    if left_out > 0 {
        tracing::warn!(
            "{left_out} more refused TLS connections in the last minute were not logged one by one"
        );
    }
    if log {
        tracing::warn!(%peer, "{why}");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Pem { path: String, detail: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            detail: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// The server side of mutual TLS: our certificate, and client certificates required and
/// checked against our CA.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in certs(&files.ca)? {
        roots.add(ca).map_err(|e| TlsError::Pem {
            path: files.ca.display().to_string(),
            detail: e.to_string(),
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| TlsError::Pem {
        path: files.key.display().to_string(),
        detail: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert)?, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

type Accepted = Result<TlsStream<TcpStream>, std::io::Error>;

/// Accepts connections on `listener` and yields those whose handshake succeeded; each
/// handshake runs in its own task so a slow client holds up no one.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Accepted> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the others.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                break;
            }
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Some(tls) = handshake(&acceptor, tcp, peer).await {
                    let _ = tx.send(Ok(tls)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            refused(peer, format!("refused a TLS connection: {e}"));
            None
        }
        Err(_) => {
            refused(
                peer,
                format!("dropped a TLS connection: no handshake within {HANDSHAKE_TIMEOUT:?}"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_a_few_a_minute() {
        let logged = (0..50).filter(|_| note_refusal().0).count();
        assert!(logged <= REFUSALS_LOGGED_PER_MINUTE as usize, "{logged}");
    }
}
