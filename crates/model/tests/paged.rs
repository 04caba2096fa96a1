//! The batched pass over the paged cache: a sequence's logits are bit-identical whatever else is in
//! the batch, however its prompt is chunked and wherever its blocks lie in the pool, and they match
//! the full forward pass.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tsukuru_model::init::init_params;
use tsukuru_model::{Activation, Chunk, KvBlocks, ModelConfig, Transformer};

fn model() -> (ModelConfig, Transformer) {
    let cfg = ModelConfig {
        vocab_size: 67,
        d_model: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_dim: 72,
        activation: Activation::Swiglu,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        qk_norm: true,
        tie_embeddings: false,
        max_seq_len: 96,
    };
    let dev = Device::Cpu;
    let map = init_params(&cfg, 4, DType::F32, &dev).unwrap();
    for var in map.all_vars() {
        if var.rank() == 2 {
            var.set(&(var.as_tensor() * 8.0).unwrap()).unwrap();
        }
    }
    let m = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
    (cfg, m)
}

fn tokens(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 31 + seed * 17 + i * i * seed) % 67).collect()
}

/// Every position's logits of `seq`, fed alone one token at a time over blocks `blocks`.
fn one_at_a_time(model: &Transformer, pool: &mut KvBlocks, seq: &[u32], blocks: &[u32]) -> Vec<Vec<f32>> {
    (0..seq.len())
        .map(|p| {
            let chunk = Chunk { tokens: &seq[p..p + 1], start: p, blocks, all_logits: false };
            model.forward_paged(pool, &[chunk]).unwrap().remove(0)
        })
        .collect()
}

#[test]
fn batched_chunked_logits_equal_one_sequence_at_a_time() {
    let (cfg, model) = model();
    let bs = 8;
    let seqs = [tokens(1, 41), tokens(2, 17), tokens(3, 64)];
    // Alone, each over contiguous blocks of a fresh pool.
    let alone: Vec<Vec<Vec<f32>>> = seqs
        .iter()
        .map(|s| {
            let mut pool = KvBlocks::new(&cfg, bs, 8);
            one_at_a_time(&model, &mut pool, s, &[0, 1, 2, 3, 4, 5, 6, 7])
        })
        .collect();

    // Together in one pool, blocks interleaved, prompts cut into uneven chunks (every position's
    // logits kept), all three advancing in the same steps.
    let mut pool = KvBlocks::new(&cfg, bs, 24);
    let tables: [Vec<u32>; 3] = [vec![23, 0, 5, 9, 12, 2], vec![7, 15, 1], vec![3, 22, 4, 6, 8, 10, 11, 13]];
    let cuts = [[5, 1, 1, 13, 1], [16, 1, 0, 0, 0], [2, 30, 1, 1, 9]];
    let mut at = [0usize; 3];
    let mut together: [Vec<Vec<f32>>; 3] = Default::default();
    let mut round = 0;
    while (0..3).any(|i| at[i] < seqs[i].len()) {
        let mut batch = Vec::new();
        let mut who = Vec::new();
        for i in 0..3 {
            let left = seqs[i].len() - at[i];
            if left == 0 {
                continue;
            }
            let n = cuts[i].get(round).copied().filter(|&c| c > 0).unwrap_or(1).min(left);
            batch.push(Chunk {
                tokens: &seqs[i][at[i]..at[i] + n],
                start: at[i],
                blocks: &tables[i],
                all_logits: true,
            });
            who.push((i, n));
        }
        let out = model.forward_paged(&mut pool, &batch).unwrap();
        for ((i, n), logits) in who.into_iter().zip(out) {
            together[i].extend(logits.chunks(cfg.vocab_size).map(<[f32]>::to_vec));
            at[i] += n;
        }
        round += 1;
    }
    for i in 0..3 {
        assert_eq!(together[i].len(), seqs[i].len());
        for (p, (a, b)) in alone[i].iter().zip(&together[i]).enumerate() {
            assert!(a == b, "sequence {i} position {p}: batched logits differ from decoding alone");
        }
    }

    // And they are the model's logits: the full pass agrees within float tolerance.
    let dev = Device::Cpu;
    for (s, rows) in seqs.iter().zip(&alone) {
        let full = model.forward(&Tensor::new(s.as_slice(), &dev).unwrap().unsqueeze(0).unwrap(), None).unwrap();
        let full = full.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let scale = full.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
        let diff = full.iter().flatten().zip(rows.iter().flatten()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff / scale < 1e-5, "paged logits differ from the full pass by {}", diff / scale);
    }
}

#[test]
fn bad_block_tables_and_positions_are_refused() {
    let (cfg, model) = model();
    let mut pool = KvBlocks::new(&cfg, 4, 3);
    let seq = tokens(5, 9);
    let short = Chunk { tokens: &seq, start: 0, blocks: &[0, 1], all_logits: false };
    let err = model.forward_paged(&mut pool, &[short]).unwrap_err().to_string();
    assert!(err.contains("does not cover 9 positions"), "{err}");
    let outside = Chunk { tokens: &seq[..2], start: 0, blocks: &[7], all_logits: false };
    assert!(model.forward_paged(&mut pool, &[outside]).is_err());
    let late = Chunk { tokens: &seq[..2], start: 95, blocks: &[0; 25], all_logits: false };
    let err = model.forward_paged(&mut pool, &[late]).unwrap_err().to_string();
    assert!(err.contains("max_seq_len = 96"), "{err}");
    let other = ModelConfig { n_layers: 3, ..cfg };
    let mut wrong = KvBlocks::new(&other, 4, 3);
    let ok = Chunk { tokens: &seq[..2], start: 0, blocks: &[0], all_logits: false };
    assert!(model.forward_paged(&mut wrong, &[ok]).unwrap_err().to_string().contains("another shape"));
}
