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
        tenant: "".into(),
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
    let alone = alone(&model(vocab, 128), &prompts, 20);
    // Together: twelve streams over four slots, prompts prefilled five tokens at a time.
    let cfg = EngineConfig { max_running: 4, max_queued: 16, prefill_chunk: 5, ..EngineConfig::default() };
    let engine = Engine::start(model(vocab, 128), tok, cfg).unwrap();
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
    let stats = settle(&engine);
    assert_eq!((stats.running, stats.queued, stats.generated_tokens), (0, 0, 12 * 20));
    assert_eq!(stats.prompt_tokens, prompts.iter().map(Vec::len).sum::<usize>());
}

/// Greedy continuations of `prompts` by plain generation, one at a time.
fn alone(m: &Transformer, prompts: &[Vec<u32>], n: usize) -> Vec<Vec<u32>> {
    prompts
        .iter()
        .map(|p| {
            let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
            generate(m, p, n, &mut s, &[], &mut |_| {}).unwrap().tokens
        })
        .collect()
}

/// Waits until the engine has no running request (its counts are updated at the end of a round).
fn settle(engine: &Engine) -> tsukuru_infer::engine::EngineStats {
    let start = Instant::now();
    while engine.stats().running > 0 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(1));
    }
    engine.stats()
}

#[test]
fn a_small_cache_preempts_and_recomputes_without_changing_outputs() {
    let tok = tok();
    let vocab = tok.vocab_size();
    let prompts: Vec<Vec<u32>> =
        (0..8).map(|i| (0..(30 + 4 * i) as u32).map(|j| (j * 13 + i as u32 * 29) % vocab as u32).collect()).collect();
    let expected = alone(&model(vocab, 128), &prompts, 40);
    // Eight streams wanting up to 98 positions each over a cache of 128 tokens in blocks of 4:
    // they cannot all fit, so the newest are preempted, wait, and are recomputed.
    let cfg = EngineConfig { max_running: 8, max_queued: 8, prefill_chunk: 16, block_size: 4, cache_tokens: 128 };
    let engine = Engine::start(model(vocab, 128), tok, cfg).unwrap();
    let receivers: Vec<_> = prompts.iter().map(|p| engine.submit(request(p.clone(), 40)).unwrap()).collect();
    for (i, rx) in receivers.into_iter().enumerate() {
        let events: Vec<Event> = rx.iter().collect();
        assert_eq!(tokens(&events), expected[i], "stream {i} changed by preemption");
    }
    let stats = settle(&engine);
    assert!(stats.preemptions > 0, "the cache was never short: {stats:?}");
    assert_eq!((stats.cache_blocks, stats.cache_blocks_used, stats.queued), (32, 0, 0));
    // A cache smaller than one context is refused at the start.
    let small = EngineConfig { cache_tokens: 100, ..cfg };
    let err = Engine::start(model(vocab, 128), common::tok(), small).err().unwrap().to_string();
    assert!(err.contains("cannot hold one full context of 128"), "{err}");
}

#[test]
fn prompt_blocks_are_reused_within_a_tenant_and_never_across() {
    let tok = tok();
    let vocab = tok.vocab_size();
    let engine =
        Engine::start(model(vocab, 128), tok, EngineConfig { block_size: 4, ..EngineConfig::default() }).unwrap();
    let prompt: Vec<u32> = (0..23).map(|j| (j * 7 + 3) % vocab as u32).collect();
    let ask = |prompt: &[u32], tenant: &str, logprobs: bool| {
        let req = Request { tenant: tenant.into(), prompt_logprobs: logprobs, ..request(prompt.to_vec(), 12) };
        let out = tokens(&collect(&engine, req).unwrap());
        (out, settle(&engine).prefix_hit_tokens)
    };
    let (first, hits) = ask(&prompt, "a", false);
    assert_eq!((first.clone(), hits), (alone(&model(vocab, 128), std::slice::from_ref(&prompt), 12).remove(0), 0));
    // The same prompt again: its five full blocks before the last token come from the cache.
    assert_eq!(ask(&prompt, "a", false), (first.clone(), 20));
    // Another tenant computes everything; so does a request that scores its prompt.
    assert_eq!(ask(&prompt, "b", false), (first.clone(), 20));
    assert_eq!(ask(&prompt, "a", true).1, 20);
    // The same start then something else: the two matching blocks.
    let mut forked = prompt[..9].to_vec();
    forked.extend([1, 2, 3, 4, 5, 6]);
    assert_eq!(ask(&forked, "a", false).1, 28);
    // The next turn of a conversation (prompt, reply, more) finds the reply's blocks too: all the
    // full blocks of what was fed (the reply's last token was sampled, never fed).
    let mut next_turn = prompt.clone();
    next_turn.extend(&first);
    next_turn.extend([9, 9, 9]);
    assert_eq!(ask(&next_turn, "a", false).1, 28 + (prompt.len() + first.len() - 1) / 4 * 4);
}

#[test]
fn a_full_queue_refuses_and_a_dropped_receiver_frees_the_slot() {
    let tok = tok();
    let vocab = tok.vocab_size();
    let cfg = EngineConfig { max_running: 1, max_queued: 2, prefill_chunk: 64, ..EngineConfig::default() };
    let engine = Engine::start(model(vocab, 256), tok, cfg).unwrap();
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
    let engine = Engine::start(model(vocab, 128), tok.clone(), EngineConfig::default()).unwrap();
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
    let chunked =
        Engine::start(model(vocab, 128), tok, EngineConfig { prefill_chunk: 3, ..EngineConfig::default() }).unwrap();
    let again =
        collect(&chunked, Request { prompt_logprobs: true, top_logprobs: 3, ..request(prompt.clone(), 0) }).unwrap();
    let Event::Prompt(chunked_lps) = &again[0] else { panic!("{again:?}") };
    for (a, b) in lps.iter().zip(chunked_lps).skip(1) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!((a.id, a.top.iter().map(|t| t.0).collect::<Vec<_>>()), (b.id, b.top.iter().map(|t| t.0).collect()));
        assert_eq!(a.logprob, b.logprob, "chunking changed a prompt log-probability");
    }
}
