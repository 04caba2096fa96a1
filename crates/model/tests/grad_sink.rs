//! The gradient sink: a training step's weight gradients, taken from the fused ops past candle's
//! graph walk and added to its store afterwards, are bit for bit the ones the walk gives.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tsukuru_model::init::init_params;
use tsukuru_model::kernels::grad_sink;
use tsukuru_model::{Activation, ModelConfig, Transformer};

fn config(n_heads: usize, n_kv_heads: usize, tie: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: 97,
        d_model: 32 * n_heads,
        n_layers: 2,
        n_heads,
        n_kv_heads,
        ffn_dim: 72,
        activation: Activation::Swiglu,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        qk_norm: false,
        tie_embeddings: tie,
        max_seq_len: 64,
    }
}

#[test]
fn sunk_gradients_equal_the_graph_walks() {
    let dev = Device::Cpu;
    let ids: Vec<u32> = (0..3 * 20).map(|i| (i * 37 % 97) as u32).collect();
    let inputs = Tensor::from_vec(ids.clone(), (3, 20), &dev).unwrap();
    let targets = Tensor::from_vec(ids.iter().map(|t| (t * 5 + 1) % 97).collect::<Vec<_>>(), (3, 20), &dev).unwrap();
    for cfg in [config(2, 1, false), config(1, 1, true)] {
        let map = init_params(&cfg, 9, DType::F32, &dev).unwrap();
        let model = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
        let plain = model.loss(&inputs, &targets, None).unwrap().backward().unwrap();
        let (loss, sink) = grad_sink::collect(|| model.loss(&inputs, &targets, None));
        let mut sunk = loss.unwrap().backward().unwrap();
        let vars = map.all_vars();
        // The projections and norm gains never reached candle's walk...
        let missing = vars.iter().filter(|v| sunk.get(v.as_tensor()).is_none()).count();
        assert!(missing >= 8 * cfg.n_layers, "tie {}: only {missing} gradients bypassed the walk", cfg.tie_embeddings);
        // ...and arrive from the sink unchanged.
        sink.add_to(&mut sunk).unwrap();
        for (name, var) in map.data().lock().unwrap().iter() {
            let (a, b) = (sunk.get(var.as_tensor()), plain.get(var.as_tensor()));
            let (a, b) = (a.unwrap_or_else(|| panic!("{name}: no gradient")), b.unwrap());
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(a, b, "tie {}: gradient of {name}", cfg.tie_embeddings);
        }
        // Outside `collect` the ops hand everything to candle again.
        let again = model.loss(&inputs, &targets, None).unwrap().backward().unwrap();
        assert!(vars.iter().all(|v| again.get(v.as_tensor()).is_some()));
    }
}
