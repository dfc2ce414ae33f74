//! The HTTP accept loop: a connection cap that fits the file-descriptor limit, header-read and
//! idle timeouts, accept errors that back off instead of spinning, and graceful shutdown.
//!
//! `axum::serve` keeps every connection for as long as the peer likes; a few thousand idle or
//! slowloris connections exhaust the descriptors and `/healthz` stops answering. Here each
//! connection holds a permit from a fixed pool. Past the pool, a small overflow pool still
//! serves one request per connection with a short header timeout (so probes get through while
//! the main pool drains), and beyond that a connection is closed at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Descriptors kept free for the store, logs and outgoing notifications.
const RESERVED_FDS: u64 = 64;
/// Connections served past the cap, one request each.
const OVERFLOW: usize = 32;

/// Timeouts and limits for the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    /// The configured cap, lowered to fit the process's descriptor limit.
    pub fn effective_connections(&self) -> usize {
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        let fit = soft.saturating_sub(RESERVED_FDS).max(8);
        self.max_connections
            .min(usize::try_from(fit).unwrap_or(usize::MAX))
    }
}

/// When a connection last finished a request, and how many it is serving now.
#[derive(Default)]
struct Activity {
    last_ms: AtomicU64,
    active: AtomicUsize,
}

/// Serves `api` on `listener` until `shutdown` resolves, then drains open connections
/// (at most `drain` long).
pub async fn serve(
    listener: TcpListener,
    api: crate::serve::api::Api,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) {
    let cap = limits.effective_connections();
    tracing::info!(max_connections = cap, "accepting connections");
    let pool = Arc::new(Semaphore::new(cap));
    let overflow = Arc::new(Semaphore::new(OVERFLOW));
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(5);
                stream
            }
            Err(e) => {
                // EMFILE and friends: wait for descriptors to come back instead of spinning.
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (permit, keep_alive, header_timeout) = match Arc::clone(&pool).try_acquire_owned() {
            Ok(p) => (p, true, limits.header_timeout),
            Err(_) => match Arc::clone(&overflow).try_acquire_owned() {
                Ok(p) => (p, false, Duration::from_secs(1).min(limits.header_timeout)),
                Err(_) => {
                    drop(stream);
                    continue;
                }
            },
        };
        let api = api.clone();
        let mut stop = stop_rx.clone();
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let activity = Arc::new(Activity::default());
            activity
                .last_ms
                .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            let tracked = Arc::clone(&activity);
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let api = api.clone();
                let tracked = Arc::clone(&tracked);
                tracked.active.fetch_add(1, Ordering::Relaxed);
                async move {
                    let response = api.handle(req).await;
                    tracked
                        .last_ms
                        .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    tracked.active.fetch_sub(1, Ordering::Relaxed);
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(keep_alive)
                // Headroom past the API's own limits (`api::request_limits`), so that oversized
                // URIs and headers are refused there, in the JSON error shape, not by hyper.
                // hyper's default header count (100, above the API's `MAX_HEADERS`) parses on
                // the stack; a larger one costs two heap arrays per request.
                .max_buf_size(256 * 1024);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let period = idle.clamp(Duration::from_millis(50), Duration::from_secs(1));
            let mut watchdog = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = stop.changed() => break,
                    _ = watchdog.tick() => {
                        let now = started.elapsed().as_millis() as u64;
                        let last = activity.last_ms.load(Ordering::Relaxed);
                        if activity.active.load(Ordering::Relaxed) == 0
                            && now.saturating_sub(last) >= idle.as_millis() as u64
                        {
                            break;
                        }
                    }
                }
            }
            // Idle, or shutting down: finish what is in flight, then close. A peer that is
            // still dribbling a request's headers gets no more than one header timeout.
            conn.as_mut().graceful_shutdown();
            let grace = header_timeout + Duration::from_secs(1);
            let _ = tokio::time::timeout(grace, conn).await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit of `pool` or `overflow`; all back means all closed.
    let all = async {
        let _ = pool
            .acquire_many(u32::try_from(cap).unwrap_or(u32::MAX))
            .await;
        let _ = overflow.acquire_many(OVERFLOW as u32).await;
    };
    let _ = tokio::time::timeout(drain, all).await;
}
