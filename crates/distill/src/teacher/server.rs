//! A teacher behind a server: the top-k log-probs at every position of the training rows, asked
//! of an OpenAI-compatible completions endpoint and written as an offline cache
//! ([`distill_cache`]), so that training never holds the teacher.
//!
//! # What is asked (llama-cpp-python's OpenAI server)
//! The server takes text, not ids: each row is sent as the text of its tokens (special tokens
//! written out, which the server parses back) with `echo: true`, `logprobs: k + MARGIN`,
//! `max_tokens: 1`, `temperature: 0`. Its answer lists, per prompt token, the token's string and
//! a map `string → log-prob` of the distribution that **follows** the token (the answer pairs
//! token `j` with the logits computed after it: the "off by one" of its echo), with these quirks,
//! each handled here:
//! - entry 0 is `null`; a leading BOS is dropped from the list and every other BOS-valued token
//!   skipped (so position 0, and the position after each skipped token, are asked again alone:
//!   the text up to that position, `echo: false`, whose one completion entry is that position's
//!   distribution);
//! - the map's keys are detokenized strings (`errors="ignore"`: partial UTF-8 pieces and special
//!   tokens become `""`, tokens of equal strings merge), and it holds the key token's own
//!   log-prob as an extra entry (k + 1 entries).
//!
//! # vLLM
//! With `Api::Vllm` each row goes as token ids with `prompt_logprobs: k` (vLLM started with
//! `--max-logprobs ≥ k`; `--return-tokens-as-token-ids` makes the generated token's keys ids
//! too): entry j is the distribution before token j and holds that token, keys are ids, so
//! nothing is ambiguous and the row's tokens are the ids sent.
//!
//! # Token identity before trust
//! `usage.prompt_tokens` must equal the row's length (another tokenizer, an added BOS, a chat
//! template all change it) and every entry's token string must equal the piece distill's
//! tokenizer gives that row's id at that position: any difference stops the capture with one line
//! naming the row and position. A key is mapped to an id only when exactly one id of the
//! vocabulary has that piece; other keys (ambiguous, `""`) are dropped, their mass left in the
//! tail (counted in the summary) — except the most likely token: when a dropped key could hide
//! it, the server is asked to generate it (greedy, then under logit biases that narrow the ids
//! sharing its piece: [`RowAsk::resolve_top1`]), so the stored top-1 is the teacher's. The
//! stored top-k are the k largest mapped entries (padded with unused ids at −∞ when fewer are
//! certain); the tail mass is `1 − Σ stored`, so the cache is the exact teacher distribution
//! over the stored ids plus one tail bin, as a local capture without tail samples.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use distill_cache::{CacheSpec, CacheWriter, LogprobEncoding, Manifest};
use distill_text::TokenBlocks;
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::io::lm::tokenizer_fingerprint;
use crate::{Error, Result};

/// Log-probs asked beyond `top_k`, so that keys dropped as ambiguous rarely leave fewer than k.
const MARGIN: usize = 8;

/// The logit bias that lifts the ids asked about above every other (logits span tens).
const BOOST: f64 = 500.0;

/// Raw log-probs of one token from two answers on the same prefix agree within this (the
/// server's arithmetic may differ in the last bits between batch shapes).
const TIE: f32 = 2e-3;

/// Where the teacher is served and how it is asked.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Base URL: `http://127.0.0.1:8080` (`/v1/completions` is appended), or several separated
    /// by commas, which take the rows (prompts) in turn.
    pub url: String,
    /// The `model` field of each request (servers that host several models need it).
    pub model: Option<String>,
    /// Bearer token (from an environment variable; never written anywhere).
    pub api_key: Option<String>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Seconds a request may take before it counts as failed.
    pub timeout: Duration,
    /// Attempts per request (429, 5xx, timeouts and lost connections are retried with
    /// exponential backoff from 0.5 s).
    pub attempts: u32,
    /// The server's dialect of the completions endpoint.
    pub api: Api,
}

/// How a server gives prompt log-probs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// llama-cpp-python's OpenAI server: text prompts, `echo` + `logprobs`, string keys.
    #[default]
    LlamaCpp,
    /// vLLM (and servers that copy it): token-id prompts, `prompt_logprobs`, keys that are ids
    /// (`123` or, with `--return-tokens-as-token-ids`, `token_id:123`).
    Vllm,
}

/// `[teacher.server]`: the run asks this server for the teacher's top-k over the training rows
/// into `RUN/teacher-cache` (resumed with the run; as `distill cache --server`) and trains from
/// it; `teacher.path` still gives the tokenizer, the student's shape and the evaluation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerCfg {
    /// Base URL of the OpenAI-compatible completions endpoint (`http://127.0.0.1:8080`), or
    /// several separated by commas (servers of the same model), which take the rows in turn.
    pub url: String,
    /// The `model` field of each request (a server hosting several models).
    #[serde(default)]
    pub model: Option<String>,
    /// The server's dialect: `llama-cpp` (llama-cpp-python's OpenAI server, started with
    /// `--logits_all true`) or `vllm` (started with `--max-logprobs` ≥ top_k).
    #[serde(default)]
    pub api: Api,
    /// Entries stored per position (default 64).
    #[serde(default = "ServerCfg::default_top_k")]
    pub top_k: usize,
    /// Requests in flight at once (default 1).
    #[serde(default = "ServerCfg::default_concurrency")]
    pub concurrency: usize,
    /// Seconds a request may take before it counts as failed (default 300).
    #[serde(default = "ServerCfg::default_timeout")]
    pub timeout_seconds: f64,
    /// Attempts per request: 429, 5xx, timeouts and lost connections are retried (default 5).
    #[serde(default = "ServerCfg::default_attempts")]
    pub attempts: u32,
    /// The environment variable holding the API key (default `OPENAI_API_KEY`); the key is sent
    /// as a bearer token and written nowhere.
    #[serde(default = "ServerCfg::default_key_env")]
    pub api_key_env: String,
}

