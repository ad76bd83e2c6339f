//! Teacher-written training text for sequence-level KD (Kim & Rush 2016; Alpaca-style data): a
//! model completes every prompt of a prompt set, and the results form a JSONL data set that a
//! recipe trains on (`data.train_sources = [{ path = "…", format = "jsonl" }]`, field `text`).
//!
//! Every record carries its prompt, completion, the text a student trains on, why decoding
//! stopped, the sampling settings, the writer's fingerprint and a sha256 over the rest of the
//! record, so a data set says what wrote it and a damaged line is found, not trained on.
//!
//! Writing is resumable: progress lives next to the output in `<out>.parts/` — a manifest of
//! the settings and one file per batch of prompts, each written atomically — and the output is
//! written (atomically) once every part exists, then the parts are removed. Run again after an
//! interruption (even `kill -9`) and only the missing parts are generated; prompt i is sampled
//! with its own seed, so a resumed run writes what an uninterrupted one would have.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::rng::SplitMix64;
use crate::eval::generate::{decoding_weights, generate_batch_seeded, GenerateOptions};
use crate::eval::{decode, encode, first_stop, reaches_stop};
use crate::io::chat::Message;
use crate::io::lm::{tokenizer_fingerprint, LoadedLm};
use crate::models::lm::CausalLm;
use crate::teacher::server::{in_turn, ChatAsk, ServerChat, ServerOptions, TokenLogprob};
use crate::{Error, Result};

/// Version of the record and manifest layout.
pub const FORMAT_VERSION: u32 = 1;

/// How the prompts are completed: decoding settings, stop strings, the chat template and the
/// batch size (part of the manifest, since the batch changes the float rounding of padded rows).
#[derive(Debug, Clone)]
pub struct GenDataOptions {
    /// Decoding settings (`seed` seeds prompt i's sampler together with i; `eos_id` ends a row).
    pub generate: GenerateOptions,
    /// A completion is cut before the first of these strings and its row stops there.
    pub stops: Vec<String>,
    /// Wrap each prompt as one user turn in the model's chat template.
    pub chat: bool,
    /// Prompts per batch (and per part file).
    pub batch: usize,
    /// Print a line per part to stderr.
    pub progress: bool,
}

/// The sampling settings stored with every record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub repetition_penalty: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
    pub stops: Vec<String>,
    pub chat: bool,
    /// Alternatives per token asked of a server (0: none, and absent from the record).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub top_logprobs: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Sampling {
    fn of(o: &GenDataOptions) -> Self {
        let g = &o.generate;
        Sampling {
            temperature: g.temperature,
            top_k: g.top_k,
            top_p: g.top_p,
            repetition_penalty: g.repetition_penalty,
            max_new_tokens: g.max_new_tokens,
            seed: g.seed,
            stops: o.stops.clone(),
            chat: o.chat,
            top_logprobs: 0,
        }
    }
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// The model emitted its end-of-sequence token.
    Eos,
    /// A stop string appeared (the completion ends before it).
    Stop,
    /// `max_new_tokens` were generated.
    Length,
}

/// One line of a generated data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Index of the prompt in the prompt set.
    pub id: usize,
    /// The prompt as given.
    pub prompt: String,
    /// The generated text (special tokens dropped, cut before a stop string).
    pub completion: String,
    /// What a student trains on: the model's input (the prompt, or the prompt in the chat
    /// template) followed by the completion.
    pub text: String,
    /// With `--chat`: the conversation — the prompt as a user turn, the completion as the
    /// assistant's — which a data source reads instead of `text` (the student learns the
    /// assistant turn only, through the chat template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    pub finish: Finish,
    /// Tokens generated (the stop string's and the EOS token included).
    pub new_tokens: usize,
    /// From a server asked for them: each generated token with its most likely alternatives
    /// (the server's token strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Fingerprint of the model that wrote it (`cache::model_fingerprint`).
    pub teacher: String,
    pub sampling: Sampling,
    /// sha256 (hex) of this record's JSON with this field empty.
    pub sha256: String,
}

impl Record {
    fn digest(&self) -> String {
        let mut r = self.clone();
        r.sha256.clear();
        let json = serde_json::to_string(&r).expect("a record serializes");
        format!("{:x}", Sha256::digest(json.as_bytes()))
    }

    fn sealed(mut self) -> Self {
        self.sha256 = self.digest();
        self
    }

