//! The serving engine: concurrent greedy requests give the tokens they give alone, whatever the
//! interleaving and prefill chunking; queue limits, cancellation, stops, deadlines and prompt
//! log-probabilities behave.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::time::{Duration, Instant};
use tsukuru_infer::engine::{collect, Engine, EngineConfig, Event, Finish, Request, SubmitError};
use tsukuru_infer::{generate, Sampler, SamplingParams};
use tsukuru_model::init::init_params;
use tsukuru_model::{ModelConfig, Transformer};

mod common;
use common::tok;

fn model(vocab: usize, context: usize) -> Transformer {
    let cfg = ModelConfig::from_depth(1, vocab, context);
    let map = init_params(&cfg, 5, DType::F32, &Device::Cpu).unwrap();
    Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)).unwrap()
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request {
        prompt,
        sampling: SamplingParams::greedy(),
        max_tokens,
        stop: Vec::new(),
        stop_tokens: Vec::new(),
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        logit_bias: Vec::new(),
        top_logprobs: 0,
        prompt_logprobs: false,
        deadline: None,
    }
}

fn tokens(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Token { logprob, .. } => Some(logprob.id),
            _ => None,
        })
        .collect()
}

#[test]
fn concurrent_greedy_requests_equal_sequential_runs() {
    let tok = tok();
    let vocab = tok.vocab_size();
    let prompts: Vec<Vec<u32>> =
        (0..12).map(|i| (0..(3 + 7 * i) as u32).map(|j| (j * 31 + i as u32 * 7) % vocab as u32).collect()).collect();
    // Alone, through plain generation.
    let m = model(vocab, 128);
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
            generate(&m, p, 20, &mut s, &[], &mut |_| {}).unwrap().tokens
        })
        .collect();
    // Together: twelve streams over four slots, prompts prefilled five tokens at a time.
    let cfg = EngineConfig { max_running: 4, max_queued: 16, prefill_chunk: 5 };
    let engine = Engine::start(model(vocab, 128), tok, cfg);
    let receivers: Vec<_> = prompts.iter().map(|p| engine.submit(request(p.clone(), 20)).unwrap()).collect();
    for (i, rx) in receivers.into_iter().enumerate() {
        let events: Vec<Event> = rx.iter().collect();
        assert_eq!(tokens(&events), alone[i], "stream {i} depends on its neighbours");
        match events.last().unwrap() {
            Event::Done { finish, prompt_tokens, completion_tokens, .. } => {
                assert_eq!((*finish, *prompt_tokens, *completion_tokens), (Finish::Length, prompts[i].len(), 20));
            }
            other => panic!("{other:?}"),
        }
    }
    // The counts catch up at the end of the round that finished the last stream.
    let start = Instant::now();
    while engine.stats().running > 0 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let stats = engine.stats();
    assert_eq!((stats.running, stats.queued, stats.generated_tokens), (0, 0, 12 * 20));
    assert_eq!(stats.prompt_tokens, prompts.iter().map(Vec::len).sum::<usize>());
}