impl ServerCfg {
    fn default_top_k() -> usize {
        64
    }
    fn default_concurrency() -> usize {
        1
    }
    fn default_timeout() -> f64 {
        300.0
    }
    fn default_attempts() -> u32 {
        5
    }
    fn default_key_env() -> String {
        "OPENAI_API_KEY".into()
    }

    /// Checks the values; the error names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let all = urls(&self.url);
        if all.is_empty() {
            return Err("teacher.server.url is empty".into());
        }
        for u in all {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!("teacher.server.url must start with http:// or https://, got `{u}`"));
            }
        }
        if self.top_k == 0 || self.concurrency == 0 || self.attempts == 0 {
            return Err("teacher.server: top_k, concurrency and attempts must be ≥ 1".into());
        }
        if !(self.timeout_seconds > 0.0 && self.timeout_seconds.is_finite()) {
            return Err(format!("teacher.server.timeout_seconds must be positive, got {}", self.timeout_seconds));
        }
        Ok(())
    }

    /// The request settings, the key read from the environment (a warning when it would go to
    /// another machine over plain http).
    pub fn options(&self) -> ServerOptions {
        let api_key = std::env::var(&self.api_key_env).ok().filter(|k| !k.is_empty());
        for u in urls(&self.url) {
            if api_key.is_some() && u.starts_with("http://") && !is_loopback(u) {
                eprintln!("warning: the API key from ${} goes to {u} over plain http://", self.api_key_env);
            }
        }
        ServerOptions {
            url: self.url.clone(),
            model: self.model.clone(),
            api_key,
            concurrency: self.concurrency,
            timeout: Duration::from_secs_f64(self.timeout_seconds),
            attempts: self.attempts,
            api: self.api,
        }
    }
}

/// The servers `url` names: one URL, or several separated by commas (each row or prompt goes to
/// one of them, in turn).
pub fn urls(url: &str) -> Vec<&str> {
    url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
}

/// `opts` for each of its servers.
fn each_server(opts: &ServerOptions) -> Vec<ServerOptions> {
    urls(&opts.url).into_iter().map(|u| ServerOptions { url: u.to_string(), ..opts.clone() }).collect()
}

/// Whether every server answers (`GET /v1/models`, one attempt, at most 10 s) and takes the key:
/// `distill check`. Any HTTP answer but 401/403 counts (not every server lists its models); the
/// first model the first server lists is returned.
pub fn ping(opts: &ServerOptions) -> Result<Option<String>> {
    let mut first = None;
    for (i, one) in each_server(opts).iter().enumerate() {
        let listed = ping_one(one)?;
        if i == 0 {
            first = listed;
        }
    }
    Ok(first)
}

fn ping_one(opts: &ServerOptions) -> Result<Option<String>> {
    let url = format!("{}/v1/models", base_url(&opts.url));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(opts.timeout.min(Duration::from_secs(10))))
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(&url);
    if let Some(key) = &opts.api_key {
        req = req.header("Authorization", &format!("Bearer {key}"));
    }
    match req.call() {
        Ok(r) if matches!(r.status().as_u16(), 401 | 403) => Err(server_err(format!(
            "{url}: HTTP {}: the server refuses the API key (or its absence)",
            r.status().as_u16()
        ))),
        Ok(mut r) => {
            let text = r.body_mut().read_to_string().unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            Ok(v["data"][0]["id"].as_str().map(str::to_string))
        }
        Err(e) => Err(server_err(format!("{url}: {e}"))),
    }
}

/// The server's base URL: `url` without a trailing `/`, `/v1/completions`,
/// `/v1/chat/completions` or `/v1`.
fn base_url(url: &str) -> &str {
    let u = url.trim_end_matches('/');
    let u = u.strip_suffix("/chat/completions").or_else(|| u.strip_suffix("/completions")).unwrap_or(u);
    u.strip_suffix("/v1").unwrap_or(u)
}

/// How a server capture runs.
#[derive(Debug, Clone)]
pub struct ServerCapture {
    pub top_k: usize,
    pub rows_per_shard: usize,
    pub encoding: LogprobEncoding,
    pub part: Option<(usize, usize)>,
    pub progress: bool,
}

/// What a capture met that is not an error.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerStats {
    /// Rows sent and positions stored.
    pub rows: usize,
    pub positions: usize,
    /// Keys of the answers that name no single id (`""`, pieces several ids share): left in the
    /// tail.
    pub ambiguous_keys: usize,
    /// Positions whose most likely token stays unknown (an end-of-generation token, which the
    /// server answers with no log-prob; or a piece no id has): their stored top-1 is the
    /// teacher's second or later.
    pub top1_ambiguous: usize,
    /// Positions whose most likely token hid behind a key several ids share, found by asking
    /// the server to generate it under a logit bias (see [`RowAsk::resolve_top1`]).
    pub top1_resolved: usize,
    /// Positions with fewer than k certain ids (padded at −∞).
    pub padded_positions: usize,
    /// Requests besides one per row (positions the echo answer leaves out).
    pub extra_requests: usize,
    pub retries: usize,
}

