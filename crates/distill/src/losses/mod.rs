//! Distillation losses, one family per file. Each documents its formula, its reduction and the
//! paper it comes from, and is tested against PyTorch reference values
//! (`tests/fixtures/losses/make_fixtures.py`, `make_divergence_fixtures.py`).
//!
//! - [`response`]: Hinton's `α·T²·KL + (1−α)·CE` on full logits ([`KdLoss`]).
//! - [`divergence`]: forward/reverse KL, generalized JSD, skew (reverse) KL and TVD between
//!   teacher and student, against dense logits or a top-k [`SparseTeacher`] cache.
//! - [`chunked`]: the whole objective from the student's hidden states and output projection,
//!   chunk by chunk over rows, never holding all `[N, V]` logits ([`ChunkedKd`]).
//! - [`hidden`]: feature KD on intermediate states through a learned projection (TinyBERT's MSE,
//!   DistilBERT's cosine) ([`HiddenLoss`]).
//! - [`feature_map`]: FitNets hints and attention transfer between image feature maps.
//! - [`relation`]: relational KD (RKD distance and angle) and MiniLM's self-attention relations.

pub mod chunked;
pub mod divergence;
pub mod embedding;
pub mod feature_map;
pub mod hidden;
pub mod relation;
pub mod response;
pub mod sampled;

pub use chunked::{ChunkTeacher, ChunkedKd};
pub use divergence::{Divergence, DivergenceCfg, DivergenceKind, SparseTeacher};
pub use hidden::{uniform_layer_map, HiddenLoss};
pub use response::{KdLoss, KdParts};
pub use sampled::TailSamples;
