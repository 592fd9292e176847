//! Waiting on AWS: every wait polls the resource's status, reports it with the elapsed
//! time, and gives up after the configured timeout (running the command again resumes it,
//! because every step first looks at what already exists).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{AwsError, Result};

/// Where progress lines go (the CLI prints them; by default they are only traced).
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// One look at a resource being waited on.
pub(crate) enum Poll<T> {
    /// The wait is over.
    Done(T),
    /// Not yet; the resource's status now.
    Pending(String),
}

/// Polls `probe` every `interval` until it is done or `timeout` passes; `what` names the
/// wait in progress lines and in the timeout error.
pub(crate) async fn until<T, F, Fut>(
    progress: &Progress,
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>>>,
{
    let started = Instant::now();
    let mut last = String::from("unknown");
    loop {
        match probe().await? {
            Poll::Done(value) => {
                if started.elapsed() >= interval {
                    progress(&format!(
                        "{what}: done after {}",
                        elapsed_text(started.elapsed())
                    ));
                }
                return Ok(value);
            }
            Poll::Pending(status) => {
                if status != last || started.elapsed().as_secs() % 60 < interval.as_secs() {
                    progress(&format!(
                        "{what}: {status} ({} elapsed)",
                        elapsed_text(started.elapsed())
                    ));
                }
                tracing::debug!(what, %status, elapsed_s = started.elapsed().as_secs(), "waiting");
                last = status;
            }
        }
        if started.elapsed() >= timeout {
            return Err(AwsError::Timeout {
                what: what.to_string(),
                seconds: timeout.as_secs(),
                last,
            });
        }
        tokio::time::sleep(interval).await;
    }
}

/// What a status wait waits for.
pub(crate) enum Goal<'a> {
    /// The resource reports this status.
    Status(&'a str),
    /// The resource no longer exists.
    Gone,
}

/// Polls `status` (the resource's status word, `None` when it does not exist) every
/// `interval` until it reaches `goal` or `timeout` passes. A missing resource is "not
/// there yet" while waiting for a status.
pub(crate) async fn for_status<F, Fut>(
    progress: &Progress,
    what: &str,
    timeout: Duration,
    interval: Duration,
    goal: Goal<'_>,
    mut status: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<String>>>,
{
    until(progress, what, timeout, interval, || {
        let now = status();
        let goal = &goal;
        async move {
            Ok(match (now.await?, goal) {
                (None, Goal::Gone) => Poll::Done(()),
                (None, Goal::Status(_)) => Poll::Pending("not there yet".into()),
                (Some(s), Goal::Status(want)) if s == *want => Poll::Done(()),
                (Some(s), _) => Poll::Pending(s),
            })
        }
    })
    .await
}

/// `1m05s`, `42s`, `0.4s`.
fn elapsed_text(elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if secs >= 10 {
        format!("{secs}s")
    } else {
        format!("{:.1}s", elapsed.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn a_wait_reports_each_new_status_and_times_out_naming_the_last_one() {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let progress: Progress = Arc::new(move |l: &str| sink.lock().unwrap().push(l.into()));
        let polls = Mutex::new(0);
        let result: Result<()> = until(
            &progress,
            "instance x",
            Duration::from_millis(150),
            Duration::from_millis(20),
            || async {
                let mut n = polls.lock().unwrap();
                *n += 1;
                Ok(Poll::Pending(
                    if *n < 3 { "creating" } else { "backing-up" }.into(),
                ))
            },
        )
        .await;
        match result {
            Err(AwsError::Timeout { what, last, .. }) => {
                assert_eq!(what, "instance x");
                assert_eq!(last, "backing-up");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        let lines = lines.lock().unwrap();
        assert!(lines[0].starts_with("instance x: creating ("), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("backing-up")), "{lines:?}");
        assert!(*polls.lock().unwrap() >= 5);
    }

    #[tokio::test]
    async fn a_wait_returns_what_the_probe_found() {
        let progress: Progress = Arc::new(|_: &str| {});
        let found = until(
            &progress,
            "snapshot s",
            Duration::from_secs(5),
            Duration::from_millis(10),
            || async { Ok(Poll::Done(42)) },
        )
        .await
        .unwrap();
        assert_eq!(found, 42);
    }
}
