//! Conversation data on the real SmolLM2-135M-Instruct teacher: the assistant-token mask against
//! one built in Python with transformers' `apply_chat_template` (by rendering each assistant
//! turn's prefixes and diffing their token ids), and one conversation per row giving the same
//! per-token loss as each conversation alone.

#![allow(clippy::too_many_lines)] // tests read as scripts; the 120-line limit is for library and binary code

mod common;

use std::path::PathBuf;

use common::run_python;
use distill::data::text::{lm_batch, text_blocks};
use distill::io::lm::load_lm;
use distill::models::lm::ForwardOptions;
use distill_text::{TextSource, TokenBlocks};
use serde_json::json;
use tch::{Device, Kind, Tensor};

fn smollm2() -> PathBuf {
    let p = distill::io::fetch::asset("smollm2").unwrap().root_path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} is missing: run `./target/release/distill fetch smollm2`", p.display());
    p
}

/// Conversations of every form: one turn (the template adds its default system turn), a system
/// prompt, several assistant turns, a tool turn, prompt/completion strings and lists.
fn records() -> Vec<serde_json::Value> {
    let m = |role: &str, content: &str| json!({"role": role, "content": content});
    vec![
        json!({"messages": [m("user", "What is the capital of France?"), m("assistant", "Paris.")]}),
        json!({"messages": [
            m("system", "You answer in one word."),
            m("user", "Name a primary color."),
            m("assistant", "Red"),
        ]}),
        json!({"messages": [
            m("user", "Count to three."),
            m("assistant", "1, 2, 3."),
            m("user", "Now backwards, please."),
            m("assistant", "3, 2, 1.\nDone!"),
        ]}),
        json!({"messages": [
            m("system", "Use the tool when needed."),
            m("user", "What is 12 times 12?"),
            m("tool", "144"),
            m("assistant", "12 × 12 = 144."),
        ]}),
        json!({"prompt": "Translate 'bonjour' to English.", "completion": "Hello."}),
        json!({"prompt": [m("system", "Be kind."), m("user", "Say hi.")], "completion": [m("assistant", "Hi there! 😊")]}),
    ]
}

/// The rendered conversations as the rows hold them: `[(ids, target mask)]` per conversation.
const MASK_PY: &str = r#"
import json, sys
from transformers import AutoTokenizer
path, records = sys.argv[1], json.loads(sys.argv[2])
d, f = path.rsplit("/", 1)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
def ids(msgs, gen):
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    return tok(text, add_special_tokens=False)["input_ids"]
out = []
for r in records:
    if "messages" in r:
        msgs = r["messages"]
    else:
        p, c = r["prompt"], r["completion"]
        msgs = ([{"role": "user", "content": p}] if isinstance(p, str) else p) + \
               ([{"role": "assistant", "content": c}] if isinstance(c, str) else c)
    full = ids(msgs, False)
    mask = [0] * len(full)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before, through = ids(msgs[:i], True), ids(msgs[: i + 1], False)
        assert full[: len(before)] == before and full[: len(through)] == through, (i, msgs)
        for j in range(len(before), len(through)):
            mask[j] = 1
    out.append([full, mask])
print(json.dumps(out))
"#;

