//! The handlers: requests checked and turned into engine requests, the engine's events turned into
//! OpenAI's responses or Server-Sent Event chunks.
//!
//! The engine's channels block, so each response is assembled on a blocking task; a stream's task
//! stops when the client's connection is gone, which drops the engine's receiver and cancels the
//! request.

use crate::metrics::{Metrics, TokenClock};
use crate::openai::{ChatRequest, CompletionRequest, Prompt, Sampling, Usage};
use crate::{ApiError, AppState, Tenant};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tsukuru_infer::engine::{Event, Finish, Request, SubmitError, TokenLogprob};
use tsukuru_infer::SamplingParams;
use tsukuru_tokenizer::chat::{render_prompt, Message, Role};
use tsukuru_tokenizer::special;

/// The prefix-cache namespace of a request: its API key, or one shared namespace without keys.
fn tenant_of(tenant: Option<Extension<Tenant>>) -> Arc<str> {
    tenant.map_or_else(|| Arc::from(""), |Extension(Tenant(key))| key)
}

/// `GET /v1/models`.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [
        { "id": state.cfg.model_name, "object": "model", "created": 0, "owned_by": "tsukuru" }
    ]}))
}

fn parse<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::status(
                status,
                format!("the body is over {} bytes", crate::MAX_BODY_BYTES),
                "invalid_request_error",
            )
        } else {
            ApiError::status(status, e.body_text(), "invalid_request_error")
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("the body is not a valid request: {e}"), None))
}

/// What every choice of a request shares.
struct Plan {
    sampling: SamplingParams,
    stop: Vec<String>,
    n: usize,
    stream: bool,
    usage_chunk: bool,
    presence: f32,
    frequency: f32,
    logit_bias: Vec<(u32, f32)>,
}

fn plan(s: &Sampling) -> Result<Plan, ApiError> {
    let n = s.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ApiError::invalid(format!("n must be between 1 and 16, got {n}"), Some("n")));
    }
    let stop = s.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::invalid(format!("at most 4 stop sequences, got {}", stop.len()), Some("stop")));
    }
    let (presence, frequency) = (s.presence_penalty.unwrap_or(0.0), s.frequency_penalty.unwrap_or(0.0));
    for (name, v) in [("presence_penalty", presence), ("frequency_penalty", frequency)] {
        if !(-2.0..=2.0).contains(&v) {
            return Err(ApiError::invalid(format!("{name} must be between -2 and 2, got {v}"), None));
        }
    }
    // Without a seed every request draws differently, as OpenAI's do.
    let seed =
        s.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    let sampling = SamplingParams {
        temperature: s.temperature.unwrap_or(1.0),
        top_k: s.top_k.unwrap_or(0),
        top_p: s.top_p.unwrap_or(1.0),
        seed,
    };
    sampling.validate().map_err(|e| ApiError::invalid(e.to_string(), None))?;
    let usage_chunk = s.stream_options.as_ref().and_then(|o| o["include_usage"].as_bool()).unwrap_or(false);
    let mut logit_bias = Vec::new();
    for (token, &bias) in s.logit_bias.iter().flatten() {
        let id = token.parse::<u32>().map_err(|_| {
            ApiError::invalid(format!("logit_bias key `{token}` is not a token id"), Some("logit_bias"))
        })?;
        if !(-100.0..=100.0).contains(&bias) {
            return Err(ApiError::invalid(
                format!("logit_bias values must be between -100 and 100, got {bias}"),
                Some("logit_bias"),
            ));
        }
        logit_bias.push((id, bias));
    }
    Ok(Plan { sampling, stop, n, stream: s.stream.unwrap_or(false), usage_chunk, presence, frequency, logit_bias })
}

/// Submits one engine request per choice (seed + index), refusing all if any is refused.
fn submit(state: &AppState, base: Request, n: usize) -> Result<Vec<Receiver<Event>>, ApiError> {
    let deadline = Instant::now() + state.cfg.request_timeout;
    (0..n)
        .map(|i| {
            let mut req = base.clone();
            req.sampling.seed = req.sampling.seed.wrapping_add(i as u64);
            req.deadline = Some(deadline);
            state.engine.submit(req).map_err(|e| match e {
                SubmitError::Busy(_) => ApiError::busy(e.to_string(), 1),
                SubmitError::Invalid(m) => ApiError::invalid(m, Some("prompt")),
                SubmitError::Stopped => {
                    ApiError::status(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), "server_error")
                }
            })
        })
        .collect()
}

