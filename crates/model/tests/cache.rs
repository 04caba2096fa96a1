//! Decoding with the KV cache gives the same logits as recomputing the whole sequence.

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
