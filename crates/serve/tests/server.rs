//! The HTTP server with a real client over loopback: OpenAI's formats for chat, streaming and
//! completions with echoed log-probabilities; errors in OpenAI's format; API keys, each with its
//! own prefix cache; 429s under overload while the server stays up.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tsukuru_core::NoProgress;
use tsukuru_infer::engine::{Engine, EngineConfig};
use tsukuru_model::init::init_params;
use tsukuru_model::{ModelConfig, Transformer};
use tsukuru_serve::{AppState, ServeConfig};
use tsukuru_tokenizer::Tok;

fn tok() -> Tok {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let tmp = DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let world = tmp.path().join("world");
        tsukuru_world::generate_into(&world, 2, tsukuru_world::Scale::Tiny, false, &NoProgress).unwrap();
        let data = tmp.path().join("data");
        tsukuru_data::prepare(&[world.join("corpus.jsonl")], &data, &Default::default(), false, &NoProgress).unwrap();
        let tcfg = tsukuru_tokenizer::TokenizerConfig { vocab_size: 400, ..Default::default() };
        tsukuru_tokenizer::train(&data, &tmp.path().join("tok"), &tcfg, false, &NoProgress).unwrap();
        tmp
    });
    Tok::load(&tmp.path().join("tok")).unwrap()
}

/// A server on a free loopback port, running until the test process ends; returns its base URL.
fn start(keys: &[&str], engine_cfg: EngineConfig) -> String {
    let tok = tok();
    let cfg = ModelConfig::from_depth(1, tok.vocab_size(), 96);
    let map = init_params(&cfg, 9, DType::F32, &Device::Cpu).unwrap();
    let model = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)).unwrap();
    let engine = Engine::start(model, tok.clone(), engine_cfg).unwrap();
    let cfg = ServeConfig {
        model_name: "tiny".into(),
        api_keys: keys.iter().map(|k| k.to_string()).collect(),
        request_timeout: Duration::from_secs(60),
    };
    let state = Arc::new(AppState::new(engine, tok, cfg));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            tsukuru_serve::serve(listener, state, std::future::pending()).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// (status, body, Retry-After) of a request with an optional JSON body and key.
