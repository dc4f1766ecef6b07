//! `/metrics` (Prometheus text format), `/healthz` (the process answers) and `/readyz` (200 only
//! while the gate consumes and commits; 503 while starting, draining, or when Kafka or Redis is
//! unreachable).

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};

use super::Telemetry;

async fn metrics(State(t): State<Arc<Telemetry>>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], t.render())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(t): State<Arc<Telemetry>>) -> (StatusCode, &'static str) {
    if t.is_ready() { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}

pub fn router(telemetry: Arc<Telemetry>) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(telemetry)
}

/// Binds `addr` (an error names `metrics.listen`) and serves until `shutdown` resolves. Returns
/// the bound address (port 0 picks a free one) and the server task.
pub async fn serve(
    addr: &str,
    telemetry: Arc<Telemetry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
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
