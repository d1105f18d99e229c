//! Opening a mutual-TLS channel to the server.

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::config::ClientConfig;
use crate::error::{chain, ClientError};

fn read(what: &str, path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Config(format!("cannot read the {what} {}: {e}", path.display())))
}

pub async fn channel(config: &ClientConfig) -> Result<Channel, ClientError> {
    let (cert, key) = match (&config.cert, &config.key) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            return Err(ClientError::Config(format!(
                "{}: no client certificate (set cert and key); the server accepts only clients \
                 with a certificate from its CA",
                config.path.display()
            )))
        }
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("CA certificate", &config.ca)?))
        .identity(Identity::from_pem(
            read("client certificate", cert)?,
            read("client key", key)?,
        ));
    if let Some(name) = &config.server_name {
        tls = tls.domain_name(name.clone());
    }
    let connect_err = |e: tonic::transport::Error| ClientError::Connect {
        server: config.server.clone(),
        detail: chain(&e),
    };
    Channel::from_shared(config.server.clone())
        .map_err(|e| ClientError::Config(format!("server = {:?}: {e}", config.server)))?
        .tls_config(tls)
        .map_err(connect_err)?
        .connect_timeout(std::time::Duration::from_secs(10))
        // Fetches and restores stream to us in chunks as pushes do to the server (STREAM_WINDOW).
        .initial_stream_window_size(walvault_proto::STREAM_WINDOW)
        .initial_connection_window_size(walvault_proto::CONNECTION_WINDOW)
        .timeout(config.timeout)
        .connect()
        .await
        .map_err(connect_err)
}
