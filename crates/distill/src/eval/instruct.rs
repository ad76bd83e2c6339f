//! Held-out instructions answered by every model of a run: each prompt as one user turn in the
//! teacher's chat template, decoded greedily until the end-of-turn token, graded by
//! [`crate::eval::answers::check`] where the record carries an `answer`, and kept side by side
//! for the report. A response that loops (distinct-2 below [`Generation::COLLAPSE_DISTINCT_2`])
//! is counted as collapsed whatever it says.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::eval::generate::GenerateOptions;
use crate::eval::{generate_texts, Generation};
use crate::io::chat::ModelChat;
use crate::models::lm::CausalLm;
use crate::{Error, Result};

/// One held-out instruction: a JSONL record with `prompt` and, optionally, `id`, `kind` and the
/// exact `answer` a checker grades.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Instruction {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub kind: String,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// The instructions of a JSONL file; an error names the file and line.
pub fn read_instructions(path: &Path) -> Result<Vec<Instruction>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Instruction = serde_json::from_str(line)
            .map_err(|e| Error::format(path, format!("line {}: not an instruction record ({e})", i + 1)))?;
        if r.prompt.trim().is_empty() {
            return Err(Error::format(path, format!("line {}: the prompt is empty", i + 1)));
        }
        out.push(r);
    }
    if out.is_empty() {
        return Err(Error::format(path, "no instructions"));
    }
    Ok(out)
}

/// One model's grades on the instructions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AnswerScores {
    /// `correct / graded` (None when nothing is graded).
    pub accuracy: Option<f64>,
    /// Instructions with an answer, answered right.
    pub correct: usize,
    /// Instructions with an answer.
    pub graded: usize,
    /// Responses whose distinct-2 marks a loop (wrong, whatever they say).
    pub collapsed: usize,
}

/// Per kind of instruction: (correct, graded).
pub type KindGrades = BTreeMap<String, (usize, usize)>;

/// One model's answers: its grades, per kind `(correct, graded)`, and every response.
#[derive(Debug, Clone)]
pub struct Answers {
    pub scores: AnswerScores,
    pub by_kind: KindGrades,
    pub responses: Vec<Generation>,
}

/// `model`'s greedy answers (at most `max_new_tokens` each, decoded in batches of `batch`)
/// through `chat`, graded.
pub fn answer(
    model: &CausalLm,
    tok: &Tokenizer,
    chat: &ModelChat,
    items: &[Instruction],
    max_new_tokens: usize,
    batch: usize,
) -> Result<Answers> {
    let prompts: Vec<String> = items.iter().map(|it| chat.prompt(&it.prompt)).collect::<Result<_>>()?;
    let opts = GenerateOptions {
        max_new_tokens,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
        eos_id: model.config().eos_token_ids.first().copied(),
        repetition_penalty: 1.0,
    };
    let mut responses: Vec<Generation> = Vec::with_capacity(items.len());
    for chunk in prompts.chunks(batch.max(1)) {
        responses.extend(generate_texts(model, tok, chunk, &opts, &[])?);
    }
    let mut scores = AnswerScores::default();
    let mut by_kind = KindGrades::new();
    for (it, g) in items.iter().zip(&responses) {
        let collapsed = g.tokens >= 8 && Generation::collapses(g.distinct_2);
        scores.collapsed += usize::from(collapsed);
        if let Some(want) = &it.answer {
            let right = !collapsed && crate::eval::answers::check(&it.kind, want, &g.text);
            let e = by_kind.entry(it.kind.clone()).or_default();
            e.0 += usize::from(right);
            e.1 += 1;
            scores.graded += 1;
            scores.correct += usize::from(right);
        }
    }
    scores.accuracy = (scores.graded > 0).then(|| scores.correct as f64 / scores.graded as f64);
    Ok(Answers { scores, by_kind, responses })
}