fn write_jsonl(path: &std::path::Path, records: &[serde_json::Value]) {
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// Row `i` of `blocks` cut to its real tokens, with its target mask.
fn row(blocks: &TokenBlocks, i: usize) -> (Vec<u32>, Vec<u8>) {
    let mask = blocks.mask_row(i).unwrap();
    let n = mask.iter().filter(|&&m| m == 1).count();
    let t = blocks.target_mask.as_ref().unwrap();
    let s = blocks.seq_len;
    (blocks.row(i).unwrap()[..n].to_vec(), t[i * s..i * s + n].to_vec())
}

#[test]
fn assistant_mask_matches_transformers_prefix_rendering() {
    let gguf = smollm2();
    let teacher = load_lm(&gguf, Device::Cpu).unwrap();
    let tmp = common::tmpdir("chat-mask");
    let file = tmp.join("chat.jsonl");
    write_jsonl(&file, &records());
    let chat = teacher.chat().unwrap();
    let blocks =
        text_blocks(&[TextSource::new(file.to_str().unwrap())], &teacher.tokenizer, 160, 0, Some(&chat)).unwrap();
    assert_eq!(blocks.n_blocks(), records().len(), "one conversation per row");

    let arg = serde_json::to_string(&records()).unwrap();
    let stdout = run_python(|c| c.args(["-c", MASK_PY, gguf.to_str().unwrap(), &arg]));
    let theirs: Vec<(Vec<u32>, Vec<u8>)> =
        serde_json::from_slice(stdout.split(|&b| b == b'\n').rev().nth(1).unwrap()).unwrap();
    for (i, (ids, mask)) in theirs.iter().enumerate() {
        let (our_ids, our_mask) = row(&blocks, i);
        assert_eq!(&our_ids, ids, "conversation {i}: token ids");
        assert_eq!(&our_mask, mask, "conversation {i}: assistant mask");
        assert!(mask.contains(&1));
    }
    // The learned text of the multi-turn conversation: both answers, each with its end marker.
    let (ids, mask) = row(&blocks, 2);
    let learned: Vec<u32> = ids.iter().zip(&mask).filter(|(_, &m)| m == 1).map(|(&t, _)| t).collect();
    assert_eq!(teacher.tokenizer.decode(&learned, false).unwrap(), "1, 2, 3.<|im_end|>\n3, 2, 1.\nDone!<|im_end|>\n");

    // Training targets: position t predicts t + 1 only where t + 1 is an assistant token.
    let b = lm_batch(&blocks, &[2], Device::Cpu);
    let targets = Vec::<i64>::try_from(b.targets.view([-1])).unwrap();
    let want: Vec<i64> = (0..blocks.seq_len)
        .map(|t| if t + 1 < ids.len() && mask[t + 1] == 1 { ids[t + 1] as i64 } else { -100 })
        .collect();
    assert_eq!(targets, want);
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// One conversation per row, right-padded: every scored token's loss equals the loss of the
/// same token when its conversation is run alone, unpadded — no conversation sees another.
#[test]
fn conversations_in_one_batch_score_as_each_alone() {
    let teacher = load_lm(&smollm2(), Device::Cpu).unwrap();
    let tmp = common::tmpdir("chat-rows");
    let file = tmp.join("chat.jsonl");
    write_jsonl(&file, &records()[..4]);
    let chat = teacher.chat().unwrap();
    let blocks =
        text_blocks(&[TextSource::new(file.to_str().unwrap())], &teacher.tokenizer, 96, 0, Some(&chat)).unwrap();
    let rows: Vec<usize> = (0..blocks.n_blocks()).collect();
    let nll = |ids: &Tensor, targets: &Tensor, mask: Option<&Tensor>| -> Tensor {
        let out = tch::no_grad(|| teacher.model.forward(ids, mask, ForwardOptions::default()).unwrap().logits);
        let logp = out.log_softmax(-1, Kind::Float); // [B, T, V]
        let safe = targets.clamp_min(0).unsqueeze(-1);
        -logp.gather(-1, &safe, false).squeeze_dim(-1) * targets.ge(0).to_kind(Kind::Float)
        // [B, T]
    };
    let b = lm_batch(&blocks, &rows, Device::Cpu);
    assert!(b.mask.is_some(), "rows of different lengths are padded");
    let together = nll(&b.ids, &b.targets, b.mask.as_ref());
    let mut scored = 0;
    for (r, &i) in rows.iter().enumerate() {
        let n = blocks.mask_row(i).unwrap().iter().filter(|&&m| m == 1).count() as i64;
        let alone_b = lm_batch(&blocks, &[i], Device::Cpu);
        let ids = alone_b.ids.narrow(1, 0, n);
        let targets = alone_b.targets.narrow(1, 0, n);
        let alone = nll(&ids, &targets, None).squeeze_dim(0);
        let same = together.get(r as i64).narrow(0, 0, n);
        let d = (&same - &alone).abs().max().double_value(&[]);
        assert!(d < 1e-4, "conversation {i}: max |Δ nll| {d}");
        scored += targets.ge(0).sum(Kind::Int64).int64_value(&[]);
        // Padding scores nothing.
        assert_eq!(
            together.get(r as i64).narrow(0, n, blocks.seq_len as i64 - n).abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
    }
    assert!(scored > 20, "{scored} scored tokens");
    std::fs::remove_dir_all(&tmp).unwrap();
}
