//! The controller's CPU work off the request path: every rollout's verdicts, the gauges, the
//! UI's history and the checkpoints run on one thread of their own, at a lower scheduling
//! priority ([`NICENESS`]). A tick at a thousand rollouts then never occupies a request
//! worker, and when a request and the evaluation both want the CPU the kernel runs the request.
//!
//! The work itself takes the engine lock one rollout at a time (see `Shared::assess_all`), so
//! ingestion, which needs the lock briefly, is never held behind a whole tick either; and the
//! controller does not wait for it (`start_tick`, `finish_tick`), so neither is a command.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use tokio::sync::oneshot;

/// How much lower than the request threads the evaluation thread is scheduled (`nice`).
pub const NICENESS: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// A handle to the evaluation thread; it ends when the handle is dropped.
pub struct Evaluator {
    jobs: mpsc::Sender<Job>,
}

impl Evaluator {
    /// Starts the thread.
    pub fn start() -> std::io::Result<Evaluator> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("stagegate-evaluate".into())
            .spawn(move || {
                lower_priority();
                while let Ok(job) = queue.recv() {
                    // A panicking job loses its answer (its caller sees `None`), not the thread.
                    if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
                        tracing::error!("an evaluation job panicked; its work was lost");
                    }
                }
            })?;
        Ok(Evaluator { jobs })
    }

    /// Runs `work` on the evaluation thread and waits for its result without holding an async
    /// worker; `None` if the thread is gone or the work panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(work());
            }))
            .ok()?;
        rx.await.ok()
    }

    /// Runs `work` on the evaluation thread without waiting for it (after every job queued
    /// before it, before every job queued after); a panic in it is logged.
    pub fn submit(&self, work: impl FnOnce() + Send + 'static) {
        if self.jobs.send(Box::new(work)).is_err() {
            tracing::error!("the evaluation thread is gone; work dropped");
        }
    }
}

/// Lowers the calling thread's priority: on Linux `setpriority(PRIO_PROCESS, tid)` applies to
/// that one thread. Failing to is harmless (the work still runs off the request workers).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), NICENESS) {
            tracing::debug!(error = %e, "could not lower the evaluation thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_in_order_and_survives_a_panic() {
        let e = Evaluator::start().expect("thread");
        assert_eq!(e.run(|| 1 + 1).await, Some(2));
        #[allow(clippy::panic, reason = "the test is about a panicking job")]
        let lost = e.run(|| -> u8 { panic!("boom") }).await;
        assert_eq!(lost, None);
        assert_eq!(e.run(|| "still here").await, Some("still here"));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_thread_runs_at_a_lower_priority() {
        let e = Evaluator::start().expect("thread");
        let nice = e
            .run(|| rustix::process::getpriority_process(Some(rustix::thread::gettid())))
            .await
            .expect("ran")
            .expect("getpriority");
        assert_eq!(nice, NICENESS);
    }
}
