//! The HTTP accept loop: a connection cap that fits the file-descriptor limit, header-read and
//! idle timeouts, accept errors that back off instead of spinning, and graceful shutdown.
//!
//! `axum::serve` keeps every connection for as long as the peer likes; a few thousand idle or
//! slowloris connections exhaust the descriptors and `/healthz` stops answering. Here each
//! connection holds a permit from a fixed pool. Past the pool, a small overflow pool still
//! serves one request per connection with a short header timeout (so probes get through while
//! the main pool drains), and beyond that a connection is closed at once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};

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

/// What a connection's watchdog reads: counters the request path bumps, so serving a request
/// costs a few relaxed atomic operations and no clock read or timer.
#[derive(Default)]
struct Activity {
    /// Requests whose headers were read (the service was called).
    served: AtomicU64,
    /// Requests in service now.
    active: AtomicUsize,
    /// Bytes arrived since the last request's headers were read or its response produced:
    /// with none in service, the start of a request head.
    head_pending: AtomicBool,
}

/// A connection's socket that notes, for the watchdog, when request bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.head_pending.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// How a connection's watchdog ends it.
enum Close {
    /// Shutting down with a request in flight: finish it, then close.
    Drain,
    /// Idle, a head that took longer than the header timeout, or shutting down with nothing in
    /// flight: close at once.
    Now,
}

/// Waits until the connection should close, and says how on `close`; returns early once the
/// connection has ended (`close` closed). It closes a connection that has served nothing for
/// `idle` with no request in flight, one whose request head has been arriving for
/// `header_timeout` (a slowloris), and every connection at shutdown. Each rule is checked at
/// the watchdog's period, a quarter of the shorter timeout (25 ms to 1 s), so each fires at
/// most two periods late.
async fn watch_connection(
    mut close: oneshot::Sender<Close>,
    mut stop: watch::Receiver<bool>,
    activity: Arc<Activity>,
    idle: Duration,
    header_timeout: Duration,
) {
    let period =
        (idle.min(header_timeout) / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
    let mut watchdog = tokio::time::interval(period);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_served = 0;
    let mut quiet_since = tokio::time::Instant::now();
    // The request count when a pending head was first seen, and when.
    let mut head_seen: Option<(u64, tokio::time::Instant)> = None;
    let how = loop {
        tokio::select! {
            () = close.closed() => return,
            // At shutdown, a connection with nothing in flight closes at once; one serving a
            // request finishes it first.
            _ = stop.changed() => break if activity.active.load(Ordering::Relaxed) == 0 {
                Close::Now
            } else {
                Close::Drain
            },
            _ = watchdog.tick() => {
                let now = tokio::time::Instant::now();
                let served = activity.served.load(Ordering::Relaxed);
                let active = activity.active.load(Ordering::Relaxed);
                let head_pending = active == 0 && activity.head_pending.load(Ordering::Relaxed);
                if served != last_served || active > 0 {
                    last_served = served;
                    quiet_since = now;
                } else if now.duration_since(quiet_since) >= idle {
                    // Nothing in flight to finish, and a head still arriving is not waited for.
                    break Close::Now;
                }
                if !head_pending {
                    head_seen = None;
                    continue;
                }
                match head_seen {
                    Some((at, since)) if at == served => {
                        if now.duration_since(since) >= header_timeout {
                            break Close::Now;
                        }
                    }
                    _ => head_seen = Some((served, now)),
                }
            }
        }
    };
    let _ = close.send(how);
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
        let stop = stop_rx.clone();
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let activity = Arc::new(Activity::default());
            let tracked = Arc::clone(&activity);
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let api = api.clone();
                let tracked = Arc::clone(&tracked);
                tracked.head_pending.store(false, Ordering::Relaxed);
                tracked.served.fetch_add(1, Ordering::Relaxed);
                tracked.active.fetch_add(1, Ordering::Relaxed);
                async move {
                    let response = api.handle(req).await;
                    tracked.head_pending.store(false, Ordering::Relaxed);
                    tracked.active.fetch_sub(1, Ordering::Relaxed);
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            // No hyper timer: its header-read timeout arms and cancels a timer-wheel entry per
            // request; the watchdog enforces the header timeout from counters instead.
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .keep_alive(keep_alive)
                // Headroom past the API's own limits (`api::request_limits`), so that oversized
                // URIs and headers are refused there, in the JSON error shape, not by hyper.
                // hyper's default header count (100, above the API's `MAX_HEADERS`) parses on
                // the stack; a larger one costs two heap arrays per request.
                .max_buf_size(256 * 1024);
            let io = TokioIo::new(Watched {
                stream,
                activity: Arc::clone(&activity),
            });
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            // A request's every wake-up polls only the connection and a one-shot receiver; the
            // shutdown signal and the watchdog wait in a task of their own, which says when to
            // close (and ends when the connection does).
            let (close_tx, close_rx) = oneshot::channel();
            tokio::spawn(watch_connection(
                close_tx,
                stop,
                activity,
                idle,
                header_timeout,
            ));
            let how = tokio::select! {
                biased;
                _ = conn.as_mut() => return,
                how = close_rx => how,
            };
            if let Ok(Close::Drain) = how {
                // Finish what is in flight, then close; a peer that holds its request open
                // gets no more than one header timeout and a second.
                conn.as_mut().graceful_shutdown();
                let grace = header_timeout + Duration::from_secs(1);
                let _ = tokio::time::timeout(grace, conn).await;
            }
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
