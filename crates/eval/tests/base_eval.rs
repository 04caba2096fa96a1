//! Evaluation of a base model on a tiny world: exact baseline arithmetic, batch-independent
//! validation loss, well-formed fact probes, and a stage that skips when done.

use candle_core::Device;
use tsukuru_core::NoProgress;
use tsukuru_eval::perplexity::{model_loss, unigram_loss};
use tsukuru_eval::probe::{fact_probe, ProbeConfig};
use tsukuru_tokenizer::Tok;
use tsukuru_tokens::TokenDataset;

mod common;

use common::{model, run};

#[test]
fn unigram_baseline_matches_counts_by_hand() {
    let tokens = run().join("tokens");
    let (train, val) = (TokenDataset::open(&tokens, "train").unwrap(), TokenDataset::open(&tokens, "val").unwrap());
    let read = |d: &TokenDataset| {
        let mut ids = Vec::new();
        (0..d.n_docs()).for_each(|i| d.read_doc(i, u64::MAX, &mut ids));
        ids
    };
    let (tr, va) = (read(&train), read(&val));
    let mut counts = vec![1u64; train.vocab_size() as usize];
    tr.iter().for_each(|&t| counts[t as usize] += 1);
    let total: u64 = counts.iter().sum();
    let nats: f64 = va[1..].iter().map(|&t| -(counts[t as usize] as f64 / total as f64).ln()).sum();
    let u = unigram_loss(&train, &val).unwrap();
    assert_eq!(u.tokens, va.len() as u64 - 1);
    assert!((u.nats_per_token - nats / u.tokens as f64).abs() < 1e-9);
    let bpb = nats / std::f64::consts::LN_2 / val.text_bytes().unwrap() as f64;
    assert!((u.bits_per_byte - bpb).abs() < 1e-9);
    // A unigram model of English text sits between 1 and 8 bits per byte.
    assert!((1.0..8.0).contains(&u.bits_per_byte), "{u:?}");
}

#[test]
fn validation_loss_covers_every_token_whatever_the_batch() {
    let tokens = run().join("tokens");
    let val = TokenDataset::open(&tokens, "val").unwrap();
    let (cfg, m, _) = model(val.vocab_size() as usize);
    let a = model_loss(&m, &val, 48, 1).unwrap();
    let b = model_loss(&m, &val, 48, 7).unwrap();
    assert_eq!(a.tokens, val.n_tokens() - 1);
    assert_eq!(a.tokens, b.tokens);
    assert!((a.nats_per_token - b.nats_per_token).abs() < 1e-5, "{a:?} vs {b:?}");
    // Freshly initialised weights predict almost uniformly: about ln(vocab) nats per token.
    let uniform = (cfg.vocab_size as f64).ln();
    assert!((a.nats_per_token - uniform).abs() < 0.1, "{} vs ln V = {uniform}", a.nats_per_token);
}

#[test]
fn fact_probe_items_are_well_formed_and_grouped_by_mentions() {
    let r = run();
    let (_, entities, facts) = tsukuru_world::World::load_truth(&r.join("world")).unwrap();
    let tok = Tok::load(&r.join("tok")).unwrap();
    let (_, m, _) = model(tok.vocab_size());
    let cfg = ProbeConfig { facts: 15, choices: 4, seed: 3 };
    let p = fact_probe(&m, &tok, &entities, &facts, &cfg).unwrap();
    assert_eq!((p.stated.n, p.unstated.n), (15, 15));
    assert_eq!(p.items.len(), 30);
    for (i, item) in p.items.iter().enumerate() {
        let fact = &facts[item.fact as usize];
        assert_eq!(fact.mentions > 0, i < 15, "stated facts come first");
        assert!(fact.derived_from.is_empty());
        assert_eq!(item.answer, format!(" {}", fact.object_text));
        assert!(item.prompt.starts_with(&entities[fact.subject as usize].name));
        assert_eq!(item.options.len(), 4);
        assert_eq!(item.options.iter().filter(|o| **o == item.answer).count(), 1);
        let mut distinct = item.options.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{:?}", item.options);
        assert_eq!(item.choice_correct, item.options[item.chosen] == item.answer);
    }
    assert!((p.stated.chance - 0.25).abs() < 1e-12);
    // The same seed probes the same facts with the same options.
    let again = fact_probe(&m, &tok, &entities, &facts, &cfg).unwrap();
    assert_eq!(again, p);
}