    /// Parses and checks one line; the error says what is wrong with it.
    pub fn parse(line: &str) -> std::result::Result<Record, String> {
        let r: Record = serde_json::from_str(line).map_err(|e| format!("not a generated-data record: {e}"))?;
        if r.digest() != r.sha256 {
            return Err(format!("record {} fails its sha256 (edited or damaged)", r.id));
        }
        Ok(r)
    }
}

/// What a prompt set and settings were, kept in `<out>.parts/manifest.json` while writing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    version: u32,
    teacher: String,
    tokenizer: String,
    prompts: usize,
    prompts_sha256: String,
    batch: usize,
    sampling: Sampling,
}

/// The outcome of [`generate_data`].
#[derive(Debug, Clone, Serialize)]
pub struct GenDataSummary {
    pub records: usize,
    /// Records generated by this call (the rest were already written).
    pub generated: usize,
    /// Tokens generated by this call.
    pub new_tokens: usize,
    pub seconds: f64,
    /// Records ending with EOS, a stop string, or the token limit.
    pub finish_eos: usize,
    pub finish_stop: usize,
    pub finish_length: usize,
}

/// Prompts from a file: JSONL (`.jsonl`: one object per line, the prompt under `field`) or
/// plain text (one prompt per non-blank line). Every problem is one error naming the file and
/// line: not UTF-8, no prompt at all, a line that is not a JSON object, a missing or non-string
/// field, an empty prompt.
pub fn read_prompts(path: &Path, field: &str) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::format(path, format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))
    })?;
    let jsonl = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: String| Error::format(path, format!("line {}: {msg}", i + 1));
        let prompt = if jsonl {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| at(format!("not JSON ({e}); a .jsonl file has one object per line")))?;
            let Some(obj) = v.as_object() else {
                return Err(at(format!("expected a JSON object with a string field `{field}`")));
            };
            match obj.get(field) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(_) => return Err(at(format!("field `{field}` is not a string"))),
                None => return Err(at(format!("no field `{field}` (choose it with --field)"))),
            }
        } else {
            line.to_string()
        };
        if prompt.trim().is_empty() {
            return Err(at("the prompt is empty".into()));
        }
        prompts.push(prompt);
    }
    if prompts.is_empty() {
        return Err(Error::format(path, "no prompts: the file is empty"));
    }
    Ok(prompts)
}

/// Every record of a generated data set, checked; the error names the line at fault.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| Record::parse(l).map_err(|m| Error::format(path, format!("line {}: {m}", i + 1))))
        .collect()
}

/// The directory that holds an unfinished [`generate_data`] for `out`.
pub fn parts_dir(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".parts");
    out.with_file_name(name)
}

fn prompts_digest(prompts: &[String]) -> String {
    let mut h = Sha256::new();
    for p in prompts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    format!("{:x}", h.finalize())
}

/// The seed of prompt `id`'s sampler.
fn row_seed(seed: u64, id: usize) -> u64 {
    SplitMix64::derive(seed, 0x5e9_da7a, id as u64).next_u64()
}

/// The parts directory of an unfinished data set: created with its manifest, or checked to
/// hold parts of this same data set (prompts, model and settings).
fn open_parts(dir: &Path, manifest: &Manifest) -> Result<()> {
    let manifest_path = dir.join("manifest.json");
    if manifest_path.exists() {
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
        let old: Manifest = serde_json::from_str(&text).map_err(|e| Error::format(&manifest_path, e.to_string()))?;
        if &old != manifest {
            return Err(Error::Invalid(format!(
                "{} holds an unfinished data set from other prompts, model or settings; rerun with those, or remove the directory",
                dir.display()
            )));
        }
    } else {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        distill_base::write_json(&manifest_path, manifest)?;
    }
    Ok(())
}

/// What every part of a data set is generated with.
struct PartContext<'a> {
    lm: &'a LoadedLm,
    /// The model that decodes (`lm`'s, packed for the batch where that applies).
    model: &'a CausalLm,
    prompts: &'a [String],
    /// The prompts as the model reads them (chat-templated with `--chat`).
    inputs: &'a [String],
    opts: &'a GenDataOptions,
    teacher: &'a str,
    sampling: &'a Sampling,
}

