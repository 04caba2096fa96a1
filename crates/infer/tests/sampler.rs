//! Sampling: greedy picks the maximum, seeds reproduce, top-k and top-p cut the tail they promise.

use tsukuru_infer::{Sampler, SamplingParams};

fn draws(params: SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
    let mut s = Sampler::new(params).unwrap();
    (0..n).map(|_| s.sample(logits)).collect()
}

fn counts(tokens: &[u32], vocab: usize) -> Vec<usize> {
    let mut c = vec![0; vocab];
    tokens.iter().for_each(|&t| c[t as usize] += 1);
    c
}

#[test]
fn greedy_is_the_argmax_and_ties_go_to_the_lowest_id() {
    let logits = [0.1, 2.0, -1.0, 2.0];
    assert_eq!(draws(SamplingParams::greedy(), &logits, 3), vec![1, 1, 1]);
    let top1 = SamplingParams { temperature: 5.0, top_k: 1, ..Default::default() };
    assert_eq!(draws(top1, &logits, 3), vec![1, 1, 1]);
}

#[test]
fn the_same_seed_gives_the_same_draws_and_another_seed_does_not() {
    let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
    let p = SamplingParams { temperature: 1.0, seed: 7, ..Default::default() };
    assert_eq!(draws(p, &logits, 200), draws(p, &logits, 200));
    assert_ne!(draws(p, &logits, 200), draws(SamplingParams { seed: 8, ..p }, &logits, 200));
}

#[test]
fn temperature_one_follows_the_softmax() {
    // Probabilities 0.5, 0.3, 0.2.
    let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
    let c = counts(&draws(SamplingParams::default(), &logits, 20_000), 3);
    for (got, want) in c.iter().zip([0.5, 0.3, 0.2]) {
        let share = *got as f64 / 20_000.0;
        assert!((share - want).abs() < 0.015, "{c:?}");
    }
}

#[test]
fn top_k_and_top_p_never_draw_outside_their_set() {
    let logits = [0.4f32.ln(), 0.3f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
    let k2 = counts(&draws(SamplingParams { top_k: 2, ..Default::default() }, &logits, 5_000), 4);
    assert_eq!((k2[2], k2[3]), (0, 0), "{k2:?}");
    let share = k2[0] as f64 / 5_000.0;
    assert!((share - 0.4 / 0.7).abs() < 0.03, "renormalised over the kept two: {k2:?}");
    // 0.4 + 0.3 reaches 0.65: the nucleus is the first two.
    let p = counts(&draws(SamplingParams { top_p: 0.65, ..Default::default() }, &logits, 5_000), 4);
    assert_eq!((p[2], p[3]), (0, 0), "{p:?}");
    assert!(p[0] > 0 && p[1] > 0);
    // A nucleus smaller than the top token still keeps it.
    let tiny = counts(&draws(SamplingParams { top_p: 0.01, ..Default::default() }, &logits, 100), 4);
    assert_eq!(tiny[0], 100);
}

#[test]
fn bad_parameters_are_refused_by_name() {
    for (p, field) in [
        (SamplingParams { temperature: -1.0, ..Default::default() }, "temperature"),
        (SamplingParams { temperature: f32::NAN, ..Default::default() }, "temperature"),
        (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p"),
        (SamplingParams { top_p: 1.5, ..Default::default() }, "top_p"),
    ] {
        let err = Sampler::new(p).unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
}
