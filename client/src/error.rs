//! The client's errors: each prints as one line that says what failed and, where we know,
//! what to do.

use std::error::Error as _;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the server at {server}: {detail}")]
    Connect { server: String, detail: String },
    /// The server answered with a refusal or failure; its message says why.
    #[error("{context}: {message}")]
    Server {
        context: String,
        code: tonic::Code,
        message: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Integrity(String),
    #[error("{0}")]
    Postgres(String),
}

impl ClientError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| ClientError::Io { context, source }
    }

    pub fn server(context: impl Into<String>) -> impl FnOnce(tonic::Status) -> Self {
        let context = context.into();
        move |s| {
            // Transport failures reach us as statuses too; their sources say what happened.
            let mut message = s.message().to_owned();
            let mut source = s.source();
            while let Some(e) = source {
                let m = e.to_string();
                if !message.contains(&m) {
                    message = format!("{message}: {m}");
                }
                source = e.source();
            }
            // A handshake the server refused surfaces as Unavailable, Unknown or, when the
            // connection drops while the request waits for it, Cancelled.
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ) || message.contains("h2 protocol error")
            {
                message = explain_transport(&message);
            }
            ClientError::Server {
                context,
                code: s.code(),
                message,
            }
        }
    }
}

/// Adds what a bare transport failure most likely means. The server closes the connection
/// without a word when it rejects our certificate during the TLS handshake, so "broken pipe"
/// or "connection reset" on a fresh connection almost always means that.
fn explain_transport(message: &str) -> String {
    let lower = message.to_lowercase();
    let mut out = message
        .split(" For more information")
        .next()
        .unwrap_or(message)
        .to_owned();
    if lower.contains("peer closed connection") || lower.contains("error reading a body") {
        return "the server closed the connection (stopped or restarted?); nothing was \
                committed, run the command again (if it keeps closing, check that the client \
                certificate is issued by this server's CA)"
            .to_owned();
    }
    if lower.contains("broken pipe")
        || lower.contains("connection reset")
        || lower.contains("connection closed")
        || lower.contains("alert")
    {
        out.push_str(
            " (the server closed the connection; if it does so again, check that the client \
             certificate in the configuration is issued by this server's CA and still valid: \
             the server's log says why it refused)",
        );
    }
    out
}

/// The whole source chain of an error on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let m = s.to_string();
        if !out.contains(&m) {
            out = format!("{out}: {m}");
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_handshake_points_at_the_certificate() {
        for raw in [
            "operation was canceled: transport error: connection closed",
            "transport error: connection error: stream closed because of a broken pipe",
            "transport error: connection reset by peer",
        ] {
            let s = tonic::Status::cancelled(raw);
            let ClientError::Server { message, .. } = ClientError::server("list")(s) else {
                panic!("a status maps to a server error");
            };
            assert!(message.contains("certificate"), "{raw} -> {message}");
        }
    }

    #[test]
    fn a_server_gone_mid_body_says_to_run_again() {
        let m = explain_transport("error reading a body from connection: peer closed connection");
        assert!(m.contains("run the command again"), "{m}");
    }
}