/// Every id's piece as llama.cpp writes a single token (`token_to_piece`, special tokens as "",
/// invalid UTF-8 dropped), and the ids of each piece.
pub struct Pieces {
    piece: Vec<String>,
    ids: HashMap<String, Vec<u32>>,
    /// Whether the id's bytes are not whole UTF-8 (its piece lost some) or it is special.
    lossy: Vec<bool>,
}

impl Pieces {
    /// From the tokenizer: each id decoded after an anchor token, the anchor's text removed (so
    /// a SentencePiece `▁` keeps its space), replacement characters dropped.
    pub fn new(tok: &Tokenizer, vocab: usize) -> Result<Self> {
        let anchor = tok.token_to_id("a").or_else(|| tok.token_to_id("▁a")).unwrap_or(0);
        let lead = tok.decode(&[anchor], false).map_err(tk)?;
        let special: std::collections::HashSet<u32> =
            tok.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(id, _)| *id).collect();
        let mut piece = Vec::with_capacity(vocab);
        let mut lossy = Vec::with_capacity(vocab);
        let mut ids: HashMap<String, Vec<u32>> = HashMap::new();
        for id in 0..vocab as u32 {
            let (p, lost) = if special.contains(&id) || tok.id_to_token(id).is_none() {
                (String::new(), true)
            } else {
                let s = tok.decode(&[anchor, id], false).map_err(tk)?;
                let s = s.strip_prefix(lead.as_str()).unwrap_or(&s);
                (s.replace('\u{FFFD}', ""), s.contains('\u{FFFD}'))
            };
            ids.entry(p.clone()).or_default().push(id);
            piece.push(p);
            lossy.push(lost);
        }
        Ok(Pieces { piece, ids, lossy })
    }

    /// The one id whose piece is `s`; none for `""` or a piece several ids share.
    fn id(&self, s: &str) -> Option<u32> {
        match self.ids.get(s).map(Vec::as_slice) {
            Some([id]) if !s.is_empty() => Some(*id),
            _ => None,
        }
    }

    /// Every id whose piece is `s`, the whole tokens (bytes that are UTF-8 as they stand) first:
    /// the likelier reading of a key in text.
    fn group(&self, s: &str) -> Vec<u32> {
        let mut g = self.ids.get(s).cloned().unwrap_or_default();
        g.sort_by_key(|&id| self.lossy[id as usize]);
        g
    }
}

fn tk(e: tokenizers::Error) -> Error {
    Error::Invalid(format!("tokenizer: {e}"))
}

/// The server, as requests see it.
struct Client {
    agent: ureq::Agent,
    endpoint: String,
    opts: ServerOptions,
    retries: AtomicUsize,
}

impl Client {
    fn new(opts: &ServerOptions) -> Self {
        Self::at(opts, "completions")
    }

    /// The client of `/v1/{path}` under the server's base URL (a URL naming an endpoint is cut
    /// back to its base).
    fn at(opts: &ServerOptions, path: &str) -> Self {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(opts.timeout)).http_status_as_error(false).build().into();
        let base = base_url(&opts.url);
        Client { agent, endpoint: format!("{base}/v1/{path}"), opts: opts.clone(), retries: AtomicUsize::new(0) }
    }

    /// POSTs `body`: the answer as JSON.
    fn post(&self, body: &Value, what: &str) -> Result<Value> {
        Ok(self.post_text(body, what)?.0)
    }

    /// POSTs `body`; retries what may pass (429, 5xx, timeouts, lost connections) with backoff.
    /// `what` names the request in errors. The answer as JSON and as sent (its maps' key order,
    /// which `Value` does not keep).
    fn post_text(&self, body: &Value, what: &str) -> Result<(Value, String)> {
        let mut wait = Duration::from_millis(500);
        let mut last = String::new();
        for attempt in 0..self.opts.attempts.max(1) {
            if attempt > 0 {
                self.retries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            let mut req = self.agent.post(&self.endpoint).header("Content-Type", "application/json");
            if let Some(key) = &self.opts.api_key {
                req = req.header("Authorization", &format!("Bearer {key}"));
            }
            match req.send(body.to_string()) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    if status == 429 || status >= 500 {
                        last = format!("HTTP {status}");
                        continue;
                    }
                    if status != 200 {
                        return Err(server_err(format!("{what}: HTTP {status}: {}", first_line(&text))));
                    }
                    let v = serde_json::from_str(&text)
                        .map_err(|e| server_err(format!("{what}: the answer is not JSON ({e})")))?;
                    return Ok((v, text));
                }
                Err(ureq::Error::Timeout(_)) => {
                    last = format!("no answer within {:.0} s", self.opts.timeout.as_secs_f64());
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(server_err(format!("{what}: {last} ({} attempts; {})", self.opts.attempts.max(1), self.endpoint)))
    }
}

fn server_err(m: String) -> Error {
    Error::Invalid(format!("teacher server: {m}"))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(200).collect()
}

/// What one row needs: its ids, text pieces and the special ids the server treats apart.
struct RowAsk<'a> {
    client: &'a Client,
    api: Api,
    tok: &'a Tokenizer,
    pieces: &'a Pieces,
    bos: Option<u32>,
    k: usize,
}

/// One position's top-k: ids and log-probs (`k` each, by descending log-prob) and the log tail.
type TopK = (Vec<i64>, Vec<f32>, f32);