/// Completes prompts `ids` as one batch: their sealed records.
fn generate_part(ctx: &PartContext<'_>, ids: &[usize]) -> Result<Vec<Record>> {
    let PartContext { lm, model, prompts, inputs, opts, teacher, sampling } = *ctx;
    let encoded = ids.iter().map(|&i| encode(&lm.tokenizer, &inputs[i])).collect::<Result<Vec<_>>>()?;
    let seeds: Vec<u64> = ids.iter().map(|&i| row_seed(opts.generate.seed, i)).collect();
    let stop = |_: usize, out: &[i64]| reaches_stop(&lm.tokenizer, out, &opts.stops);
    let outs = generate_batch_seeded(model, &encoded, &seeds, &opts.generate, stop)?;
    let mut recs = Vec::with_capacity(ids.len());
    for (&i, out_ids) in ids.iter().zip(&outs) {
        let mut completion = decode(&lm.tokenizer, out_ids)?;
        let finish = if let Some(at) = first_stop(&completion, &opts.stops) {
            completion.truncate(at);
            Finish::Stop
        } else if out_ids.last().is_some_and(|&t| Some(t) == opts.generate.eos_id) {
            Finish::Eos
        } else {
            Finish::Length
        };
        let r = Record {
            id: i,
            prompt: prompts[i].clone(),
            text: format!("{}{completion}", inputs[i]),
            messages: opts.chat.then(|| vec![Message::user(&prompts[i]), Message::assistant(&completion)]),
            completion,
            finish,
            new_tokens: out_ids.len(),
            logprobs: None,
            teacher: teacher.to_string(),
            sampling: sampling.clone(),
            sha256: String::new(),
        }
        .sealed();
        recs.push(r);
    }
    Ok(recs)
}

/// Has `lm` complete every prompt and writes the records to `out` (JSONL), resuming from
/// `<out>.parts/` when an earlier call was interrupted. When `out` already holds this very data
/// set (same prompts, model and settings) nothing is generated; when it holds another, or the
/// parts were written with other settings, that is an error and nothing is touched.
pub fn generate_data(lm: &LoadedLm, prompts: &[String], opts: &GenDataOptions, out: &Path) -> Result<GenDataSummary> {
    check_request(prompts, opts)?;
    let teacher = crate::teacher::cache::model_fingerprint(&lm.source)?;
    let sampling = Sampling::of(opts);
    let set = DataSet {
        prompts,
        opts,
        teacher: &teacher,
        tokenizer: tokenizer_fingerprint(&lm.tokenizer),
        sampling: &sampling,
    };
    let inputs: Vec<String> =
        if opts.chat { prompts.iter().map(|p| lm.chat_prompt(p)).collect::<Result<_>>()? } else { prompts.to_vec() };
    // Every part decodes with the same weights: packed once for all of them.
    let packed = decoding_weights(&lm.model, opts.batch)?;
    let model = packed.as_ref().unwrap_or(&lm.model);
    let ctx = PartContext { lm, model, prompts, inputs: &inputs, opts, teacher: &teacher, sampling: &sampling };
    write_parts(&set, out, |ids| generate_part(&ctx, ids))
}

/// A black-box teacher writes the data set: every prompt is one user turn sent to the server's
/// chat endpoint (the served model's own chat template), `batch` prompts per part with
/// `server.concurrency` requests in flight; prompt i is sampled with its own seed. The records
/// are conversations (`messages`), with the server's per-token log-probs when `top_logprobs` >
/// 0 and the server gives them. Resumable as [`generate_data`].
pub fn generate_data_server(
    server: &ServerOptions,
    prompts: &[String],
    opts: &GenDataOptions,
    top_logprobs: usize,
    out: &Path,
) -> Result<GenDataSummary> {
    check_request(prompts, opts)?;
    // The model is the writer (its name as the server lists it), wherever it is served: a
    // restarted server on another port resumes the same data set.
    let listed = crate::teacher::server::ping(server)?;
    let model = server.model.clone().or(listed).unwrap_or_else(|| "(default)".into());
    let teacher = format!("server model {model}");
    let mut sampling = Sampling::of(opts);
    (sampling.chat, sampling.top_logprobs) = (true, top_logprobs);
    let set = DataSet { prompts, opts, teacher: &teacher, tokenizer: "server".into(), sampling: &sampling };
    let g = &opts.generate;
    let ask = ChatAsk {
        max_tokens: g.max_new_tokens,
        temperature: g.temperature,
        top_p: g.top_p,
        top_k: g.top_k,
        repetition_penalty: g.repetition_penalty,
        stops: opts.stops.clone(),
        top_logprobs,
        api: server.api,
    };
    let chat = ServerChat::new(server);
    let one = |i: usize| -> Result<Record> {
        let r = chat.complete(i, &prompts[i], &ask, row_seed(g.seed, i), &format!("prompt {i}"))?;
        let finish = if r.finish_reason == "length" { Finish::Length } else { Finish::Eos };
        Ok(Record {
            id: i,
            prompt: prompts[i].clone(),
            text: format!("{}\n{}", prompts[i], r.content),
            messages: Some(vec![Message::user(&prompts[i]), Message::assistant(&r.content)]),
            completion: r.content,
            finish,
            new_tokens: r.completion_tokens,
            logprobs: r.logprobs,
            teacher: teacher.clone(),
            sampling: sampling.clone(),
            sha256: String::new(),
        }
        .sealed())
    };
    write_parts(&set, out, |ids| in_turn(server.concurrency, ids.len(), |j| one(ids[j])))
}