#[test]
fn a_full_queue_refuses_and_a_dropped_receiver_frees_the_slot() {
    let tok = tok();
    let vocab = tok.vocab_size();
    let cfg = EngineConfig { max_running: 1, max_queued: 2, prefill_chunk: 64 };
    let engine = Engine::start(model(vocab, 256), tok, cfg);
    let long = request(vec![1; 8], 200);
    let first = engine.submit(long.clone()).unwrap();
    // Wait until the first runs, then fill the queue.
    let start = Instant::now();
    while engine.stats().running == 0 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let queued: Vec<_> = (0..2).map(|_| engine.submit(long.clone()).unwrap()).collect();
    assert!(matches!(engine.submit(long.clone()), Err(SubmitError::Busy(2))));
    drop(first);
    drop(queued);
    // Every cancelled request leaves (each as soon as it would send its next event): the queue
    // empties and a new request runs to its end, long before the 600 tokens asked of the others.
    let start = Instant::now();
    let rx = loop {
        match engine.submit(request(vec![1, 2, 3], 3)) {
            Ok(rx) => break rx,
            Err(SubmitError::Busy(_)) if start.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("{e}"),
        }
    };
    let events: Vec<Event> = rx.iter().collect();
    assert_eq!(tokens(&events).len(), 3);
    assert!(matches!(events.last(), Some(Event::Done { finish: Finish::Length, .. })));
    let generated = engine.stats().generated_tokens;
    assert!(generated < 100, "cancelled requests went on generating: {generated} tokens");
    let err = engine.submit(request(vec![1; 256], 1)).unwrap_err().to_string();
    assert!(err.contains("context is 256"), "{err}");
    let err = engine.submit(request(vec![vocab as u32], 1)).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

#[test]
fn stop_sequences_deadlines_and_prompt_logprobs() {
    let tok = tok();
    let vocab = tok.vocab_size();
    let engine = Engine::start(model(vocab, 128), tok.clone(), EngineConfig::default());
    let prompt: Vec<u32> = (5..15).collect();
    let free = collect(&engine, request(prompt.clone(), 24)).unwrap();
    let text: String = free
        .iter()
        .map(|e| match e {
            Event::Token { text, .. } | Event::Done { text, .. } => text.clone(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(text, tok.decode(&tokens(&free)).unwrap(), "released pieces add up to the text");
    // Stop at a piece of that text: what comes out is the text before it.
    let cut = text.char_indices().nth(text.chars().count() / 2).map(|(i, _)| i).unwrap();
    let stop: String = text[cut..].chars().take(2).collect();
    let before = &text[..text.find(&stop).unwrap()];
    let stopped = collect(&engine, Request { stop: vec![stop.clone()], ..request(prompt.clone(), 24) }).unwrap();
    let got: String = stopped
        .iter()
        .map(|e| match e {
            Event::Token { text, .. } | Event::Done { text, .. } => text.clone(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(got, before, "stop {stop:?}");
    assert!(matches!(stopped.last(), Some(Event::Done { finish: Finish::Stop, .. })));
    // A presence penalty past every logit gap forbids repeating a generated token.
    let fresh = collect(&engine, Request { presence_penalty: 1e4, ..request(prompt.clone(), 24) }).unwrap();
    let ids = tokens(&fresh);
    let distinct: std::collections::BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    let unpenalised: std::collections::BTreeSet<u32> = tokens(&free).into_iter().collect();
    assert!(unpenalised.len() < tokens(&free).len(), "without the penalty this model repeats itself");
    // A logit bias forces a token.
    let forced = collect(&engine, Request { logit_bias: vec![(7, 1e4)], ..request(prompt.clone(), 5) }).unwrap();
    assert_eq!(tokens(&forced), vec![7; 5]);
    // A deadline in the past ends the request at once.
    let late = Request { deadline: Some(Instant::now()), ..request(prompt.clone(), 24) };
    assert!(matches!(collect(&engine, late).unwrap().last(), Some(Event::Done { finish: Finish::Deadline, .. })));
    // Prompt log-probabilities: none for the first token, then the model's own, with alternatives.
    let scored = Request { prompt_logprobs: true, top_logprobs: 3, ..request(prompt.clone(), 0) };
    let events = collect(&engine, scored).unwrap();
    let Event::Prompt(lps) = &events[0] else { panic!("{events:?}") };
    assert_eq!(lps.len(), prompt.len());
    assert!(lps[0].is_none());
    for (i, lp) in lps.iter().enumerate().skip(1) {
        let lp = lp.as_ref().unwrap();
        assert_eq!(lp.id, prompt[i]);
        assert!(lp.logprob < 0.0 && lp.top.len() == 3 && lp.top[0].1 >= lp.logprob && lp.top[0].1 >= lp.top[2].1);
    }
    assert!(matches!(events.last(), Some(Event::Done { completion_tokens: 0, .. })));
    // Scored while prefilling in chunks of 3, the prompt gets the same log-probabilities.
    let chunked = Engine::start(model(vocab, 128), tok, EngineConfig { prefill_chunk: 3, ..EngineConfig::default() });
    let again =
        collect(&chunked, Request { prompt_logprobs: true, top_logprobs: 3, ..request(prompt.clone(), 0) }).unwrap();
    let Event::Prompt(chunked_lps) = &again[0] else { panic!("{again:?}") };
    for (a, b) in lps.iter().zip(chunked_lps).skip(1) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!((a.id, a.top.iter().map(|t| t.0).collect::<Vec<_>>()), (b.id, b.top.iter().map(|t| t.0).collect()));
        assert!((a.logprob - b.logprob).abs() < 1e-4, "{} vs {}", a.logprob, b.logprob);
    }
}
