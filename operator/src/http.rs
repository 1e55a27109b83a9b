//! `/healthz`, `/readyz` and `/metrics` of the operator process.
//!
//! - `/healthz`: 200 while the process runs, its control loop has not failed and no watch has
//!   been failing for [`WATCH_FAILURE_LIMIT`] (e.g. 403 after an RBAC change: a restart makes it
//!   visible as a crash loop instead of a silently idle operator).
//! - `/readyz`: 200 once the operator is connected and the CRD is installed (a standby replica
//!   waiting for the leader lease is ready too); 503 before that and while shutting down.
//! - `/metrics`: Prometheus / OpenMetrics text.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// How long a watch may fail without a single success before `/healthz` fails.
pub const WATCH_FAILURE_LIMIT: Duration = Duration::from_secs(120);

/// Shared flags that the probes read.
#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    live: Arc<AtomicBool>,
    /// Per watch (by resource name): since when it has failed without a success in between.
    watch_failing_since: Arc<Mutex<HashMap<&'static str, Instant>>>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            live: Arc::new(AtomicBool::new(true)),
            watch_failing_since: Arc::default(),
        }
    }

    /// Records a watch result; logs the first failure at warn, and at error once it has lasted
    /// [`WATCH_FAILURE_LIMIT`].
    pub fn watch_result(&self, watch: &'static str, error: Option<&dyn std::fmt::Display>) {
        let mut failing = self.watch_failing_since.lock().unwrap();
        match error {
            None => {
                if failing.remove(watch).is_some() {
                    tracing::info!(watch, "watch recovered");
                }
            }
            Some(e) => {
                let since = *failing.entry(watch).or_insert_with(Instant::now);
                let failing_for = since.elapsed();
                if failing_for >= WATCH_FAILURE_LIMIT {
                    tracing::error!(watch, error = %e, failing_for_s = failing_for.as_secs(), "watch keeps failing: reporting unhealthy");
                } else {
                    tracing::warn!(watch, error = %e, "watch failed (retrying with backoff)");
                }
            }
        }
    }

    /// The watches that have failed for longer than `limit`.
    pub fn failing_watches(&self, limit: Duration) -> Vec<&'static str> {
        let failing = self.watch_failing_since.lock().unwrap();
        let mut names: Vec<_> = failing
            .iter()
            .filter(|(_, since)| since.elapsed() >= limit)
            .map(|(name, _)| *name)
            .collect();
        names.sort_unstable();
        names
    }
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst) && self.failing_watches(WATCH_FAILURE_LIMIT).is_empty()
    }
}

async fn healthz(State(h): State<Health>) -> impl IntoResponse {
    let failing = h.failing_watches(WATCH_FAILURE_LIMIT);
    if !h.live.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n".to_string())
    } else if !failing.is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("failing watches: {}\n", failing.join(", ")),
        )
    } else {
        (StatusCode::OK, "ok\n".to_string())
    }
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(health))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let code = buf[9..12].parse().unwrap();
        (code, buf)
    }

    #[tokio::test]
    async fn probes_and_metrics() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Health::new(Arc::new(Metrics::default()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, health.clone(), async {
            let _ = rx.await;
        }));

        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        health.set_ready(true);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        health.set_live(false);
        assert_eq!(get(addr, "/healthz").await.0, 503);
        health.set_live(true);
        // A failing watch: healthy until it has failed for the limit, healthy again on success.
        health.watch_result("pods", Some(&"403 Forbidden"));
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(health.failing_watches(Duration::ZERO), ["pods"]);
        health
            .watch_failing_since
            .lock()
            .unwrap()
            .insert("pods", Instant::now() - WATCH_FAILURE_LIMIT);
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(code, 503);
        assert!(body.contains("failing watches: pods"), "{body}");
        health.watch_result("pods", None);
        assert_eq!(get(addr, "/healthz").await.0, 200);
        health.metrics.reconcile_started();
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("application/openmetrics-text"), "{body}");
        assert!(
            body.contains("inference_operator_reconciles_total 1"),
            "{body}"
        );
        assert_eq!(get(addr, "/nope").await.0, 404);

        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
