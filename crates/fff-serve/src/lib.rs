//! `fff serve`: an HTTP server for BERT-family models (Hugging Face BERT, sentence-transformers,
//! UltraFastBERT / crammedBERT).
//!
//! - [`api`]: the endpoints (OpenAI's `/v1/embeddings`, text-embeddings-inference's `/embed`,
//!   `/fill-mask`, `/classify`, `/health`, `/info`, `/metrics`) and their JSON errors;
//! - [`batcher`]: dynamic batching: requests queue (bounded) and run together on the model's
//!   own thread pool, grouped by operation, up to a token budget or a short wait;
//! - [`metrics`]: Prometheus counters and histograms;
//! - [`loadtest`]: `fff bench serve`, concurrent clients against a server on loopback.
//!
//! The model runs on its own threads, never on the async runtime's; a request holds no state
//! after it is answered, so replicas scale out behind any load balancer.

#![warn(missing_docs)]

pub mod api;
pub mod batcher;
pub mod loadtest;
pub mod metrics;

use api::{AppState, ModelInfo};
use batcher::Batcher;
use fff_bert::Pipeline;
use metrics::Metrics;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// Limits and batching settings of a server.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServeConfig {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most inputs (texts) in one request.
    pub max_inputs: usize,
    /// Most characters in one input (longer inputs are refused; tokens beyond the model's
    /// maximum sequence length are truncated and reported).
    pub max_chars: usize,
    /// Most requests waiting for the model; beyond it, `503` with `Retry-After`.
    pub queue_capacity: usize,
    /// Most tokens in one model batch (batches are packed: no padding).
    pub max_batch_tokens: usize,
    /// How long the first request of a batch waits for others to join it.
    #[serde(serialize_with = "as_millis")]
    pub max_wait: Duration,
    /// How long a request may wait for its result before `504`.
    #[serde(serialize_with = "as_millis")]
    pub request_timeout: Duration,
    /// Threads of the model's pool.
    pub threads: usize,
    /// Group concurrent requests into one model call (off: each request runs alone).
    pub batching: bool,
    /// For tests of the failure path: a batch holding an input equal to this text panics.
    #[serde(skip)]
    #[doc(hidden)]
    pub panic_on: Option<String>,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_body_bytes: 1 << 20,
            max_inputs: 64,
            max_chars: 20_000,
            queue_capacity: 256,
            max_batch_tokens: 4096,
            max_wait: Duration::from_millis(5),
            request_timeout: Duration::from_secs(30),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            batching: true,
            panic_on: None,
        }
    }
}

/// Serves on `listener` until `shutdown` completes: the model is built by `load` on its own
/// thread (`/health` answers 503 until it is ready), then requests are answered; at shutdown
/// the server stops accepting, finishes the requests in flight and returns.
pub async fn serve(
    listener: TcpListener,
    load: impl FnOnce() -> anyhow::Result<Pipeline> + Send + 'static,
    config: ServeConfig,
    info: ModelInfo,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(OnceLock::new());
    let (batcher, model_thread) = Batcher::start(load, &config, metrics.clone(), ready.clone())?;
    let state = Arc::new(AppState {
        config,
        pipeline: ready,
        batcher,
        metrics,
        info,
    });
    let app = api::router(state.clone());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    // The last queue handle goes with the state: the model thread then ends.
    drop(state);
    let loaded = tokio::task::spawn_blocking(move || model_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the model thread panicked"))?;
    served?;
    loaded
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
