//! The one training loop. Objectives plug in; the loop owns accumulation, clipping, the schedule,
//! the optimiser and the stability guard, so every objective (next-token now; SFT and DPO later)
//! gets them the same way.

use crate::optim::AdamW;
use crate::schedule::Schedule;
use crate::TrainError;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tsukuru_model::kernels::grad_sink;
use tsukuru_model::{Packing, Transformer};
use tsukuru_tokens::Batch;

/// What a training step optimises.
pub trait Objective {
    /// Scalar loss of `batch` under `model` (a mean, so micro-batches of equal size average correctly).
    fn loss(&self, model: &Transformer, batch: &Batch, device: &Device) -> candle_core::Result<Tensor>;
}

/// Next-token prediction: mean cross-entropy of every scored position's prediction of the
/// following token. Pretraining scores every position; instruction tuning (SFT) is the same
/// objective on packed batches ([`tsukuru_tokens::sft`]) whose targets outside the assistant's
/// replies are ignored, and whose conversations attention keeps apart.
#[derive(Debug, Clone, Copy, Default)]
pub struct NextToken;

impl Objective for NextToken {
    fn loss(&self, model: &Transformer, batch: &Batch, device: &Device) -> candle_core::Result<Tensor> {
        let inputs = Tensor::from_slice(&batch.inputs, (batch.batch, batch.seq), device)?;
        let targets = Tensor::from_slice(&batch.targets, batch.batch * batch.seq, device)?;
        let packing = batch.lengths.as_ref().map(|rows| Packing::from_lengths(batch.seq, rows)).transpose()?;
        model.loss(&inputs, &targets, packing.as_ref())
    }
}

/// The arithmetic a training step computes in. Master weights, gradients and the optimiser's
/// moments are f32 either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    Float32,
    /// Mixed precision: each step computes with a bf16 copy of the weights ([`Transformer::cast`]),
    /// activations and their gradients in bf16; norm statistics, softmaxes and the loss reduce in
    /// f32, and the weight gradients reach the f32 masters through the cast. bf16 has f32's
    /// exponent range, so unlike f16 it needs no loss scaling.
    Bfloat16,
}

impl Precision {
    /// The dtype the forward and backward passes compute in.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::Float32 => DType::F32,
            Precision::Bfloat16 => DType::BF16,
        }
    }

    /// True for the default, f32 throughout (configs leave it out, so their fingerprints stay).
    pub fn is_float32(&self) -> bool {
        *self == Precision::Float32
    }
}

/// Settings of the loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// Optimiser steps in the whole run.
    pub steps: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Global gradient-norm limit (0 disables clipping).
    pub clip: f64,
    /// Non-finite steps in a row after which training stops with an error.
    pub max_bad_steps: u32,
    /// What the forward and backward passes compute in.
    #[serde(default, skip_serializing_if = "Precision::is_float32")]
    pub precision: Precision,
}

/// What one optimiser step did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    /// Step number (1-based, counting skipped steps).
    pub step: u64,
    /// Mean loss over the micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// True when the step was skipped because the loss or gradients were not finite.
    pub skipped: bool,
    /// Seconds spent until each micro-batch's loss was read back: the weights' cast and the
    /// forward passes (on a GPU also the work queued before them, such as an earlier micro-batch's
    /// backward pass).
    pub forward_s: f64,
    /// Seconds from the last loss until the gradient norm was read back: the backward pass and the
    /// norm. What remains of a step is the optimiser's update.
    pub backward_s: f64,
}

/// The loop's state between steps.
pub struct Trainer {
    opt: AdamW,
    vars: Vec<Var>,
    cfg: LoopConfig,
    step: u64,
    bad_in_row: u32,
    skipped: u64,
}

impl Trainer {
    /// A trainer over `vars` (the model's parameters) with optimiser `opt`.
    pub fn new(vars: Vec<Var>, opt: AdamW, cfg: LoopConfig) -> Result<Self, TrainError> {
        cfg.schedule.validate().map_err(TrainError::Config)?;
        if cfg.grad_accum == 0 || cfg.steps == 0 || cfg.lr <= 0.0 || cfg.lr.is_nan() {
            return Err(TrainError::Config(format!(
                "steps ({}), grad_accum ({}) and lr ({}) must be positive",
                cfg.steps, cfg.grad_accum, cfg.lr
            )));
        }
        Ok(Self { opt, vars, cfg, step: 0, bad_in_row: 0, skipped: 0 })
    }