fn call(url: &str, body: Option<&str>, key: Option<&str>) -> (u16, String, Option<String>) {
    let a = agent();
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut resp = match body {
        Some(b) => {
            let mut r = a.post(url).header("Content-Type", "application/json");
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.send(b).unwrap()
        }
        None => {
            let mut r = a.get(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call().unwrap()
        }
    };
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap(), retry)
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn chat_streaming_and_completions_speak_openai() {
    let base = start(&[], EngineConfig::default());
    assert_eq!(call(&format!("{base}/health"), None, None).0, 200);
    let models = json_of(&call(&format!("{base}/v1/models"), None, None).1);
    assert_eq!(models["data"][0]["id"], "tiny");

    let chat = json!({"model": "tiny", "messages": [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where was Ana born?"}], "temperature": 0, "max_tokens": 12});
    let (status, body, _) = call(&format!("{base}/v1/chat/completions"), Some(&chat.to_string()), None);
    assert_eq!(status, 200, "{body}");
    let full = json_of(&body);
    let content = full["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let usage = full["usage"].clone();
    let (p, c) = (usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap());
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), p + c);
    assert!(c <= 12 && p > 5);

    // The same request streamed: chunks whose deltas add up to the same reply, then [DONE].
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, body, _) = call(&format!("{base}/v1/chat/completions"), Some(&streamed.to_string()), None);
    assert_eq!(status, 200);
    let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| json_of(d)).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String =
        chunks.iter().filter_map(|c| c["choices"].get(0).and_then(|x| x["delta"]["content"].as_str())).collect();
    assert_eq!(text, content, "streamed deltas differ from the whole reply");
    assert_eq!(chunks.last().unwrap()["usage"], usage);

    // Completions with echo and logprobs, as log-likelihood clients call them.
    let prompt = "The city of Bramford";
    let req = json!({"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 1, "temperature": 0});
    let (status, body, _) = call(&format!("{base}/v1/completions"), Some(&req.to_string()), None);
    assert_eq!(status, 200, "{body}");
    let c = json_of(&body);
    let lp = &c["choices"][0]["logprobs"];
    assert_eq!(c["choices"][0]["text"], prompt);
    let tokens: String = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens, prompt, "echoed tokens spell the prompt");
    for (x, top) in lp["token_logprobs"].as_array().unwrap().iter().zip(lp["top_logprobs"].as_array().unwrap()) {
        let x = x.as_f64().unwrap();
        let best = top.as_object().unwrap().values().map(|v| v.as_f64().unwrap()).fold(f64::MIN, f64::max);
        assert!(x < 0.0 && best >= x - 1e-6, "{x} vs best {best}");
    }
    // Streamed with echo, the prompt comes once, then the new text.
    let mut echoed = req.clone();
    echoed["stream"] = json!(true);
    echoed["max_tokens"] = json!(3);
    let (_, body, _) = call(&format!("{base}/v1/completions"), Some(&echoed.to_string()), None);
    let text: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").filter(|d| *d != "[DONE]"))
        .filter_map(|d| json_of(d)["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert!(text.starts_with(prompt) && !text[prompt.len()..].contains(prompt), "{text:?}");
    // Token-id prompts are used as given: the first token has no log-probability.
    let ids = json!({"prompt": [[0, 40, 41, 42]], "max_tokens": 2, "echo": true, "logprobs": 0, "temperature": 0});
    let c = json_of(&call(&format!("{base}/v1/completions"), Some(&ids.to_string()), None).1);
    let lps = c["choices"][0]["logprobs"]["token_logprobs"].as_array().unwrap().clone();
    assert!(lps[0].is_null() && lps.len() == 4 + c["usage"]["completion_tokens"].as_u64().unwrap() as usize);
    // n choices with their own seeds.
    let many = json!({"prompt": "A", "max_tokens": 4, "n": 3, "seed": 1});
    let c = json_of(&call(&format!("{base}/v1/completions"), Some(&many.to_string()), None).1);
    assert_eq!(c["choices"].as_array().unwrap().len(), 3);

    // Prometheus metrics account for what was served.
    let (status, text, _) = call(&format!("{base}/metrics"), None, None);
    assert_eq!(status, 200);
    assert!(text.contains("tsukuru_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 2"), "{text}");
    let value = |name: &str| -> f64 {
        let line =
            text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}: {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("tsukuru_time_to_first_token_seconds_count") >= 2.0);
    assert!(value("tsukuru_inter_token_latency_seconds_count") >= 1.0);
    assert!(value("tsukuru_generation_tokens_total") >= c["usage"]["completion_tokens"].as_f64().unwrap());
    assert_eq!(value("tsukuru_queue_depth"), 0.0);
}

#[test]
fn bad_requests_get_openai_errors_and_keys_are_enforced() {
    let base = start(&["sekret"], EngineConfig::default());
    let chat = format!("{base}/v1/chat/completions");
    let ok = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).to_string();
    // Keys: every route but /health.
    assert_eq!(call(&format!("{base}/health"), None, None).0, 200);
    let (status, body, _) = call(&chat, Some(&ok), None);
    assert_eq!(status, 401);
    assert_eq!(json_of(&body)["error"]["type"], "authentication_error");
    assert_eq!(call(&chat, Some(&ok), Some("wrong")).0, 401);
    assert_eq!(call(&chat, Some(&ok), Some("sekret")).0, 200);
    assert_eq!(call(&format!("{base}/v1/models"), None, None).0, 401);
    assert_eq!(call(&format!("{base}/metrics"), None, None).0, 401);
    assert_eq!(call(&format!("{base}/"), None, None).0, 401);
    let (status, page, _) = call(&format!("{base}/?key=sekret"), None, None);
    assert!(status == 200 && page.contains("tsukuru chat") && !page.contains("https://"), "{status}");
    let key = Some("sekret");
    let user = |extra: Value| {
        let mut v = json!({"messages": [{"role": "user", "content": "x"}]});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v.to_string()
    };
    for (body, status, needle) in [
        ("{not json".to_string(), 400, "not a valid request"),
        (json!({"messages": [{"role": "robot", "content": "x"}]}).to_string(), 400, "unknown role"),
        (user(json!({"n": 17})), 400, "n must be"),
        (user(json!({"stop": ["a", "b", "c", "d", "e"]})), 400, "stop"),
        (json!({"messages": [{"role": "user", "content": "word ".repeat(200)}]}).to_string(), 400, "context"),
        (user(json!({"top_p": 0})), 400, "top_p"),
        (format!("{{\"messages\": [], \"pad\": \"{}\"}}", "x".repeat(3 << 20)), 413, "bytes"),
    ] {
        let (got, text, _) = call(&chat, Some(&body), key);
        assert_eq!(got, status, "{text}");
        let err = json_of(&text);
        assert!(err["error"]["message"].as_str().unwrap().contains(needle), "{needle}: {text}");
    }
    assert_eq!(call(&format!("{base}/v2/nothing"), None, key).0, 404);
}

#[test]
fn the_prefix_cache_is_shared_within_an_api_key_and_never_across() {
    let base = start(&["alpha", "beta"], EngineConfig { block_size: 4, ..EngineConfig::default() });
    let url = format!("{base}/v1/completions");
    let body = json!({"prompt": "the river town keeps its old bridge and the market by the water", "max_tokens": 3,
        "temperature": 0})
    .to_string();
    let hits = || {
        let (_, text, _) = call(&format!("{base}/metrics"), None, Some("alpha"));
        let line = text.lines().find(|l| l.starts_with("tsukuru_prefix_cache_hit_tokens_total ")).unwrap();
        line.rsplit(' ').next().unwrap().parse::<f64>().unwrap()
    };
    let answer = |key: &str| json_of(&call(&url, Some(&body), Some(key)).1)["choices"][0]["text"].clone();
    let first = answer("alpha");
    assert_eq!(hits(), 0.0);
    assert_eq!(answer("alpha"), first);
    let shared = hits();
    assert!(shared >= 4.0, "the same key's repeated prompt found no cached blocks");
    assert_eq!(answer("beta"), first);
    assert_eq!(hits(), shared, "another key's request used the first key's cached blocks");
}

#[test]
fn overload_gets_429s_with_retry_after_and_the_server_stays_up() {
    let base = start(&[], EngineConfig { max_running: 1, max_queued: 1, prefill_chunk: 16, ..EngineConfig::default() });
    let url = format!("{base}/v1/completions");
    let body = json!({"prompt": "The", "max_tokens": 80, "temperature": 0}).to_string();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || call(&url, Some(&body), None))
        })
        .collect();
    let results: Vec<(u16, String, Option<String>)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    let done = results.iter().filter(|r| r.0 == 200).count();
    assert!(!busy.is_empty() && done >= 1 && busy.len() + done == 16, "{results:?}");
    for (_, text, retry) in &busy {
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(json_of(text)["error"]["type"], "rate_limit_error");
    }
    assert_eq!(call(&format!("{base}/health"), None, None).0, 200);
    assert_eq!(call(&url, Some(&body), None).0, 200, "the server serves again once the queue drains");
}
