//! The evaluation harness on untrained models: few-shot examples drawn from the task and shrunk to
//! fit the context, scores equal to the primitives they rest on, and a directory that skips when done.

mod common;

use common::{model, model_with_context, run};
use tsukuru_core::NoProgress;
use tsukuru_eval::harness::{run_suite, HarnessConfig};
use tsukuru_eval::items::{Domain, Item, ItemSplit};
use tsukuru_eval::suite::Suite;
use tsukuru_tokenizer::Tok;

fn choice(id: &str, context: &str, split: ItemSplit) -> Item {
    Item::Choice {
        id: id.into(),
        task: Some("cities".into()),
        context: context.into(),
        choices: vec!["Ostavia".into(), "the north".into(), "a valley".into()],
        gold: 1,
        delimiter: " ".into(),
        domain: Domain::In,
        split,
    }
}

fn suite() -> Suite {
    let mut items = vec![
        choice("t1", "Bramford is a city in", ItemSplit::Test),
        choice("t2", "Kelm lies in", ItemSplit::Test),
        Item::Text {
            id: "d1".into(),
            task: Some("prose".into()),
            text: "Kelm is a city of bridges.".into(),
            domain: Domain::Out,
        },
    ];
    for i in 0..4 {
        items.push(choice(
            &format!("shot{i}"),
            &format!("Example {i}: the harbour of town {i} is in"),
            ItemSplit::Fewshot,
        ));
    }
    Suite::from_items(items).unwrap()
}

#[test]
fn zero_shot_scores_equal_the_primitives() {
    let tok = Tok::load(&run().join("tok")).unwrap();
    let (_, m, _) = model(tok.vocab_size());
    let suite = suite();
    let records = run_suite(&m, &tok, &suite, None, &HarnessConfig::default(), &NoProgress).unwrap();
    assert_eq!(records.len(), 3);
    let Item::Choice { context, choices, gold, .. } = &suite.tasks[0].items[0] else { panic!() };
    let want = tsukuru_eval::loglik::multiple_choice(&m, &tok, context, choices, *gold, " ").unwrap();
    let r = &records[0];
    assert_eq!((r.shots, r.prompt.as_str(), r.target.as_str()), (0, context.as_str(), "the north"));
    assert_eq!((r.metrics["acc"] == 1.0, r.metrics["acc_norm"] == 1.0), (want.acc, want.acc_norm));
    assert_eq!(r.output, choices[want.pred]);
    // Bits per byte of a text item: its summed loss over its bytes.
    let text = "Kelm is a city of bridges.";
    let mut ids = vec![tsukuru_tokenizer::special::BOS];
    ids.extend(tok.encode_text(text).unwrap());
    let nats = tsukuru_eval::perplexity::stream_nats(&m, &ids, 256, 8).unwrap();
    let d = &records[2];
    assert!((d.score - nats / std::f64::consts::LN_2 / text.len() as f64).abs() < 1e-9);
    assert_eq!((d.bytes, d.domain), (Some(text.len() as u64), Domain::Out));
}

#[test]
fn few_shot_examples_come_from_the_task_and_shrink_to_fit() {
    let tok = Tok::load(&run().join("tok")).unwrap();
    let (_, m, _) = model_with_context(tok.vocab_size(), 256);
    let suite = suite();
    let cfg = HarnessConfig { num_fewshot: 2, ..HarnessConfig::default() };
    let records = run_suite(&m, &tok, &suite, None, &cfg, &NoProgress).unwrap();
    let r = &records[0];
    assert_eq!(r.shots, 2);
    assert_eq!(r.prompt.matches("Example ").count(), 2, "{}", r.prompt);
    assert_eq!(
        r.prompt.matches(" is in the north\n\n").count(),
        2,
        "examples end with their gold choice: {}",
        r.prompt
    );
    assert!(r.prompt.ends_with("\n\nBramford is a city in") && !r.prompt.contains("Kelm"), "{}", r.prompt);
    assert_eq!(records[1].shots, 2);
    // The draw is seeded: the same examples every run.
    assert_eq!(run_suite(&m, &tok, &suite, None, &cfg, &NoProgress).unwrap(), records);

    // A short context takes fewer examples instead of cutting the item.
    let (_, small, _) = model_with_context(tok.vocab_size(), 24);
    let cfg = HarnessConfig { num_fewshot: 4, ..HarnessConfig::default() };
    let records = run_suite(&small, &tok, &suite, None, &cfg, &NoProgress).unwrap();
    assert!(records[0].shots < 4, "{} examples cannot fit 24 tokens", records[0].shots);
    assert!(records[0].prompt.ends_with("Bramford is a city in") && !records[0].truncated);
}

#[test]
fn the_run_writes_records_and_a_summary_and_skips_when_done() {
    let r = run();
    let tok = Tok::load(&r.join("tok")).unwrap();
    let (cfg, _, map) = model(tok.vocab_size());
    let ckpt = r.join("harness-model");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::write(ckpt.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    map.save(ckpt.join("model.safetensors")).unwrap();
    std::fs::copy(r.join("tok/tokenizer.json"), ckpt.join("tokenizer.json")).unwrap();
    let out = r.join("harness-eval");
    let hc = HarnessConfig::default();
    let (o, summary) = tsukuru_eval::harness::evaluate(&ckpt, &suite(), None, &out, &hc, false, &NoProgress).unwrap();
    assert!(!o.skipped);
    assert_eq!(std::fs::read_to_string(out.join("results.jsonl")).unwrap().lines().count(), 3);
    let metrics: Vec<(&str, &str)> = summary.rows.iter().map(|r| (r.task.as_str(), r.metric.as_str())).collect();
    assert_eq!(metrics, [("cities", "acc"), ("cities", "acc_norm"), ("prose", "bits_per_byte")]);
    assert!(std::fs::read_to_string(out.join("summary.md")).unwrap().contains("| prose | bits_per_byte | – |"));
    let (again, same) = tsukuru_eval::harness::evaluate(&ckpt, &suite(), None, &out, &hc, false, &NoProgress).unwrap();
    assert!(again.skipped);
    assert_eq!(same, summary);
}