    /// A trainer over the named variables, with AdamW set up by `adamw` (grouped by name).
    pub fn over(named: Vec<(String, Var)>, adamw: crate::AdamWConfig, cfg: LoopConfig) -> Result<Self, TrainError> {
        let vars = named.iter().map(|(_, v)| v.clone()).collect();
        Self::new(vars, AdamW::new(named, adamw)?, cfg)
    }

    /// Steps taken so far (skipped ones included).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The optimiser (for checkpoints).
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// Continues from a checkpoint: the loop's step count and the optimiser's state.
    pub fn restore(
        &mut self,
        step: u64,
        opt_step: u64,
        state: &std::collections::HashMap<String, Tensor>,
    ) -> Result<(), TrainError> {
        self.opt.load_state(opt_step, state)?;
        self.step = step;
        Ok(())
    }

    /// Steps skipped for non-finite values so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// One optimiser step over `grad_accum` micro-batches drawn from `next_batch`.
    pub fn step(
        &mut self,
        model: &Transformer,
        objective: &dyn Objective,
        device: &Device,
        next_batch: &mut dyn FnMut() -> Batch,
    ) -> Result<StepReport, TrainError> {
        let accum = self.cfg.grad_accum;
        let mut clock = Instant::now();
        // Cast once per step: the weights change only at the optimiser's update.
        let cast;
        let model = match self.cfg.precision.compute_dtype() {
            dtype if dtype == model.dtype() => model,
            dtype => {
                cast = model.cast(dtype)?;
                &cast
            }
        };
        let mut total: Option<GradStore> = None;
        let mut loss_sum = 0.0;
        let mut forward_s = 0.0;
        for _ in 0..accum {
            let batch = next_batch();
            // The fused ops hand their weights' gradients to the sink rather than to candle's
            // walk (zero-fill and add on one thread); they join candle's store after it.
            let (loss, sink) = grad_sink::collect(|| objective.loss(model, &batch, device));
            let loss = loss?;
            loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            forward_s += lap(&mut clock);
            let mut grads = loss.backward()?;
            sink.add_to(&mut grads)?;
            total = Some(match total {
                None => grads,
                Some(mut acc) => {
                    for v in &self.vars {
                        if let (Some(a), Some(g)) = (acc.get(v.as_tensor()), grads.get(v.as_tensor())) {
                            let sum = (a + g)?;
                            acc.insert(v.as_tensor(), sum);
                        }
                    }
                    acc
                }
            });
        }
        let grads = total.expect("grad_accum ≥ 1");
        self.step += 1;
        let loss = loss_sum / accum as f64;
        // Gradients are sums over micro-batches: dividing by `accum` gives the mean's gradient.
        let grad_norm = self.opt.grad_norm(&grads)? / accum as f64;
        let backward_s = lap(&mut clock);
        let lr = self.cfg.lr * self.cfg.schedule.factor(self.step - 1, self.cfg.steps);
        if !loss.is_finite() || !grad_norm.is_finite() {
            self.bad_in_row += 1;
            self.skipped += 1;
            if self.bad_in_row >= self.cfg.max_bad_steps {
                return Err(TrainError::Diverged { step: self.step, in_a_row: self.bad_in_row, lr });
            }
            return Ok(StepReport { step: self.step, loss, lr, grad_norm, skipped: true, forward_s, backward_s });
        }
        self.bad_in_row = 0;
        let clip = if self.cfg.clip > 0.0 && grad_norm > self.cfg.clip { self.cfg.clip / grad_norm } else { 1.0 };
        self.opt.step(&grads, lr, clip / accum as f64)?;
        Ok(StepReport { step: self.step, loss, lr, grad_norm, skipped: false, forward_s, backward_s })
    }
}

/// Seconds since `clock`, which is reset to now.
fn lap(clock: &mut Instant) -> f64 {
    let now = Instant::now();
    let s = now.duration_since(*clock).as_secs_f64();
    *clock = now;
    s
}
