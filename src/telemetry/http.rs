//! `/metrics` (Prometheus text format), `/healthz` (200 while the gate makes progress where its
//! dependencies let it) and `/readyz` (200 only while the gate consumes and commits; 503 while
//! starting, draining, with no partitions, a stalled loop, or Kafka or Redis unreachable). Both
//! are judged here, on the server's own task, from traces the loop leaves (see [`super::health`]);
//! a 503 says why in its body.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Instant};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};

use super::Telemetry;

async fn metrics(State(t): State<Arc<Telemetry>>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], t.render())
}

async fn healthz(State(t): State<Arc<Telemetry>>) -> (StatusCode, String) {
    match t.liveness(Instant::now()) {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {why}\n")),
    }
}

async fn readyz(State(t): State<Arc<Telemetry>>) -> (StatusCode, String) {
    match t.readiness(Instant::now()) {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

pub fn router(telemetry: Arc<Telemetry>) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(telemetry)
}

/// Binds `addr` (an error names `metrics.listen`) and serves until `shutdown` resolves. Returns
/// the bound address (port 0 picks a free one) and the server task.
pub async fn serve(addr: &str, telemetry: Arc<Telemetry>, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with(addr, "metrics.listen", telemetry, Router::new(), shutdown).await
}

/// [`serve`] with more routes (the review bridge's webhook) merged in; `key` is the setting that
/// gave `addr`, named in a bind error.
pub async fn serve_with(
    addr: &str,
    key: &str,
    telemetry: Arc<Telemetry>,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("{key} = {addr:?}: cannot bind: {e}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(telemetry).merge(extra)).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, task))
}
