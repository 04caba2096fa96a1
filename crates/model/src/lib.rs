//! tsukuru-model: the only place models are defined.
//!
//! [`ModelConfig`] holds every architectural variant as a field (GQA, activation, QK-norm, tied
//! embeddings) with a one-dial depth preset; [`Transformer`] is the Llama-style decoder built from a
//! candle `VarBuilder`, so the same definition trains from [`init::init_params`] and loads saved
//! weights ([`pretrained::load`] reads a checkpoint directory); [`ops`] holds the differentiable
//! building blocks it is built from: fused CPU [`kernels`], or composites for other devices.

mod column_major;
pub mod config;
pub mod gguf;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod init;
pub mod kernels;
pub mod lora;
pub mod ops;
pub mod packing;
pub mod paged;
pub mod pretrained;
pub mod transformer;

pub use config::{Activation, ConfigError, ModelConfig};
pub use lora::LoraSpec;
pub use packing::Packing;
pub use paged::{Chunk, KvBlocks};
pub use transformer::{KvCache, Transformer};