impl RowAsk<'_> {
    /// Log-probs asked per position: vLLM's keys are ids, so no margin for ambiguous ones.
    fn asked(&self) -> usize {
        match self.api {
            Api::LlamaCpp => self.k + MARGIN,
            Api::Vllm => self.k,
        }
    }

    fn body(&self, text: &str, echo: bool) -> Value {
        let mut b = json!({
            "prompt": text, "max_tokens": 1, "echo": echo, "logprobs": self.asked(),
            "temperature": 0.0, "stream": false,
        });
        if let Some(m) = &self.client.opts.model {
            b["model"] = json!(m);
        }
        b
    }

    fn text(&self, ids: &[u32]) -> Result<String> {
        self.tok.decode(ids, false).map_err(tk)
    }

    /// vLLM's answer for row `r` (`ids`, sent as ids): `prompt_logprobs[j]` is the distribution
    /// before token j (entry 0 null), so positions 0..n−1 come from entries 1..n and the last
    /// position from the one generated token's `logprobs`. Each entry also holds the prompt
    /// token itself (k + 1 entries when it is not among the top-k); its presence is the check
    /// that the server read the ids as sent.
    fn row_vllm(&self, r: usize, ids: &[u32], stats: &mut ServerStats) -> Result<Vec<TopK>> {
        let n = ids.len();
        let what = format!("row {r}");
        let mut body = json!({
            "prompt": ids, "max_tokens": 1, "prompt_logprobs": self.k, "logprobs": self.k,
            "temperature": 0.0, "stream": false,
        });
        if let Some(m) = &self.client.opts.model {
            body["model"] = json!(m);
        }
        let ans = self.client.post(&body, &what)?;
        check_prompt_tokens(&ans, n, &what)?;
        let choice = &ans["choices"][0];
        let Some(pl) = choice["prompt_logprobs"].as_array().filter(|p| p.len() == n) else {
            return Err(server_err(format!(
                "{what}: the answer has no choices[0].prompt_logprobs of {n} entries (vLLM needs --max-logprobs ≥ {})",
                self.k
            )));
        };
        let mut out = Vec::with_capacity(n);
        for (j, entry) in pl.iter().enumerate().skip(1) {
            let holds = entry.as_object().is_some_and(|m| m.keys().any(|k| self.id_of(k) == Some(ids[j])));
            if !holds {
                return Err(server_err(format!(
                    "{what}, position {j}: the server's log-probs do not hold the row's token (id {}): it read other tokens",
                    ids[j]
                )));
            }
            out.push(self.top_k(entry, &format!("{what}, position {}", j - 1), None, stats)?);
        }
        let last = &choice["logprobs"]["top_logprobs"][0];
        out.push(self.top_k(last, &format!("{what}, position {}", n - 1), None, stats)?);
        stats.positions += n;
        Ok(out)
    }

    /// The id an answer's key names: vLLM's keys are ids (`123`, `token_id:123`); other keys are
    /// pieces, mapped where exactly one id has that piece.
    fn id_of(&self, key: &str) -> Option<u32> {
        let as_id = key.strip_prefix("token_id:").unwrap_or(key).parse::<u32>().ok();
        match (self.api, as_id) {
            (Api::Vllm, Some(id)) if (id as usize) < self.pieces.piece.len() => Some(id),
            _ => self.pieces.id(key),
        }
    }

    /// The top-k at every position of row `r` (`ids`), with what it counted.
    fn row(&self, r: usize, ids: &[u32], stats: &mut ServerStats) -> Result<Vec<TopK>> {
        if self.api == Api::Vllm {
            return self.row_vllm(r, ids, stats);
        }
        let n = ids.len();
        let what = format!("row {r}");
        let (ans, raw) = self.client.post_text(&self.body(&self.text(ids)?, true), &what)?;
        check_prompt_tokens(&ans, n, &what)?;
        let leads = lead_keys(&raw);
        let lp = &ans["choices"][0]["logprobs"];
        let (Some(tokens), Some(tops)) = (lp["tokens"].as_array(), lp["top_logprobs"].as_array()) else {
            return Err(server_err(format!("{what}: the answer has no choices[0].logprobs.tokens/top_logprobs (echo + logprobs; llama-cpp-python needs --logits_all true)")));
        };
        // Entry j is keyed by the token after which its distribution comes: row[j] (or, when
        // the row starts with BOS, which the server drops, row[j + 1]).
        let shift = usize::from(self.bos.is_some_and(|b| ids[0] == b));
        let keyed: Vec<(usize, Option<u32>)> =
            (0..n).map(|j| (j, ids.get(j + shift).copied())).filter(|(_, t)| t.is_none() || *t != self.bos).collect();
        // The generated token (key of the last position when shifted) may itself be a BOS.
        if !(tokens.len() == keyed.len() || (shift == 1 && tokens.len() + 1 == keyed.len()))
            || tops.len() != tokens.len()
        {
            return Err(server_err(format!(
                "{what}: {} log-prob entries for a row of {n} tokens ({} expected): the server's tokens differ from distill's",
                tokens.len(),
                keyed.len()
            )));
        }
        let mut out: Vec<Option<TopK>> = vec![None; n];
        for (i, ((pos, key), (token, top))) in keyed.iter().zip(tokens.iter().zip(tops)).enumerate() {
            if let Some(key) = key {
                let want = &self.pieces.piece[*key as usize];
                if token.as_str() != Some(want.as_str()) {
                    return Err(server_err(format!(
                        "{what}, position {}: the server's token is {token} where distill's is {want:?} (id {key}): another tokenizer, or a chat template applied",
                        pos + shift
                    )));
                }
            }
            if i == 0 || top.is_null() {
                continue; // entry 0 is always null
            }
            let lead = leads.get(i).and_then(Option::as_deref);
            out[*pos] =
                Some(self.top_k(top, &format!("{what}, position {pos}"), Some((&ids[..=*pos], lead)), stats)?);
        }
        for (pos, slot) in out.iter_mut().enumerate() {
            if slot.is_none() {
                *slot = Some(self.alone(r, &ids[..=pos], stats)?);
            }
        }
        stats.positions += n;
        Ok(out.into_iter().map(|s| s.expect("every position filled")).collect())
    }

    /// Row `r` of `blocks`: its real tokens asked, padding (conversation rows) filled with an
    /// empty distribution (all mass in the tail; no loss reads it).
    fn padded_row(&self, r: usize, blocks: &TokenBlocks, stats: &mut ServerStats) -> Result<Vec<TopK>> {
        let ids = blocks.row(r).unwrap_or(&[]);
        let real = blocks.mask_row(r).map_or(ids.len(), |m| m.iter().filter(|&&x| x == 1).count());
        let mut out = self.row(r, &ids[..real], stats)?;
        let empty: TopK = ((0..self.k as i64).collect(), vec![f32::NEG_INFINITY; self.k], 0.0);
        out.resize(ids.len(), empty);
        Ok(out)
    }

    /// The distribution after `prefix` alone: the text up to it, without echo; the answer's one
    /// entry.
    fn alone(&self, r: usize, prefix: &[u32], stats: &mut ServerStats) -> Result<TopK> {
        stats.extra_requests += 1;
        let what = format!("row {r}, position {}", prefix.len() - 1);
        let (ans, raw) = self.client.post_text(&self.body(&self.text(prefix)?, false), &what)?;
        check_prompt_tokens(&ans, prefix.len(), &what)?;
        let lead = lead_keys(&raw).into_iter().next().flatten();
        let top = &ans["choices"][0]["logprobs"]["top_logprobs"][0];
        if !top.is_object() {
            return Err(server_err(format!("{what}: the answer has no choices[0].logprobs.top_logprobs[0]")));
        }
        self.top_k(top, &what, Some((prefix, lead.as_deref())), stats)
    }

    /// A `key → log-prob` map (the value a number, or vLLM's `{"logprob": …}`) as the top-k:
    /// certain ids only, k largest, the tail the rest. With the `prefix` the map follows and
    /// its first key as sent (llama-cpp-python), a most likely token hidden behind a shared key
    /// is found first.
    fn top_k(
        &self,
        top: &Value,
        what: &str,
        at: Option<(&[u32], Option<&str>)>,
        stats: &mut ServerStats,
    ) -> Result<TopK> {
        let Some(map) = top.as_object() else {
            return Err(server_err(format!("{what}: top_logprobs is not a map")));
        };
        // llama-cpp-python's string keys merge (every partial UTF-8 piece is ""), so its maps may
        // hold fewer keys than asked; fewer than half is a server that caps them.
        let least = match self.api {
            Api::LlamaCpp => self.k.div_ceil(2),
            Api::Vllm => self.k,
        };
        if map.len() < least {
            return Err(server_err(format!(
                "{what}: {} log-probs where {} were asked (the server caps them: raise its limit or lower --top-k)",
                map.len(),
                self.asked()
            )));
        }
        let mut entries: Vec<(u32, f32)> = Vec::with_capacity(map.len());
        let mut dropped = false;
        for (key, v) in map {
            let Some(lp) = v.as_f64().or_else(|| v["logprob"].as_f64()) else {
                return Err(server_err(format!("{what}: the log-prob of {key:?} is not a number")));
            };
            match self.id_of(key) {
                Some(id) if !entries.iter().any(|e| e.0 == id) => entries.push((id, lp as f32)),
                Some(_) => {}
                None => {
                    stats.ambiguous_keys += 1;
                    dropped = true;
                }
            }
        }
        entries.sort_by(|a, b| b.1.total_cmp(&a.1));
        match at {
            Some((prefix, lead)) if dropped => self.resolve_top1(what, prefix, lead, &mut entries, stats)?,
            // A shared key's value is its lowest id's (the map keeps the last write): whether it
            // hides the top-1 is not known.
            _ if dropped => stats.top1_ambiguous += 1,
            _ => {}
        }
        entries.truncate(self.k);
        let mass: f64 = entries.iter().map(|e| f64::from(e.1).exp()).sum();
        let log_tail = if mass < 1.0 { (1.0 - mass).ln() as f32 } else { f32::NEG_INFINITY };
        if entries.len() < self.k {
            stats.padded_positions += 1;
            let mut unused = (0u32..).filter(|id| !entries.iter().any(|e| e.0 == *id));
            let pad: Vec<u32> = unused.by_ref().take(self.k - entries.len()).collect();
            entries.extend(pad.into_iter().map(|id| (id, f32::NEG_INFINITY)));
        }
        Ok((entries.iter().map(|e| i64::from(e.0)).collect(), entries.iter().map(|e| e.1).collect(), log_tail))
    }

    /// The most likely token after `prefix` when a key of its map named no single id. The map's
    /// first key as sent (`lead`) is the leader's piece (llama-cpp-python fills the map in
    /// descending order, a repeated key keeping its first place): when one id has that piece it
    /// is the certain best and nothing is asked. Otherwise (or with the order not kept: the lead
    /// names a certain id that is not the best), when the mass no certain id holds could
    /// outweigh the best certain one, the server generates one
    /// token greedily (its log-prob comes back raw; its text is the key). A piece only one id
    /// has is that id; a shared piece is narrowed by generating again under a logit bias that
    /// lifts a subset of the sharing ids above all others (the answer's raw log-prob equals
    /// the leader's exactly when the leader is in the subset): the whole token alone first,
    /// then halves. The found id goes in with its log-prob; the rest of the shared key stays in
    /// the tail. An end-of-generation leader comes back with no log-prob: left unknown.
    fn resolve_top1(
        &self,
        what: &str,
        prefix: &[u32],
        lead: Option<&str>,
        entries: &mut Vec<(u32, f32)>,
        stats: &mut ServerStats,
    ) -> Result<()> {
        let lead_id = lead.map(|l| self.pieces.id(l));
        let best = entries.first().map_or(f32::NEG_INFINITY, |e| e.1);
        match lead_id {
            Some(Some(id)) if entries.first().is_some_and(|e| e.0 == id) => return Ok(()),
            Some(None) => {} // the leader's piece is shared: ask
            _ => {
                let certain: f64 = entries.iter().map(|e| f64::from(e.1).exp()).sum();
                if 1.0 - certain <= f64::from(best).exp() {
                    return Ok(());
                }
            }
        }
        let Some((text, lp)) = self.greedy(what, prefix, &[], stats)? else {
            stats.top1_ambiguous += 1;
            return Ok(());
        };
        let group = self.pieces.group(&text);
        let mut rest: &[u32] = &group;
        let mut first = true;
        let leader = loop {
            match rest {
                [] => break None,
                [id] => break Some(*id),
                _ => {}
            }
            let (a, b) = rest.split_at(if first { 1 } else { rest.len() / 2 });
            first = false;
            match self.greedy(what, prefix, a, stats)? {
                Some((_, l)) if (l - lp).abs() <= TIE => rest = a,
                Some(_) => rest = b,
                None => break None,
            }
        };
        match leader {
            Some(id) if !entries.iter().any(|e| e.0 == id) => {
                let at = entries.partition_point(|e| e.1 >= lp);
                entries.insert(at, (id, lp));
                stats.top1_resolved += usize::from(group.len() > 1);
            }
            Some(_) => {}
            None => stats.top1_ambiguous += 1,
        }
        Ok(())
    }

    /// One token generated greedily after `prefix`, `boost` ids lifted by a logit bias of
    /// [`BOOST`]: its text and raw log-prob, or `None` when it ends the generation (no entry).
    fn greedy(
        &self,
        what: &str,
        prefix: &[u32],
        boost: &[u32],
        stats: &mut ServerStats,
    ) -> Result<Option<(String, f32)>> {
        stats.extra_requests += 1;
        let mut body = self.body(&self.text(prefix)?, false);
        body["logprobs"] = json!(1);
        // llama-cpp-python's default repetition penalty (1.1) acts before its greedy choice.
        body["repeat_penalty"] = json!(1.0);
        if !boost.is_empty() {
            let bias: serde_json::Map<String, Value> = boost.iter().map(|id| (id.to_string(), json!(BOOST))).collect();
            body["logit_bias"] = Value::Object(bias);
        }
        let ans = self.client.post(&body, what)?;
        check_prompt_tokens(&ans, prefix.len(), what)?;
        let lp = &ans["choices"][0]["logprobs"];
        let (Some(tokens), Some(lps)) = (lp["tokens"].as_array(), lp["token_logprobs"].as_array()) else {
            return Err(server_err(format!("{what}: the answer has no choices[0].logprobs.tokens/token_logprobs")));
        };
        match (tokens.first(), lps.first()) {
            (None, _) => Ok(None),
            (Some(t), Some(l)) => match (t.as_str(), l.as_f64()) {
                (Some(t), Some(l)) => Ok(Some((t.to_string(), l as f32))),
                _ => Err(server_err(format!("{what}: the generated token's text or log-prob is missing"))),
            },
            (Some(_), None) => Err(server_err(format!("{what}: the generated token has no log-prob"))),
        }
    }
}