#[test]
fn the_stage_writes_its_files_and_skips_when_done() {
    let r = run();
    // A checkpoint-like directory: config, weights, tokenizer.
    let tok = Tok::load(&r.join("tok")).unwrap();
    let (cfg, _, map) = model(tok.vocab_size());
    let ckpt = r.join("model");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::write(ckpt.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    map.save(ckpt.join("model.safetensors")).unwrap();
    std::fs::copy(r.join("tok/tokenizer.json"), ckpt.join("tokenizer.json")).unwrap();
    let inputs =
        tsukuru_eval::base::BaseEvalInputs { model: &ckpt, tokens: &r.join("tokens"), world: Some(&r.join("world")) };
    let ecfg = tsukuru_eval::base::BaseEvalConfig { seq_len: 64, probe_facts: 5, samples: 2, ..Default::default() };
    let out = r.join("eval");
    let o = tsukuru_eval::base::evaluate_base(inputs, &out, &ecfg, &Device::Cpu, false, &NoProgress).unwrap();
    assert!(!o.skipped);
    for f in ["summary.json", "probe.jsonl", "samples.jsonl", "manifest.json"] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert_eq!(std::fs::read_to_string(out.join("probe.jsonl")).unwrap().lines().count(), 10);
    let s = &o.manifest.stats;
    assert_eq!(s["samples"].as_array().unwrap().len(), 2);
    // An untrained model is no better than the unigram baseline.
    assert!(s["model"]["bits_per_byte"].as_f64().unwrap() > s["unigram"]["bits_per_byte"].as_f64().unwrap());
    let again = tsukuru_eval::base::evaluate_base(inputs, &out, &ecfg, &Device::Cpu, false, &NoProgress).unwrap();
    assert!(again.skipped);
}

#[test]
fn loglikelihoods_match_the_model_and_greedy_continuations_are_marked() {
    let tok = Tok::load(&run().join("tok")).unwrap();
    let (_, m, _) = model(tok.vocab_size());
    let context = "Bramford is a city in";
    let conts: Vec<String> = [" Ostavia.", " the north", "!"].iter().map(|s| s.to_string()).collect();
    let lls = tsukuru_eval::loglik::loglikelihood(&m, &tok, context, &conts).unwrap();
    // Each equals the sum of its tokens' log-probabilities from a separate full forward pass.
    for (c, ll) in conts.iter().zip(&lls) {
        let mut ids = vec![tsukuru_tokenizer::special::BOS];
        ids.extend(tok.encode_text(&format!("{context}{c}")).unwrap());
        let n_ctx = 1 + tok.encode_text(context).unwrap().len();
        let t = candle_core::Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
        let logits = m.forward(&t, None).unwrap();
        let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1).unwrap().to_vec3::<f32>().unwrap();
        let want: f64 = (n_ctx..ids.len()).map(|p| f64::from(logp[0][p - 1][ids[p] as usize])).sum();
        assert!((ll.logprob - want).abs() < 1e-3, "{c:?}: {} vs {want}", ll.logprob);
        assert!(ll.logprob < 0.0);
    }
    // Multiple choice picks the most likely continuation.
    let best = (0..lls.len()).fold(0, |b, i| if lls[i].logprob > lls[b].logprob { i } else { b });
    let pick = tsukuru_eval::loglik::multiple_choice(&m, &tok, context, &conts, best, "").unwrap();
    assert!(pick.acc && pick.pred == best, "{pick:?}");
}