fn check_request(prompts: &[String], opts: &GenDataOptions) -> Result<()> {
    if prompts.is_empty() {
        return Err(Error::Invalid("generate-data: no prompts".into()));
    }
    if opts.batch == 0 {
        return Err(Error::Invalid("generate-data: the batch size must be ≥ 1".into()));
    }
    Ok(())
}

/// A data set being written: its prompts, settings and writer.
struct DataSet<'a> {
    prompts: &'a [String],
    opts: &'a GenDataOptions,
    teacher: &'a str,
    tokenizer: String,
    sampling: &'a Sampling,
}

/// Writes the data set part by part (`part(ids)` gives the records of prompts `ids`) into
/// `<out>.parts/`, keeping parts already written, then `out`.
fn write_parts(
    set: &DataSet<'_>,
    out: &Path,
    mut part: impl FnMut(&[usize]) -> Result<Vec<Record>>,
) -> Result<GenDataSummary> {
    let DataSet { prompts, opts, teacher, sampling, .. } = *set;
    let t0 = Instant::now();
    let manifest = Manifest {
        version: FORMAT_VERSION,
        teacher: teacher.to_string(),
        tokenizer: set.tokenizer.clone(),
        prompts: prompts.len(),
        prompts_sha256: prompts_digest(prompts),
        batch: opts.batch,
        sampling: sampling.clone(),
    };
    let same_set = |records: &[Record]| {
        records.len() == prompts.len()
            && records
                .iter()
                .zip(prompts)
                .enumerate()
                .all(|(i, (r, p))| r.id == i && &r.prompt == p && r.teacher == teacher && &r.sampling == sampling)
    };
    if out.exists() {
        let records = read_records(out)?;
        if same_set(&records) {
            return Ok(summary(&records, 0, 0, t0));
        }
        return Err(Error::Invalid(format!(
            "{} already exists and holds another data set (other prompts, model or settings); choose another --out or remove it",
            out.display()
        )));
    }

    let dir = parts_dir(out);
    open_parts(&dir, &manifest)?;
    let n_parts = prompts.len().div_ceil(opts.batch);
    let (mut generated, mut new_tokens) = (0, 0);
    let mut all = Vec::with_capacity(prompts.len());
    for p in 0..n_parts {
        let ids: Vec<usize> = (p * opts.batch..((p + 1) * opts.batch).min(prompts.len())).collect();
        let path = dir.join(format!("part-{p:06}.jsonl"));
        if path.exists() {
            match read_records(&path) {
                Ok(recs) if recs.len() == ids.len() && same_prefix(&recs, &ids, prompts, teacher, sampling) => {
                    all.extend(recs);
                    continue;
                }
                Ok(_) => eprintln!("{}: does not match its prompts; written again", path.display()),
                Err(e) => eprintln!("{e}; written again"),
            }
        }
        let tp = Instant::now();
        let recs = part(&ids)?;
        let toks: usize = recs.iter().map(|r| r.new_tokens).sum();
        new_tokens += toks;
        distill_base::write_atomic(&path, jsonl(&recs).as_bytes())?;
        generated += recs.len();
        if opts.progress {
            eprintln!(
                "part {}/{n_parts}: {} prompts, {toks} tokens, {:.1} tok/s",
                p + 1,
                recs.len(),
                toks as f64 / tp.elapsed().as_secs_f64()
            );
        }
        all.extend(recs);
    }
    distill_base::write_atomic(out, jsonl(&all).as_bytes())?;
    std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(summary(&all, generated, new_tokens, t0))
}