/// The first key of every `choices[0].logprobs.top_logprobs` map of a llama-cpp-python answer, in
/// the order sent (`None` for a null entry); empty when the answer has another shape.
fn lead_keys(raw: &str) -> Vec<Option<String>> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct FirstKey(Option<String>);
    impl<'de> serde::Deserialize<'de> for FirstKey {
        fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = FirstKey;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a map")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<FirstKey, A::Error> {
                    let first = m.next_key::<String>()?;
                    if first.is_some() {
                        m.next_value::<IgnoredAny>()?;
                    }
                    while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(FirstKey(first))
                }
            }
            d.deserialize_map(V)
        }
    }
    #[derive(serde::Deserialize)]
    struct Lp {
        top_logprobs: Vec<Option<FirstKey>>,
    }
    #[derive(serde::Deserialize)]
    struct Choice {
        logprobs: Lp,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        choices: Vec<Choice>,
    }
    serde_json::from_str::<Answer>(raw)
        .ok()
        .and_then(|a| a.choices.into_iter().next())
        .map(|c| c.logprobs.top_logprobs.into_iter().map(|k| k.and_then(|k| k.0)).collect())
        .unwrap_or_default()
}

fn check_prompt_tokens(ans: &Value, n: usize, what: &str) -> Result<()> {
    match ans["usage"]["prompt_tokens"].as_u64() {
        Some(p) if p as usize == n => Ok(()),
        Some(p) => Err(server_err(format!(
            "{what}: the server made {p} tokens of the row's {n} (another tokenizer, a BOS added, or a chat template applied)"
        ))),
        None => Err(server_err(format!("{what}: the answer has no usage.prompt_tokens"))),
    }
}

