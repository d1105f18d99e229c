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

/// How worth retrying a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// The server cannot be reached (down, restarting, the network away): retry for the
    /// whole budget.
    Patient,
    /// The connection closed under us: a server going away looks like this, and so does a
    /// refused certificate, so only a couple of quick attempts.
    Brief,
}

impl ClientError {
    /// Whether trying again soon may succeed, and for how long it is worth it. Refusals (of
    /// the request or, during the handshake, of our certificate) and damage are final.
    pub fn patience(&self) -> Option<Patience> {
        let text = match self {
            ClientError::Connect { detail, .. } => detail.as_str(),
            ClientError::Server {
                code:
                    tonic::Code::Unavailable
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
                    | tonic::Code::Aborted
                    | tonic::Code::DeadlineExceeded,
                message,
                ..
            } => message.as_str(),
            _ => return None,
        };
        let lower = text.to_lowercase();
        const REFUSED: [&str; 4] = ["alert", "certificate", "handshake", "decrypt"];
        const UNREACHABLE: [&str; 8] = [
            "tcp connect error",
            "connection refused",
            "timed out",
            "deadline",
            "dns error",
            "no route",
            "network is unreachable",
            "not currently accepting",
        ];
        if REFUSED.iter().any(|w| lower.contains(w)) && !lower.contains("tcp connect error") {
            None
        } else if UNREACHABLE.iter().any(|w| lower.contains(w))
            || matches!(self, ClientError::Connect { .. })
        {
            Some(Patience::Patient)
        } else {
            Some(Patience::Brief)
        }
    }

    pub fn is_transient(&self) -> bool {
        self.patience().is_some()
    }

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
        return "the server closed the connection before it answered (stopped or \
                restarted?); whether it did the work is unknown, and running the command \
                again is safe (a WAL file pushed again is accepted again); if it keeps \
                closing, check that the client certificate is issued by this server's CA"
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
        assert!(m.contains("running the command again is safe"), "{m}");
        // It cannot know whether the server committed.
        assert!(!m.contains("nothing was committed"), "{m}");
    }

    #[test]
    fn only_what_may_pass_is_transient() {
        let s = |code, message: &str| ClientError::Server {
            context: "x".into(),
            code,
            message: message.into(),
        };
        let refused_tcp = "tcp connect error: Connection refused (os error 111)";
        assert_eq!(
            s(tonic::Code::Unavailable, refused_tcp).patience(),
            Some(Patience::Patient)
        );
        assert_eq!(
            s(
                tonic::Code::Cancelled,
                "operation was canceled: connection closed"
            )
            .patience(),
            Some(Patience::Brief)
        );
        // A certificate the server refused during the handshake is final.
        assert_eq!(
            s(
                tonic::Code::Unknown,
                "transport error: connection error: received fatal alert: DecryptError"
            )
            .patience(),
            None
        );
        let connect = |detail: &str| ClientError::Connect {
            server: "https://b:7400".into(),
            detail: detail.into(),
        };
        assert_eq!(connect(refused_tcp).patience(), Some(Patience::Patient));
        assert_eq!(
            connect("invalid peer certificate: UnknownIssuer").patience(),
            None
        );
        for code in [
            tonic::Code::NotFound,
            tonic::Code::DataLoss,
            tonic::Code::PermissionDenied,
            tonic::Code::ResourceExhausted,
        ] {
            assert!(!s(code, refused_tcp).is_transient(), "{code:?}");
        }
        assert!(!ClientError::Integrity("bad".into()).is_transient());
    }
}
