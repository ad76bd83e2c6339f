//! Test-only family: Llama whose RMSNorm gains are stored as offsets from 1 (`(1 + w)·x̂`, as
//! Gemma's are). It touches only this file and its variant in `family.rs`; its test checks it
//! against Llama with the gains shifted by one.

use super::Names;
use crate::models::lm::family::Traits;

pub const NAMES: Names =
    Names { hf_class: "TestNormForCausalLM", model_type: "test_norm", gguf_arch: None, defaults: "{}" };
pub const TRAITS: Traits = Traits { norm_offset: 1.0, ..Traits::LLAMA };

#[cfg(test)]
mod tests {
    use tch::{nn, Device, Kind, Tensor};

    use crate::models::lm::{CausalLm, Family, HfLmConfig, LmConfig};

    fn config(family: Family) -> LmConfig {
        let json = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2}"#;
        let cfg = HfLmConfig::from_slice(json.as_bytes()).unwrap().into_config("test.json").unwrap();
        LmConfig { family, ..cfg }
    }

    #[test]
    fn offset_gains_equal_llama_with_shifted_gains() {
        tch::manual_seed(3);
        let vs_t = nn::VarStore::new(Device::Cpu);
        let test = CausalLm::new(vs_t.root(), &config(Family::TestNorm)).unwrap();
        let mut vs_l = nn::VarStore::new(Device::Cpu);
        let llama = CausalLm::new(vs_l.root(), &config(Family::Llama)).unwrap();
        // Random gains (not the init's ones), so that an ignored offset cannot pass.
        tch::no_grad(|| {
            for (name, mut t) in vs_t.variables() {
                if name.ends_with("norm.weight") {
                    t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
                }
            }
        });
        vs_l.copy(&vs_t).unwrap();
        tch::no_grad(|| {
            for (name, mut t) in vs_l.variables() {
                if name.ends_with("norm.weight") {
                    let _ = t.g_add_scalar_(1.0);
                }
            }
        });
        let ids = Tensor::from_slice(&[1i64, 5, 9, 2, 33, 7, 0, 63]).view([2, 4]);
        let z_t = tch::no_grad(|| test.forward(&ids, None, Default::default())).unwrap().logits;
        let z_l = tch::no_grad(|| llama.forward(&ids, None, Default::default())).unwrap().logits;
        let d = (&z_t - &z_l).abs().max().double_value(&[]);
        assert!(d < 1e-5, "max |Δ| {d}");
        // Without the offset the two differ: the test would catch a family whose trait is ignored.
        let mut vs_p = nn::VarStore::new(Device::Cpu);
        let plain = CausalLm::new(vs_p.root(), &config(Family::Llama)).unwrap();
        vs_p.copy(&vs_t).unwrap();
        let z_plain = tch::no_grad(|| plain.forward(&ids, None, Default::default())).unwrap().logits;
        assert!((&z_t - &z_plain).abs().max().double_value(&[]) > 1e-2);
    }
}
