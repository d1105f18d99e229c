//! Retrying what a network blip or a restarting server interrupts, within a bound: the
//! configuration's `retry_secs`, with a backoff from a quarter second to five seconds. Each
//! retry says so on stderr (PostgreSQL puts it in its log).

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{ClientError, Patience};

const FIRST_WAIT: Duration = Duration::from_millis(250);
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Attempts after a connection that closed under us (see [`Patience::Brief`]).
const BRIEF_RETRIES: u32 = 2;

/// Runs `attempt` until it succeeds, fails for good, or `budget` is spent on transient
/// failures; the last error is returned then.
pub async fn retrying<T, F, Fut>(budget: Duration, mut attempt: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let deadline = Instant::now() + budget;
    let mut wait = FIRST_WAIT;
    let mut brief = 0;
    loop {
        let e = match attempt().await {
            Err(e) => e,
            ok => return ok,
        };
        let again = match e.patience() {
            Some(Patience::Patient) => true,
            Some(Patience::Brief) => {
                brief += 1;
                brief <= BRIEF_RETRIES
            }
            None => false,
        };
        if !again || Instant::now() + wait >= deadline {
            return Err(e);
        }
        // `e` names what failed already; say only that we try again.
        eprintln!("walvault: {e}; retrying in {:.1} s", wait.as_secs_f64());
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_within_the_budget() {
        let calls = Cell::new(0);
        let r: Result<u32, _> = retrying(Duration::from_secs(3), || {
            calls.set(calls.get() + 1);
            async {
                if calls.get() < 3 {
                    Err(ClientError::Connect {
                        server: "https://b:7400".into(),
                        detail: "connection refused".into(),
                    })
                } else {
                    Ok(7)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.get(), 3);

        // Never succeeds: gives up once the budget is spent, with the last error.
        let calls = Cell::new(0);
        let r: Result<u32, _> = retrying(Duration::from_secs(3), || {
            calls.set(calls.get() + 1);
            async {
                Err(ClientError::Connect {
                    server: "https://b:7400".into(),
                    detail: "connection refused".into(),
                })
            }
        })
        .await;
        assert!(r.unwrap_err().to_string().contains("connection refused"));

        // A connection closed under us: two quick attempts more, not the whole budget.
        let calls = Cell::new(0);
        let r: Result<u32, _> = retrying(Duration::from_secs(30), || {
            calls.set(calls.get() + 1);
            async {
                Err(ClientError::Server {
                    context: "push x".into(),
                    code: tonic::Code::Cancelled,
                    message: "connection closed".into(),
                })
            }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.get(), 3);
        assert!((3..=6).contains(&calls.get()), "{}", calls.get());

        // A refusal is not retried.
        let calls = Cell::new(0);
        let r: Result<u32, _> = retrying(Duration::from_secs(3), || {
            calls.set(calls.get() + 1);
            async {
                Err(ClientError::Server {
                    context: "push x".into(),
                    code: tonic::Code::PermissionDenied,
                    message: "no".into(),
                })
            }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.get(), 1);
    }
}