/// A finished choice.
#[derive(Default)]
struct Choice {
    text: String,
    tokens: Vec<TokenLogprob>,
    prompt: Vec<Option<TokenLogprob>>,
    finish: Option<Finish>,
    usage: Usage,
    failed: Option<String>,
}

fn drain(rx: Receiver<Event>, metrics: &Metrics) -> Choice {
    let mut c = Choice::default();
    let mut clock = TokenClock::start();
    for event in rx {
        match event {
            Event::Prompt(p) => c.prompt = p,
            Event::Token { logprob, text } => {
                metrics.token(&mut clock);
                c.tokens.push(logprob);
                c.text.push_str(&text);
            }
            Event::Done { text, finish, prompt_tokens, completion_tokens } => {
                c.text.push_str(&text);
                c.finish = Some(finish);
                c.usage = Usage::new(prompt_tokens, completion_tokens);
                break;
            }
            Event::Failed(m) => {
                c.failed = Some(m);
                break;
            }
        }
    }
    c
}

fn finish_reason(f: Option<Finish>) -> &'static str {
    match f {
        Some(Finish::Stop) => "stop",
        _ => "length",
    }
}

fn id(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{prefix}-{nanos:x}")
}

fn created() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Collects every choice on a blocking task.
async fn gather(state: &Arc<AppState>, receivers: Vec<Receiver<Event>>) -> Result<Vec<Choice>, ApiError> {
    let st = Arc::clone(state);
    let choices =
        tokio::task::spawn_blocking(move || receivers.into_iter().map(|rx| drain(rx, &st.metrics)).collect::<Vec<_>>())
            .await
            .map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), "server_error"))?;
    if let Some(m) = choices.iter().find_map(|c| c.failed.clone()) {
        return Err(ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, m, "server_error"));
    }
    Ok(choices)
}

fn total_usage(choices: &[Choice]) -> Usage {
    let prompt = choices.first().map_or(0, |c| c.usage.prompt_tokens);
    Usage::new(prompt, choices.iter().map(|c| c.usage.completion_tokens).sum())
}