/// Captures the server's top-k over every row of `blocks` into `dir` (resuming an interrupted
/// capture there, at its last whole shard). `tok` must be the server model's tokenizer; the
/// manifest names the server and model.
pub fn capture_server(
    server: &ServerOptions,
    tok: &Tokenizer,
    vocab: usize,
    bos: Option<u32>,
    blocks: &TokenBlocks,
    dir: &Path,
    opts: &ServerCapture,
) -> Result<(Manifest, ServerStats)> {
    let n_rows = blocks.n_blocks();
    if n_rows == 0 {
        return Err(Error::Invalid("no rows to capture (the text is shorter than one sequence)".into()));
    }
    let model = server.model.clone().unwrap_or_else(|| "(default)".into());
    let spec = CacheSpec {
        top_k: opts.top_k,
        tail_samples: 0,
        vocab_size: vocab,
        seq_len: blocks.seq_len,
        rows_per_shard: opts.rows_per_shard,
        n_rows,
        logprob_encoding: opts.encoding,
        teacher_fingerprint: format!("server:{model}"),
        tokenizer_fingerprint: tokenizer_fingerprint(tok),
        data_fingerprint: blocks.fingerprint(),
        teacher: format!("server {} (model {model})", server.url),
    };
    let mut w = CacheWriter::create_or_resume_part(dir, spec, opts.part)?;
    let (start, end) = (w.next_row(), w.end_row());
    let pieces = Pieces::new(tok, vocab)?;
    // Row r goes to server r mod n.
    let clients: Vec<Client> = each_server(server).iter().map(Client::new).collect();
    let ask = |r: usize| RowAsk {
        client: &clients[r % clients.len()],
        api: server.api,
        tok,
        pieces: &pieces,
        bos,
        k: opts.top_k,
    };
    let bar = crate::teacher::cache::rows_bar(opts.progress, n_rows, start);
    bar.set_prefix("server");
    let mut stats = ServerStats::default();
    // A shard's rows asked by `concurrency` workers, written in order.
    for first in (start..end).step_by(opts.rows_per_shard) {
        let last = (first + opts.rows_per_shard).min(end);
        let asked = in_turn(server.concurrency, last - first, |j| {
            let mut st = ServerStats::default();
            let row = ask(first + j).padded_row(first + j, blocks, &mut st)?;
            bar.inc(1);
            Ok((row, st))
        });
        let rows = match asked {
            Ok(rows) => rows,
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
        let (mut ids, mut lps, mut tails) = (Vec::new(), Vec::new(), Vec::new());
        for (row, st) in rows {
            add(&mut stats, &st);
            for (i, l, t) in row {
                ids.extend(i);
                lps.extend(l);
                tails.push(t);
            }
        }
        w.push_rows(&ids, &lps, &tails)?;
        stats.rows += last - first;
    }
    bar.finish_and_clear();
    stats.retries = clients.iter().map(|c| c.retries.load(Ordering::Relaxed)).sum();
    Ok((w.finish()?, stats))
}

/// `f(0)`, …, `f(n − 1)` on `workers` threads, each taking the next index in turn: the results in
/// order, or the error of the first index (in order) that failed — once one has failed, no
/// further index starts.
pub(crate) fn in_turn<T: Send>(workers: usize, n: usize, f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    let failed: Mutex<Option<(usize, Error)>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || failed.lock().expect("lock").is_some() {
                    break;
                }
                match f(i) {
                    Ok(v) => done.lock().expect("lock")[i] = Some(v),
                    Err(e) => {
                        let mut fl = failed.lock().expect("lock");
                        if fl.as_ref().is_none_or(|(q, _)| i < *q) {
                            *fl = Some((i, e));
                        }
                    }
                }
            });
        }
    });
    if let Some((_, e)) = failed.into_inner().expect("lock") {
        return Err(e);
    }
    Ok(done.into_inner().expect("lock").into_iter().map(|v| v.expect("every index done")).collect())
}