/// Records as JSONL, one per line.
fn jsonl(records: &[Record]) -> String {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).expect("a record serializes"));
        text.push('\n');
    }
    text
}

fn same_prefix(recs: &[Record], ids: &[usize], prompts: &[String], teacher: &str, sampling: &Sampling) -> bool {
    recs.iter()
        .zip(ids)
        .all(|(r, &i)| r.id == i && r.prompt == prompts[i] && r.teacher == teacher && &r.sampling == sampling)
}

fn summary(records: &[Record], generated: usize, new_tokens: usize, t0: Instant) -> GenDataSummary {
    let count = |f: Finish| records.iter().filter(|r| r.finish == f).count();
    GenDataSummary {
        records: records.len(),
        generated,
        new_tokens,
        seconds: t0.elapsed().as_secs_f64(),
        finish_eos: count(Finish::Eos),
        finish_stop: count(Finish::Stop),
        finish_length: count(Finish::Length),
    }
}

/// Prompts from packed training rows: the first `prompt_tokens` tokens of each of the first
/// `limit` rows, as text (special tokens dropped). With `max_new_tokens = seq_len −
/// prompt_tokens` the teacher's text replaces the rows token for token.
pub fn prompts_from_rows(
    rows: &distill_text::TokenBlocks,
    tok: &tokenizers::Tokenizer,
    prompt_tokens: usize,
    limit: usize,
) -> Result<Vec<String>> {
    if prompt_tokens == 0 || prompt_tokens > rows.seq_len {
        return Err(Error::Invalid(format!(
            "--prompt-tokens must be in 1..={} (the rows' length), got {prompt_tokens}",
            rows.seq_len
        )));
    }
    let mut out = Vec::new();
    for i in 0..rows.n_blocks().min(limit) {
        let row = rows.row(i).expect("row in range");
        let text = crate::eval::decode(tok, &row[..prompt_tokens].iter().map(|&t| t as i64).collect::<Vec<_>>())?;
        if !text.trim().is_empty() {
            out.push(text);
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid("no training row gives a non-empty prompt".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_sealed_and_a_changed_byte_is_caught() {
        let r = Record {
            id: 3,
            prompt: "The cat".into(),
            completion: " sat.".into(),
            text: "The cat sat.".into(),
            messages: None,
            finish: Finish::Eos,
            new_tokens: 3,
            logprobs: None,
            teacher: "ab".into(),
            sampling: Sampling {
                temperature: 0.8,
                top_k: 0,
                top_p: 0.95,
                repetition_penalty: 1.0,
                max_new_tokens: 8,
                seed: 1,
                stops: vec!["\n".into()],
                chat: false,
                top_logprobs: 0,
            },
            sha256: String::new(),
        }
        .sealed();
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(Record::parse(&line).unwrap(), r);
        let edited = line.replace("sat.", "sat!");
        assert!(Record::parse(&edited).unwrap_err().contains("sha256"), "{edited}");
        assert!(Record::parse(&line[..line.len() - 5]).unwrap_err().contains("not a generated-data record"));
    }

    #[test]
    fn prompt_files_fail_with_one_line_naming_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let ok = write("p.jsonl", b"{\"prompt\": \"a\"}\n\n{\"prompt\": \"b\", \"x\": 1}\n");
        assert_eq!(read_prompts(&ok, "prompt").unwrap(), ["a", "b"]);
        let txt = write("p.txt", b"first prompt\n\n second \n");
        assert_eq!(read_prompts(&txt, "prompt").unwrap(), ["first prompt", " second "]);
        let cases: [(&str, &[u8], &str); 6] = [
            ("empty.jsonl", b"", "no prompts: the file is empty"),
            ("blank.txt", b"\n  \n", "no prompts: the file is empty"),
            ("latin1.txt", b"caf\xe9\n", "not UTF-8 text (invalid byte at offset 3)"),
            ("bad.jsonl", b"{\"prompt\": \"a\"}\nhello\n", "line 2: not JSON"),
            ("field.jsonl", b"{\"text\": \"a\"}\n", "line 1: no field `prompt`"),
            ("kind.jsonl", b"[1, 2]\n", "line 1: expected a JSON object"),
        ];
        for (name, bytes, want) in cases {
            let e = read_prompts(&write(name, bytes), "prompt").unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(name) && !e.contains('\n'), "{name}: {e}");
        }
    }
}
