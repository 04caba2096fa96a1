//! The gradient sink: a training step's weight gradients, taken from the fused ops past candle's
//! graph walk and added to its store afterwards, are bit for bit the ones the walk gives. The same
//! holds for a mixed-precision copy, whose blocks then run as one node that sends each weight's
//! gradient to its f32 master.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tsukuru_model::init::init_params;
use tsukuru_model::kernels::grad_sink;
use tsukuru_model::packing::Packing;
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

/// Every variable's gradient in `grads`, flattened to f32, by name.
fn by_name(map: &candle_nn::VarMap, grads: &candle_core::backprop::GradStore) -> Vec<(String, Vec<f32>)> {
    let mut out: Vec<_> = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(name, var)| {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
            (name.clone(), g.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn a_cast_models_blocks_as_one_node_give_the_walks_gradients() {
    let dev = Device::Cpu;
    let (b, t) = (2, 24);
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 41 % 97) as u32).collect();
    let inputs = Tensor::from_vec(ids.clone(), (b, t), &dev).unwrap();
    let targets = Tensor::from_vec(ids.iter().map(|t| (t * 3 + 2) % 97).collect::<Vec<_>>(), b * t, &dev).unwrap();
    let packing = Packing::from_lengths(t, &[vec![10, 14], vec![t]]).unwrap();
    for (cfg, packed) in [(config(2, 1, false), false), (config(2, 2, true), true)] {
        let map = init_params(&cfg, 5, DType::F32, &dev).unwrap();
        let master = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
        let model = master.cast(DType::BF16).unwrap();
        let packing = packed.then_some(&packing);
        // Without a sink: one node per block half, every gradient through candle's walk.
        let loss = model.loss(&inputs, &targets, packing).unwrap();
        let walked = by_name(&map, &loss.backward().unwrap());
        let (sunk_loss, sink) = grad_sink::collect(|| model.loss(&inputs, &targets, packing));
        let sunk_loss = sunk_loss.unwrap();
        let mut grads = sunk_loss.backward().unwrap();
        // The blocks' weights bypassed the walk (nine a block)...
        let vars = map.all_vars();
        let missing = vars.iter().filter(|v| grads.get(v.as_tensor()).is_none()).count();
        assert_eq!(missing, 9 * cfg.n_layers, "packed {packed}");
        sink.add_to(&mut grads).unwrap();
        // ...and the loss and every gradient are the same bits.
        let scalar = |l: &Tensor| l.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(scalar(&sunk_loss), scalar(&loss), "packed {packed}");
        for ((name, a), (_, b)) in by_name(&map, &grads).iter().zip(&walked) {
            assert!(a.iter().any(|v| *v != 0.0), "packed {packed}: {name} has a zero gradient");
            assert_eq!(a, b, "packed {packed}: gradient of {name}");
        }
    }
}
