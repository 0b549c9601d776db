//! The HTTP endpoints. Every error body is `{"error": {"message": ..., "type": ...}}`.

use crate::batcher::{Batcher, Job, JobError, Op, Output};
use crate::metrics::Metrics;
use crate::ServeConfig;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fff_bert::tokenizer::Encoding;
use fff_bert::{Pipeline, Pooling};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::oneshot;

/// What `/info` says about the model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The folder, hub id or random-model name it came from.
    pub name: String,
    /// Random weights (for benchmarks), not a trained checkpoint.
    pub random: bool,
    /// How FFF blocks run (`kernel` or `masked`).
    pub ffn_mode: String,
}

/// Everything the handlers share.
pub struct AppState {
    /// Limits and batching settings.
    pub config: ServeConfig,
    /// The model, once loaded.
    pub pipeline: Arc<OnceLock<Arc<Pipeline>>>,
    /// Where jobs queue.
    pub batcher: Batcher,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// What `/info` reports.
    pub info: ModelInfo,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind}});
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

type ApiResult = Result<Response, ApiError>;

/// The router with every endpoint, the body limit and the metrics layer.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/embed", post(tei_embed))
        .route("/fill-mask", post(fill_mask))
        .route("/classify", post(classify))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Counts every answer by endpoint and status, and times it.
async fn record(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let response = next.run(req).await;
    s.metrics
        .requests
        .with_label_values(&[endpoint.as_str(), response.status().as_str()])
        .inc();
    s.metrics
        .latency
        .with_label_values(&[endpoint.as_str()])
        .observe(start.elapsed().as_secs_f64());
    response
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found_error",
        "no such endpoint; see GET /info",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method not allowed on this endpoint",
    )
}

/// The body as `T`, or a 413 / 400 naming what is wrong.
fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "the request body is larger than the server's limit (see GET /info)",
            )
        } else {
            ApiError::invalid(format!("cannot read the request body: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// One text or a list of texts.
#[derive(Deserialize)]
#[serde(untagged)]
enum Texts {
    One(String),
    Many(Vec<String>),
}

impl Texts {
    fn into_vec(self) -> Vec<String> {
        match self {
            Texts::One(t) => vec![t],
            Texts::Many(v) => v,
        }
    }
}

fn pipeline(s: &AppState) -> Result<Arc<Pipeline>, ApiError> {
    s.pipeline.get().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded_error",
            "the model is still loading",
        )
    })
}

/// Checks the count and sizes of the inputs.
fn check_texts(s: &AppState, texts: &[String]) -> Result<(), ApiError> {
    if texts.is_empty() {
        return Err(ApiError::invalid(
            "`input` is empty: give a text or a list of texts",
        ));
    }
    if texts.len() > s.config.max_inputs {
        return Err(ApiError::invalid(format!(
            "{} inputs in one request; at most {}",
            texts.len(),
            s.config.max_inputs
        )));
    }
    for (i, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            return Err(ApiError::invalid(format!("input {i} is empty")));
        }
        let n = t.chars().count();
        if n > s.config.max_chars {
            return Err(ApiError::invalid(format!(
                "input {i} has {n} characters; at most {}",
                s.config.max_chars
            )));
        }
    }
    Ok(())
}

/// Queues a job and waits for its result (or the request timeout).
async fn run(
    s: &AppState,
    op: Op,
    encodings: Vec<Encoding>,
    inject_panic: bool,
) -> Result<Output, ApiError> {
    let (reply, rx) = oneshot::channel();
    s.batcher
        .submit(Job {
            op,
            encodings,
            inject_panic,
            reply,
        })
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded_error",
                "the request queue is full; retry later",
            )
        })?;
    let result = tokio::time::timeout(s.config.request_timeout, rx)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout_error",
                "the request waited longer than the server's timeout",
            )
        })?
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the model thread stopped",
            )
        })?;
    result.map_err(|e| match e {
        JobError::Invalid(m) => ApiError::invalid(m),
        JobError::Model(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", m),
        JobError::Panic => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            JobError::Panic.to_string(),
        ),
    })
}