fn add(a: &mut ServerStats, b: &ServerStats) {
    a.positions += b.positions;
    a.ambiguous_keys += b.ambiguous_keys;
    a.top1_ambiguous += b.top1_ambiguous;
    a.top1_resolved += b.top1_resolved;
    a.padded_positions += b.padded_positions;
    a.extra_requests += b.extra_requests;
}

/// `distill cache --server`: packs `data` with the tokenizer (and chat template) of the local
/// model files at `model_path` — config and tokenizer only, no weights: the server's model must
/// share that tokenizer — and captures the server's top-k over every training row into `out`.
pub fn capture_server_text(
    model_path: &Path,
    data: &distill_text::TextDataConfig,
    server: &ServerOptions,
    opts: &ServerCapture,
    out: &Path,
) -> Result<(Manifest, ServerStats)> {
    data.validate().map_err(|e| Error::Invalid(format!("data: {e}")))?;
    let (cfg, tok) = crate::io::lm::check_model_files(model_path)?;
    let chat = crate::io::lm::model_chat(model_path, &cfg, &tok)?;
    let ds = distill_text::build_dataset_chat(data, &tok, chat.as_ref().map(|c| c as _))?;
    if opts.progress {
        eprintln!(
            "asking {} for the top-{} over {} rows of {} tokens ({} at a time) into {}",
            server.url,
            opts.top_k,
            ds.train.n_blocks(),
            ds.train.seq_len,
            server.concurrency,
            out.display()
        );
    }
    let bos = cfg.bos_token_id.and_then(|b| u32::try_from(b).ok());
    capture_server(server, &tok, cfg.vocab_size as usize, bos, &ds.train, out, opts)
}