/// Streams each choice's events as chunks made by `chunk(index, event)`, then a usage chunk when
/// asked for and `[DONE]`.
fn stream(
    state: &Arc<AppState>,
    receivers: Vec<Receiver<Event>>,
    usage_chunk: Option<Value>,
    chunk: impl Fn(usize, &Event) -> Option<Value> + Send + 'static,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Sse, Infallible>>(64);
    let st = Arc::clone(state);
    tokio::task::spawn_blocking(move || {
        let send = |v: Value| tx.blocking_send(Ok(Sse::default().data(v.to_string()))).is_ok();
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        for (i, events) in receivers.into_iter().enumerate() {
            if let Some(first) = chunk(i, &Event::Prompt(Vec::new())) {
                if !send(first) {
                    return;
                }
            }
            let mut clock = TokenClock::start();
            for event in events {
                let last = matches!(event, Event::Done { .. } | Event::Failed(_));
                if matches!(event, Event::Token { .. }) {
                    st.metrics.token(&mut clock);
                }
                if let Event::Done { prompt_tokens: p, completion_tokens: c, .. } = &event {
                    (prompt_tokens, completion_tokens) = (*p, completion_tokens + c);
                }
                if let Event::Failed(m) = &event {
                    let _ = send(crate::openai::error_body(m, "server_error", None));
                    return;
                }
                // The opening chunk above stands for the prompt; its log-probabilities are not streamed.
                if matches!(event, Event::Prompt(_)) {
                    continue;
                }
                // A client that went away ends the task, which cancels the request in the engine.
                if chunk(i, &event).is_some_and(|v| !send(v)) {
                    return;
                }
                if last {
                    break;
                }
            }
        }
        if let Some(mut u) = usage_chunk {
            u["usage"] = json!(Usage::new(prompt_tokens, completion_tokens));
            if !send(u) {
                return;
            }
        }
        let _ = tx.blocking_send(Ok(Sse::default().data("[DONE]")));
    });
    axum::response::Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn chat_logprobs(state: &AppState, tokens: &[TokenLogprob]) -> Value {
    let entry = |id: u32, lp: f32| {
        let text = state.tok.decode(&[id]).unwrap_or_default();
        json!({ "token": text, "logprob": lp, "bytes": text.as_bytes() })
    };
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(t.id, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

/// `POST /v1/chat/completions`.
pub async fn chat(
    State(state): State<Arc<AppState>>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(body)?;
    let p = plan(&req.sampling)?;
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(ApiError::invalid(format!("unknown role `{other}`"), Some("messages"))),
        };
        let content = match &m.content {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(""),
            _ => return Err(ApiError::invalid("message content must be a string or text parts", Some("messages"))),
        };
        messages.push(Message::new(role, content));
    }
    let prompt =
        render_prompt(&state.tok, &messages).map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
    let top = req.top_logprobs.unwrap_or(0);
    if top > 20 {
        return Err(ApiError::invalid(format!("top_logprobs must be at most 20, got {top}"), Some("top_logprobs")));
    }
    let want_logprobs = req.logprobs.unwrap_or(false);
    let max_tokens = req.max_completion_tokens.or(req.max_tokens).unwrap_or(state.engine.context());
    let base = Request {
        prompt,
        sampling: p.sampling,
        max_tokens,
        stop: p.stop.clone(),
        stop_tokens: vec![special::END, special::EOS, special::BOS],
        presence_penalty: p.presence,
        frequency_penalty: p.frequency,
        logit_bias: p.logit_bias.clone(),
        top_logprobs: top,
        prompt_logprobs: false,
        deadline: None,
        tenant: tenant_of(tenant),
    };
    let receivers = submit(&state, base, p.n)?;
    let (id, model, created) = (id("chatcmpl"), state.cfg.model_name.clone(), created());
    if p.stream {
        let head = json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model });
        let usage = p.usage_chunk.then(|| {
            let mut u = head.clone();
            u["choices"] = json!([]);
            u
        });
        let st = Arc::clone(&state);
        return Ok(stream(&state, receivers, usage, move |i, event| {
            let (delta, finish, logprobs) = match event {
                Event::Prompt(_) => (json!({ "role": "assistant", "content": "" }), Value::Null, Value::Null),
                Event::Token { text, logprob } => {
                    let lp =
                        if want_logprobs { chat_logprobs(&st, std::slice::from_ref(logprob)) } else { Value::Null };
                    (json!({ "content": text }), Value::Null, lp)
                }
                Event::Done { text, finish, .. } => {
                    (json!({ "content": text }), json!(finish_reason(Some(*finish))), Value::Null)
                }
                Event::Failed(_) => return None,
            };
            let mut c = head.clone();
            c["choices"] = json!([{ "index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish }]);
            Some(c)
        }));
    }
    let choices = gather(&state, receivers).await?;
    let usage = total_usage(&choices);
    let out: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let logprobs = if want_logprobs { chat_logprobs(&state, &c.tokens) } else { Value::Null };
            json!({ "index": i, "message": { "role": "assistant", "content": c.text }, "logprobs": logprobs,
                    "finish_reason": finish_reason(c.finish) })
        })
        .collect();
    Ok(Json(json!({ "id": id, "object": "chat.completion", "created": created, "model": model,
                    "choices": out, "usage": usage }))
    .into_response())
}