fn tokenize(
    p: &Pipeline,
    texts: &[String],
    encode: impl Fn(&Pipeline, &str) -> fff_bert::Result<Encoding>,
) -> Result<Vec<Encoding>, ApiError> {
    texts
        .iter()
        .map(|t| encode(p, t).map_err(|e| ApiError::invalid(e.to_string())))
        .collect()
}

/// The texts embedded: (vectors, prompt tokens, truncated tokens).
async fn embed(
    s: &AppState,
    texts: Vec<String>,
    pooling: Option<Pooling>,
    normalize: Option<bool>,
) -> Result<(Vec<Vec<f32>>, usize, usize), ApiError> {
    check_texts(s, &texts)?;
    let p = pipeline(s)?;
    let pooling = p.pooling(pooling, normalize);
    let encodings = tokenize(&p, &texts, |p, t| p.tokenizer.encode_text(t))?;
    let tokens = encodings.iter().map(|e| e.ids.len()).sum();
    let truncated = encodings.iter().map(|e| e.truncated).sum();
    let panic = injected(s, &texts);
    match run(s, Op::Embed(pooling), encodings, panic).await? {
        Output::Vectors(v) => Ok((v, tokens, truncated)),
        Output::Masks(_) => unreachable!("an embedding job returns vectors"),
    }
}

fn injected(s: &AppState, texts: &[String]) -> bool {
    s.config
        .panic_on
        .as_deref()
        .is_some_and(|p| texts.iter().any(|t| t == p))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAiRequest {
    input: Texts,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    pooling: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

/// The pooling a request names; `None` for the model's own.
fn pooling_of(name: Option<&str>) -> Result<Option<Pooling>, ApiError> {
    name.map(str::parse).transpose().map_err(ApiError::invalid)
}

/// `POST /v1/embeddings`, OpenAI's format.
async fn openai_embeddings(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    let req: OpenAiRequest = parse_body(body)?;
    if let Some(f) = req.encoding_format.as_deref() {
        if f != "float" {
            return Err(ApiError::invalid(format!(
                "encoding_format `{f}` is not supported; use float"
            )));
        }
    }
    if req.dimensions.is_some() {
        return Err(ApiError::invalid("`dimensions` is not supported"));
    }
    let pooling = pooling_of(req.pooling.as_deref())?;
    let (vectors, tokens, truncated) = embed(&s, req.input.into_vec(), pooling, None).await?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| json!({"object": "embedding", "index": index, "embedding": embedding}))
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": req.model.unwrap_or_else(|| s.info.name.clone()),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "truncated_tokens": truncated},
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeiRequest {
    inputs: Texts,
    #[serde(default = "yes")]
    normalize: bool,
    #[serde(default = "yes")]
    truncate: bool,
    #[serde(default)]
    pooling: Option<String>,
}

fn yes() -> bool {
    true
}

/// `POST /embed`, text-embeddings-inference's format: a list of vectors (normalized by
/// default).
async fn tei_embed(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    let req: TeiRequest = parse_body(body)?;
    let pooling = pooling_of(req.pooling.as_deref())?;
    let normalize = Some(req.normalize);
    let (vectors, _, truncated) = embed(&s, req.inputs.into_vec(), pooling, normalize).await?;
    if !req.truncate && truncated > 0 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("inputs exceed the model's maximum sequence length by {truncated} tokens; pass \"truncate\": true"),
        ));
    }
    let mut r = Json(vectors).into_response();
    r.headers_mut().insert(
        "x-truncated-tokens",
        HeaderValue::from_str(&truncated.to_string()).expect("digits"),
    );
    Ok(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FillMaskRequest {
    inputs: String,
    #[serde(default = "five")]
    top_k: usize,
}

fn five() -> usize {
    5
}

/// `POST /fill-mask`: the top tokens at each `<mask>` of one text.
async fn fill_mask(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    let req: FillMaskRequest = parse_body(body)?;
    if req.top_k == 0 || req.top_k > 100 {
        return Err(ApiError::invalid(format!(
            "top_k {} must be in 1..=100",
            req.top_k
        )));
    }
    let texts = vec![req.inputs];
    check_texts(&s, &texts)?;
    let p = pipeline(&s)?;
    let enc = p
        .tokenizer
        .encode_mlm(&texts[0])
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    if !enc.ids.contains(&p.tokenizer.mask) {
        return Err(ApiError::invalid(p.no_mask(&texts[0], &enc).to_string()));
    }
    let truncated = enc.truncated;
    let panic = injected(&s, &texts);
    let Output::Masks(mut masks) =
        run(&s, Op::FillMask { top_k: req.top_k }, vec![enc], panic).await?
    else {
        unreachable!("a fill-mask job returns masks")
    };
    let predictions: Vec<Value> = masks
        .pop()
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            let top: Vec<Value> = m
                .top
                .into_iter()
                .map(|(token, token_str, score)| json!({"token": token, "token_str": token_str, "score": score}))
                .collect();
            json!({"position": m.position, "top": top})
        })
        .collect();
    Ok(Json(json!({"predictions": predictions, "truncated_tokens": truncated})).into_response())
}