/// What a chat completion asks beyond the prompt: the sampling settings, the stop strings and
/// how many alternatives per token (0: no log-probs). `top_k` and the repetition penalty are
/// extensions of the API: llama-cpp-python always gets them (`top_k` 0 = off, `repeat_penalty`,
/// and `min_p` 0: its defaults, top-k 40, min-p 0.05 and a 1.1 penalty, would change the
/// distribution), vLLM gets `top_k` and `repetition_penalty` when they are set.
#[derive(Debug, Clone)]
pub struct ChatAsk {
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub repetition_penalty: f64,
    pub stops: Vec<String>,
    pub top_logprobs: usize,
    pub api: Api,
}

/// One generated token with the server's alternatives (strings: the server's own tokens).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// The most likely tokens at this position, by descending log-prob.
    pub top_logprobs: Vec<(String, f32)>,
}

/// A chat completion's answer.
#[derive(Debug, Clone)]
pub struct ChatReply {
    /// The assistant turn's text.
    pub content: String,
    /// `stop` (the end of the turn or a stop string) or `length`.
    pub finish_reason: String,
    /// Tokens generated (`usage.completion_tokens`).
    pub completion_tokens: usize,
    /// Per token, when asked and the server gives them.
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// A black-box teacher: the server's `/v1/chat/completions`, which applies the served model's own
/// chat template.
pub struct ServerChat {
    clients: Vec<Client>,
}

impl ServerChat {
    pub fn new(opts: &ServerOptions) -> Self {
        ServerChat { clients: each_server(opts).iter().map(|o| Client::at(o, "chat/completions")).collect() }
    }

    /// The assistant's answer to prompt `i` (one user turn; asked of server i mod n), sampled
    /// with `seed`; `what` names the request in errors (retries as for a capture).
    pub fn complete(&self, i: usize, prompt: &str, ask: &ChatAsk, seed: u64, what: &str) -> Result<ChatReply> {
        let client = &self.clients[i % self.clients.len()];
        let mut body = json!({
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": ask.max_tokens, "temperature": ask.temperature, "top_p": ask.top_p,
            "seed": seed % (1 << 31), "stream": false,
        });
        if let Some(m) = &client.opts.model {
            body["model"] = json!(m);
        }
        if !ask.stops.is_empty() {
            body["stop"] = json!(ask.stops);
        }
        match ask.api {
            Api::LlamaCpp => {
                body["top_k"] = json!(ask.top_k);
                body["min_p"] = json!(0.0);
                body["repeat_penalty"] = json!(ask.repetition_penalty);
            }
            Api::Vllm => {
                if ask.top_k > 0 {
                    body["top_k"] = json!(ask.top_k);
                }
                if ask.repetition_penalty != 1.0 {
                    body["repetition_penalty"] = json!(ask.repetition_penalty);
                }
            }
        }
        if ask.top_logprobs > 0 {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(ask.top_logprobs);
        }
        let ans = client.post(&body, what)?;
        let choice = &ans["choices"][0];
        let Some(content) = choice["message"]["content"].as_str() else {
            return Err(server_err(format!("{what}: the answer has no choices[0].message.content")));
        };
        let completion_tokens = ans["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize;
        let logprobs = choice["logprobs"]["content"].as_array().map(|toks| {
            toks.iter()
                .map(|t| TokenLogprob {
                    token: t["token"].as_str().unwrap_or_default().to_string(),
                    logprob: t["logprob"].as_f64().unwrap_or(f64::NEG_INFINITY) as f32,
                    top_logprobs: t["top_logprobs"]
                        .as_array()
                        .map(|alts| {
                            alts.iter()
                                .map(|a| {
                                    let lp = a["logprob"].as_f64().unwrap_or(f64::NEG_INFINITY) as f32;
                                    (a["token"].as_str().unwrap_or_default().to_string(), lp)
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        });
        Ok(ChatReply {
            content: content.to_string(),
            finish_reason: choice["finish_reason"].as_str().unwrap_or("stop").to_string(),
            completion_tokens,
            logprobs,
        })
    }
}

/// Whether `url` names this machine (`localhost`, `127.x`, `::1`): a key sent over plain
/// `http://` elsewhere is readable on the way.
pub fn is_loopback(url: &str) -> bool {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host = rest.split('/').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(h) => h.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    host == "localhost" || host.starts_with("127.") || host == "::1"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_keys_keep_the_order_sent() {
        let raw = r#"{"id": "x", "choices": [{"text": "", "logprobs": {"tokens": ["a", "b", "c"],
            "top_logprobs": [null, {"zeta": -0.1, "alpha": -2.5, " ": -3.0}, {"": -0.2, "b": -1.0}]}}]}"#;
        assert_eq!(lead_keys(raw), vec![None, Some("zeta".to_string()), Some(String::new())]);
        assert!(lead_keys(r#"{"choices": []}"#).is_empty());
        assert!(lead_keys("not json").is_empty());
    }

    #[test]
    fn loopback_hosts() {
        for u in ["http://localhost:8080", "http://127.0.0.1:1/v1", "http://[::1]:80/"] {
            assert!(is_loopback(u), "{u}");
        }
        for u in ["http://10.0.0.2:8080", "https://api.example.com/v1", "http://localhost.example.com"] {
            assert!(!is_loopback(u), "{u}");
        }
    }
}
