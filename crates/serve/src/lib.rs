//! tsukuru-serve: an OpenAI-compatible HTTP API over the inference engine ([`tsukuru_infer::engine`]).
//!
//! Routes: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`
//! (with `logprobs` and `echo`, so log-likelihood clients such as lm-evaluation-harness's
//! `local-completions` work), streaming as Server-Sent Events in OpenAI's chunk format;
//! `GET /metrics` ([`metrics`], Prometheus text); `GET /` a web chat page (streaming, multi-turn,
//! no external assets; with API keys set it is opened as `/?key=KEY`).
//! Limits: with API keys set every route but `/health` needs `Authorization: Bearer KEY`; bodies
//! over 2 MB, malformed JSON and prompts longer than the context get a 4xx in OpenAI's error format;
//! a full queue answers 429 with `Retry-After`; a client that disconnects cancels its request.

pub mod metrics;
pub mod openai;
mod routes;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;
use tsukuru_infer::engine::Engine;
use tsukuru_tokenizer::Tok;

/// The web chat page served at `/`: multi-turn, streaming, no external assets.
pub const CHAT_PAGE: &str = include_str!("chat.html");

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// An oversized body up to this size is read to its end before the 413 goes out, so the client,
/// still sending, is not cut off mid-write (it would see a broken pipe instead of the error).
/// Larger ones are refused at once and the connection closed.
const DRAIN_BYTES: u64 = 64 << 20;

/// What the server needs besides the engine.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The name `/v1/models` lists and responses carry.
    pub model_name: String,
    /// Accepted API keys; empty: no authentication.
    pub api_keys: Vec<String>,
    /// A request still running after this long ends with what it has.
    pub request_timeout: Duration,
}

/// Shared by every handler.
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// The model's tokenizer (prompts are encoded in the handlers).
    pub tok: Tok,
    /// Settings.
    pub cfg: ServeConfig,
    /// Measurements for `/metrics`.
    pub metrics: metrics::Metrics,
}

impl AppState {
    /// The state of a server over `engine`.
    pub fn new(engine: Engine, tok: Tok, cfg: ServeConfig) -> Self {
        Self { engine, tok, cfg, metrics: metrics::Metrics::default() }
    }
}

/// An error response in OpenAI's format.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    retry_after: Option<u64>,
}

impl ApiError {
    /// A 400 naming the bad field.
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            retry_after: None,
        }
    }

    /// An error with its own status.
    pub fn status(status: StatusCode, message: impl Into<String>, kind: &'static str) -> Self {
        Self { status, message: message.into(), kind, param: None, retry_after: None }
    }

    /// A 429 asking the client to come back after `seconds`.
    pub fn busy(message: impl Into<String>, seconds: u64) -> Self {
        Self { retry_after: Some(seconds), ..Self::status(StatusCode::TOO_MANY_REQUESTS, message, "rate_limit_error") }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(openai::error_body(&self.message, self.kind, self.param));
        let mut response = (self.status, body).into_response();
        if let Some(s) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        response
    }
}

/// The API key a request came with, attached by authentication: requests share cached prompt
/// blocks only with requests of the same key.
#[derive(Debug, Clone)]
pub struct Tenant(pub Arc<str>);

/// Refuses requests without one of the API keys (when keys are set).
async fn authenticate(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    if state.cfg.api_keys.is_empty() {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|k| k.trim().to_string());
    // A browser opening the chat page cannot send a header: the page takes `?key=` instead.
    let page_key = (request.uri().path() == "/")
        .then(|| request.uri().query().unwrap_or_default().split('&').find_map(|kv| kv.strip_prefix("key=")))
        .flatten()
        .map(str::to_string);
    let given = bearer.or(page_key);
    match given {
        Some(key) if state.cfg.api_keys.contains(&key) => {
            request.extensions_mut().insert(Tenant(Arc::from(key)));
            next.run(request).await
        }
        _ => ApiError::status(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key: send `Authorization: Bearer KEY`",
            "authentication_error",
        )
        .into_response(),
    }
}

/// Counts each answered request by route and status.
async fn count(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request.uri().path().to_string();
    let response = next.run(request).await;
    state.metrics.request(&route, response.status().as_u16());
    response
}

/// Answers a body declared larger than [`MAX_BODY_BYTES`] with 413 before any handler sees it,
/// after reading and discarding the rest of it (up to [`DRAIN_BYTES`], for at most 10 s): if the
/// server closed a connection the client was still writing to, the client would get a reset and
/// never read the error. Bodies without a length are cut off by the handlers' limit instead.
async fn refuse_oversized(request: Request, next: Next) -> Response {
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let Some(len) = declared.filter(|&n| n > MAX_BODY_BYTES as u64) else {
        return next.run(request).await;
    };
    if len <= DRAIN_BYTES {
        use tokio_stream::StreamExt;
        let mut body = request.into_body().into_data_stream();
        let drain = async { while let Some(Ok(_)) = body.next().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    }
    ApiError::status(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is {len} bytes, over the limit of {MAX_BODY_BYTES} bytes"),
        "invalid_request_error",
    )
    .into_response()
}

/// `GET /metrics`.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(state.engine.stats());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The application: every route, authentication where keys are set, the body limit.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/models", get(routes::models))
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&state), count))
        .route("/metrics", get(metrics))
        .route("/", get(|| async { axum::response::Html(CHAT_PAGE) }))
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&state), authenticate));
    Router::new()
        .route("/health", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .merge(api)
        .fallback(|| async { ApiError::status(StatusCode::NOT_FOUND, "no such route", "invalid_request_error") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` resolves; requests in flight then finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