/// A text or a pair of texts to classify.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClassifyInput {
    One(String),
    Pair(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ClassifyInputs {
    Single(ClassifyInput),
    Many(Vec<ClassifyInput>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyRequest {
    inputs: ClassifyInputs,
}

/// `POST /classify`: label probabilities per text or pair.
async fn classify(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    let req: ClassifyRequest = parse_body(body)?;
    let items = match req.inputs {
        ClassifyInputs::Single(i) => vec![i],
        ClassifyInputs::Many(v) => v,
    };
    let mut pairs = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        pairs.push(match item {
            ClassifyInput::One(a) => (a, None),
            ClassifyInput::Pair(mut v) if v.len() == 2 => {
                let b = v.pop();
                (v.pop().expect("two texts"), b)
            }
            ClassifyInput::Pair(v) => {
                return Err(ApiError::invalid(format!(
                    "input {i}: a pair has two texts, found {}",
                    v.len()
                )))
            }
        });
    }
    let firsts: Vec<String> = pairs.iter().map(|(a, _)| a.clone()).collect();
    check_texts(&s, &firsts)?;
    let p = pipeline(&s)?;
    if !p.model.has_classification_head() {
        return Err(ApiError::invalid(
            "this checkpoint has no classification head (num_labels and classification_head are not set in its config)",
        ));
    }
    let encodings = pairs
        .iter()
        .map(|(a, b)| p.tokenizer.encode_classify(a, b.as_deref()))
        .collect::<fff_bert::Result<Vec<_>>>()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let panic = injected(&s, &firsts);
    let Output::Vectors(probs) = run(&s, Op::Classify, encodings, panic).await? else {
        unreachable!("a classify job returns vectors")
    };
    let labels = &p.model.config().labels;
    let out: Vec<Vec<Value>> = probs
        .into_iter()
        .map(|row| {
            row.into_iter()
                .enumerate()
                .map(|(i, score)| {
                    let label = labels
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("LABEL_{i}"));
                    json!({"label": label, "score": score})
                })
                .collect()
        })
        .collect();
    Ok(Json(out).into_response())
}

/// `GET /health`: 200 once the model is loaded, 503 before.
async fn health(State(s): State<Arc<AppState>>) -> ApiResult {
    pipeline(&s)?;
    Ok(Json(json!({"status": "ok"})).into_response())
}

/// `GET /info`: the model, its settings, the FFN mode, threads and limits.
async fn info(State(s): State<Arc<AppState>>) -> ApiResult {
    let model = s.pipeline.get().map(|p| {
        let c = p.model.config();
        json!({
            "layers": c.layers, "hidden": c.hidden, "heads": c.heads, "vocab_size": c.vocab_size,
            "max_seq_length": c.max_seq_length, "family": c.family.to_string(),
            "max_input_tokens": p.tokenizer.max_len,
            "pooling": p.embedding.pooling.modes.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            "normalize": p.embedding.pooling.normalize,
            "mlm_head": p.model.has_mlm_head(), "classification_head": p.model.has_classification_head(),
        })
    });
    Ok(Json(json!({
        "model": s.info.name,
        "random_weights": s.info.random,
        "loaded": model.is_some(),
        "config": model,
        "ffn_mode": s.info.ffn_mode,
        "threads": s.config.threads,
        "limits": s.config,
        "endpoints": ["POST /v1/embeddings", "POST /embed", "POST /fill-mask", "POST /classify", "GET /health", "GET /info", "GET /metrics"],
    }))
    .into_response())
}

/// `GET /metrics`, Prometheus's text format.
async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}