/// OpenAI's completion `logprobs`: tokens, their log-probabilities, the alternatives, offsets.
fn completion_logprobs(state: &AppState, scored: &[Option<TokenLogprob>]) -> Value {
    let (mut tokens, mut lps, mut tops, mut offsets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut offset = 0;
    for t in scored {
        let id = t.as_ref().map(|t| t.id);
        let text = id.map(|id| state.tok.decode(&[id]).unwrap_or_default()).unwrap_or_default();
        tokens.push(json!(text));
        offsets.push(json!(offset));
        offset += text.len();
        match t {
            Some(t) => {
                lps.push(json!(t.logprob));
                let top: serde_json::Map<String, Value> =
                    t.top.iter().map(|&(id, lp)| (state.tok.decode(&[id]).unwrap_or_default(), json!(lp))).collect();
                tops.push(Value::Object(top));
            }
            None => {
                lps.push(Value::Null);
                tops.push(Value::Null);
            }
        }
    }
    json!({ "tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets })
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(body)?;
    let p = plan(&req.sampling)?;
    let echo = req.echo.unwrap_or(false);
    let top = req.logprobs;
    if top.is_some_and(|k| k > 5) {
        return Err(ApiError::invalid("logprobs must be at most 5", Some("logprobs")));
    }
    // (prompt tokens, prompt text, whether the server added BOS)
    let encode = |text: &str| -> Result<(Vec<u32>, String, bool), ApiError> {
        let mut ids = vec![special::BOS];
        ids.extend(state.tok.encode_text(text).map_err(|e| ApiError::invalid(e.to_string(), Some("prompt")))?);
        Ok((ids, text.to_string(), true))
    };
    let from_ids = |ids: Vec<u32>| -> (Vec<u32>, String, bool) {
        let text = state.tok.decode(&ids).unwrap_or_default();
        (ids, text, false)
    };
    let prompts: Vec<(Vec<u32>, String, bool)> = match req.prompt {
        Prompt::One(t) => vec![encode(&t)?],
        Prompt::Many(ts) => ts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
        Prompt::Tokens(ids) => vec![from_ids(ids)],
        Prompt::ManyTokens(all) => all.into_iter().map(from_ids).collect(),
    };
    if prompts.is_empty() || (p.stream && prompts.len() > 1) {
        return Err(ApiError::invalid("give one prompt to stream, and at least one prompt", Some("prompt")));
    }
    let max_tokens = req.max_tokens.unwrap_or(16);
    let mut receivers = Vec::new();
    for (ids, _, _) in &prompts {
        let base = Request {
            prompt: ids.clone(),
            sampling: p.sampling,
            max_tokens,
            stop: p.stop.clone(),
            // Special tokens are never text: a document's end, the next one's start, a turn's end.
            stop_tokens: vec![special::EOS, special::BOS, special::END],
            presence_penalty: p.presence,
            frequency_penalty: p.frequency,
            logit_bias: p.logit_bias.clone(),
            top_logprobs: top.unwrap_or(0),
            prompt_logprobs: echo && top.is_some(),
            deadline: None,
            tenant: tenant_of(tenant.clone()),
        };
        receivers.extend(submit(&state, base, p.n)?);
    }
    let (id, model, created) = (id("cmpl"), state.cfg.model_name.clone(), created());
    if p.stream {
        let head = json!({ "id": id, "object": "text_completion", "created": created, "model": model });
        let usage = p.usage_chunk.then(|| {
            let mut u = head.clone();
            u["choices"] = json!([]);
            u
        });
        let echoed = echo.then(|| prompts[0].1.clone());
        return Ok(stream(&state, receivers, usage, move |i, event| {
            let (text, finish) = match event {
                Event::Prompt(_) => (echoed.clone()?, Value::Null),
                Event::Token { text, .. } => (text.clone(), Value::Null),
                Event::Done { text, finish, .. } => (text.clone(), json!(finish_reason(Some(*finish)))),
                Event::Failed(_) => return None,
            };
            let mut c = head.clone();
            c["choices"] = json!([{ "index": i, "text": text, "logprobs": null, "finish_reason": finish }]);
            Some(c)
        }));
    }
    let choices = gather(&state, receivers).await?;
    let mut usage = Usage::default();
    let mut out = Vec::new();
    for (i, c) in choices.iter().enumerate() {
        let (_, prompt_text, added_bos) = &prompts[i / p.n];
        let text = if echo { format!("{prompt_text}{}", c.text) } else { c.text.clone() };
        let logprobs = match top {
            Some(_) => {
                // The server's BOS is not part of the echoed text.
                let skip = usize::from(*added_bos);
                let mut scored: Vec<Option<TokenLogprob>> =
                    if echo { c.prompt.iter().skip(skip).cloned().collect() } else { Vec::new() };
                scored.extend(c.tokens.iter().cloned().map(Some));
                completion_logprobs(&state, &scored)
            }
            None => Value::Null,
        };
        out.push(json!({ "index": i, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(c.finish) }));
        if i % p.n == 0 {
            usage.prompt_tokens += c.usage.prompt_tokens;
        }
        usage.completion_tokens += c.usage.completion_tokens;
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    Ok(Json(json!({ "id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": out, "usage": usage }))
    .into_response())
}
