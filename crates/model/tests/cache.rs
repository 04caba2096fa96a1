//! Decoding with the KV cache gives the same logits as recomputing the whole sequence, for one
//! sequence and for a batch whose cache grows and is copied; the last position's logits alone equal
//! that row of the whole pass.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tsukuru_model::init::init_params;
use tsukuru_model::{KvCache, ModelConfig, Transformer};

#[test]
fn cached_and_uncached_logits_agree() {
    let dev = Device::Cpu;
    let cfg = ModelConfig { n_kv_heads: 1, qk_norm: true, ..ModelConfig::from_depth(2, 50, 32) };
    let map = init_params(&cfg, 3, DType::F32, &dev).unwrap();
    let model = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
    let ids: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 50).collect();
    let all = Tensor::from_vec(ids.clone(), (1, 12), &dev).unwrap();
    let full = model.forward(&all, None).unwrap(); // (1, 12, 50)

    let mut cache = KvCache::new(cfg.n_layers);
    // A 5-token prompt, then one token at a time.
    let prompt = Tensor::from_vec(ids[..5].to_vec(), (1, 5), &dev).unwrap();
    let mut steps = vec![model.forward(&prompt, Some(&mut cache)).unwrap()];
    for (i, id) in ids.iter().enumerate().skip(5) {
        assert_eq!(cache.len(), i);
        let one = Tensor::from_vec(vec![*id], (1, 1), &dev).unwrap();
        steps.push(model.forward(&one, Some(&mut cache)).unwrap());
    }
    let cached = Tensor::cat(&steps, 1).unwrap();
    let diff = (full - cached).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "cached and uncached logits differ by {diff}");

    let too_long = Tensor::zeros((1, 33), DType::U32, &dev).unwrap();
    let err = model.forward(&too_long, None).unwrap_err().to_string();
    assert!(err.contains("max_seq_len = 32"), "{err}");
}

#[test]
fn a_batch_cache_grows_in_place_and_a_copy_is_independent() {
    let dev = Device::Cpu;
    let cfg = ModelConfig { n_kv_heads: 1, ..ModelConfig::from_depth(1, 40, 320) };
    let map = init_params(&cfg, 5, DType::F32, &dev).unwrap();
    let model = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
    // Two rows (the tensor path, not the single-sequence blocks); 250 prompt positions, then single
    // steps past the first capacity of 256.
    let row = |seed: u32, n: usize| (0..n as u32).map(move |i| (i * 11 + seed) % 40).collect::<Vec<u32>>();
    let ids: Vec<u32> = [row(1, 270), row(5, 270)].concat();
    let all = Tensor::from_vec(ids.clone(), (2, 270), &dev).unwrap();
    let full = model.forward(&all, None).unwrap();
    // The last position's logits alone, as decoding asks for them: only that row is projected.
    let last = model.forward_last(&all.narrow(1, 0, 250).unwrap(), Some(&mut KvCache::new(cfg.n_layers))).unwrap();
    let want = full.narrow(1, 249, 1).unwrap().squeeze(1).unwrap();
    let diff = (want - last).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "the last position's logits differ by {diff}");
    let mut cache = KvCache::new(cfg.n_layers);
    let mut steps = vec![model.forward(&all.narrow(1, 0, 250).unwrap(), Some(&mut cache)).unwrap()];
    let mut copy = None;
    for i in 250..270 {
        if i == 260 {
            copy = Some(cache.clone());
        }
        steps.push(model.forward(&all.narrow(1, i, 1).unwrap(), Some(&mut cache)).unwrap());
    }
    let cached = Tensor::cat(&steps, 1).unwrap();
    let diff = (&full - cached).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "cached and uncached logits differ by {diff}");
    // The copy taken at position 260 continues with other tokens; the original's later writes did
    // not reach it.
    let mut copy = copy.unwrap();
    let other = Tensor::from_vec(vec![7u32, 9], (2, 1), &dev).unwrap();
    let from_copy = model.forward(&other, Some(&mut copy)).unwrap();
    let fresh = Tensor::cat(&[&all.narrow(1, 0, 260).unwrap(), &other], 1).unwrap();
    let want = model.forward(&fresh, None).unwrap().narrow(1, 260, 1).unwrap();
    let diff = (want - from_copy).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "the copied cache's logits differ by {diff}");
    // And the copy's write at position 260 did not reach the original.
    let next = Tensor::from_vec(vec![3u32, 4], (2, 1), &dev).unwrap();
    let from_original = model.forward(&next, Some(&mut cache)).unwrap();
    let want = model.forward(&Tensor::cat(&[&all, &next], 1).unwrap(), None).unwrap().narrow(1, 270, 1).unwrap();
    let diff = (want - from_original).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "the original cache's logits differ by {diff} after its copy was written");
}
