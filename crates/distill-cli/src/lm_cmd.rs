//! The causal-LM tools: `distill convert`, `distill eval` (of a causal LM), `distill generate`
//! and `distill generate-data`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use distill::eval::generate::GenerateOptions;
use distill::experiments::gendata::{self, GenDataOptions};
use distill::io::export::GgufType;
use distill::io::lm::{self, LoadedLm};
use distill_text::TextDataConfig;

use crate::cli::{EvalArgs, GenerateArgs, GenerateDataArgs};
use crate::common::{fetch_missing, load_lm, load_lm_recipe, set_threads, text_format, text_sources};

/// `distill convert`: a Hugging Face directory, or a GGUF file when `out` ends in `.gguf`.
pub fn convert(model: &Path, out: &Path, ty: GgufType) -> Result<()> {
    let to_gguf = out.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    set_threads(None);
    let m = load_lm(model)?;
    if to_gguf {
        let name = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        distill::io::export::export_gguf(&m.model, &m.tokenizer, m.chat_template.as_deref(), &name, out, ty)?;
    } else {
        let template = m.chat_template.as_deref();
        distill::io::export::export_hf_with_chat_template(&m.model, Some(&m.tokenizer_json), template, out)?;
    }
    println!("{}", out.display());
    Ok(())
}

/// `distill eval` of a causal LM: perplexity, and against `--teacher` KL and top-1 agreement.
pub fn eval(a: EvalArgs) -> Result<()> {
    if a.data.is_empty() {
        bail!("--data: give at least one text file, directory or glob");
    }
    if a.seq_len < 2 {
        bail!("--seq-len must be at least 2");
    }
    set_threads(None);
    let m = load_lm(&a.model)?;
    let t = match &a.teacher {
        Some(p) => {
            let t = load_lm(p)?;
            lm::check_compatible(&t, m.model.config().vocab_size, Some(&m.tokenizer))?;
            Some(t)
        }
        None => None,
    };
    let format = text_format(&a.format)?;
    let sources: Vec<_> = text_sources(&a.data).into_iter().map(|s| s.with_format(format.clone())).collect();
    // Conversations are rendered by the teacher's chat template, else the model's.
    let chat = t.as_ref().and_then(LoadedLm::chat).or_else(|| m.chat());
    let chat = chat.as_ref().map(|c| c as _);
    let blocks = distill::data::text::text_blocks(&sources, &m.tokenizer, a.seq_len, a.min_chars, chat)?;
    let s = distill::eval::score(&m.model, t.as_ref().map(|t| &t.model), &blocks, a.max_rows, 4)?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!("model       {}", a.model.display());
        println!("tokens      {}", s.tokens);
        println!("nll         {:.4} nats/token", s.nll);
        println!("perplexity  {:.3}", s.perplexity);
        if let (Some(kl), Some(a)) = (s.kl_to_teacher, s.top1_agreement) {
            println!("KL(teacher‖model)  {kl:.4} nats/token");
            println!("top-1 agreement    {:.2}%", a * 100.0);
        }
    }
    Ok(())
}

/// `distill generate`: the prompts decoded as one batch, each printed with its continuation.
pub fn generate(a: GenerateArgs) -> Result<()> {
    set_threads(None);
    let m = load_lm(&a.model)?;
    let sampling = a.temperature.is_some() || a.top_k.is_some() || a.top_p.is_some();
    let opts = GenerateOptions {
        max_new_tokens: a.max_tokens,
        temperature: if sampling { a.temperature.unwrap_or(1.0) } else { 0.0 },
        top_k: a.top_k.unwrap_or(0),
        top_p: a.top_p.unwrap_or(1.0),
        seed: a.seed,
        eos_id: m.model.config().eos_token_ids.first().copied(),
        repetition_penalty: a.repetition_penalty,
    };
    let inputs: Vec<String> = if a.chat {
        a.prompt.iter().map(|p| m.chat_prompt(p)).collect::<distill::Result<_>>()?
    } else {
        a.prompt.clone()
    };
    let gens = distill::eval::generate_texts(&m.model, &m.tokenizer, &inputs, &opts, &a.stop)?;
    // A chat answer is printed after the user's prompt, a continuation after its prompt.
    for (i, (p, g)) in a.prompt.iter().zip(gens).enumerate() {
        if i > 0 {
            println!();
        }
        if a.chat {
            println!("{p}\n{}", g.text);
        } else {
            println!("{p}{}", g.text);
        }
    }
    Ok(())
}

/// Where `distill generate-data` takes its prompts from.
enum Prompts {
    /// A prompt file, read.
    List(Vec<String>),
    /// The starts of a recipe's training rows.
    Rows(TextDataConfig),
}

/// `distill generate-data`: the writer completes every prompt into a JSONL data set.
pub fn generate_data(a: GenerateDataArgs) -> Result<()> {
    if let Some(url) = &a.server {
        return generate_data_server(&a, url);
    }
    let (writer, source) = writer_and_prompts(&a)?;
    set_threads(a.threads);
    let m = load_lm(&writer)?;
    let (prompts, max_new) = prompts_and_length(source, &m, &a)?;
    let opts = gen_options(&a, max_new, m.model.config().eos_token_ids.first().copied(), a.chat);
    let s = gendata::generate_data(&m, &prompts, &opts, &a.out)?;
    print_summary(&a, &s);
    Ok(())
}

/// The flags' decoding settings: `max_new` tokens a prompt, ending at `eos_id`.
fn gen_options(a: &GenerateDataArgs, max_new: usize, eos_id: Option<i64>, chat: bool) -> GenDataOptions {
    GenDataOptions {
        generate: GenerateOptions {
            max_new_tokens: max_new,
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
            eos_id,
            repetition_penalty: a.repetition_penalty,
        },
        stops: a.stop.clone(),
        chat,
        batch: a.batch,
        progress: true,
    }
}

fn print_summary(a: &GenerateDataArgs, s: &gendata::GenDataSummary) {
    println!(
        "{}: {} records ({} written now, {} tokens, {:.0} s; ends: {} EOS, {} stop string, {} length)",
        a.out.display(),
        s.records,
        s.generated,
        s.new_tokens,
        s.seconds,
        s.finish_eos,
        s.finish_stop,
        s.finish_length
    );
}

/// `generate-data --server`: a black-box teacher's chat endpoint answers every prompt.
fn generate_data_server(a: &GenerateDataArgs, url: &str) -> Result<()> {
    let Some(p) = &a.prompts else { bail!("--server: give --prompts FILE (the prompts sent as user turns)") };
    if a.recipe.is_some() {
        bail!("--server takes --prompts, not --recipe");
    }
    let prompts = gendata::read_prompts(p, &a.field)?;
    let model = a.model.as_ref().map(|m| m.to_string_lossy().into_owned());
    let server = a.net.cfg(url, model, 1)?.options();
    let opts = gen_options(a, a.max_tokens.unwrap_or(256), None, true);
    let s = gendata::generate_data_server(&server, &prompts, &opts, a.logprobs, &a.out)?;
    print_summary(a, &s);
    Ok(())
}

/// The writer and its prompts: `--model` and `--prompts` (read and checked before the model
/// loads), or `--recipe`'s rows and (unless `--model`) its teacher.
fn writer_and_prompts(a: &GenerateDataArgs) -> Result<(PathBuf, Prompts)> {
    Ok(match (&a.prompts, &a.recipe) {
        (Some(p), None) => {
            let Some(m) = &a.model else { bail!("--model: give the model that writes (or use --recipe)") };
            (m.clone(), Prompts::List(gendata::read_prompts(p, &a.field)?))
        }
        (None, Some(rp)) => {
            let r = load_lm_recipe(rp, &a.set)?;
            fetch_missing(r.paths())?;
            let writer = a.model.clone().unwrap_or_else(|| PathBuf::from(&r.teacher.path));
            (writer, Prompts::Rows(r.resolve()?.data))
        }
        (Some(_), Some(_)) => bail!("--prompts and --recipe are exclusive"),
        (None, None) => bail!("give --prompts FILE (with --model), or --recipe"),
    })
}

/// The prompts and the tokens per completion: `--max-tokens`, else 256 for a prompt file and
/// the rest of the row for a recipe's rows.
fn prompts_and_length(source: Prompts, m: &LoadedLm, a: &GenerateDataArgs) -> Result<(Vec<String>, usize)> {
    Ok(match source {
        Prompts::List(list) => (list, a.max_tokens.unwrap_or(256)),
        Prompts::Rows(data) => {
            let rows = distill_text::build_dataset(&data, &m.tokenizer)?.train;
            let limit = a.limit.unwrap_or(usize::MAX);
            let p = gendata::prompts_from_rows(&rows, &m.tokenizer, a.prompt_tokens, limit)?;
            (p, a.max_tokens.unwrap_or(rows.seq_len - a.prompt_tokens))
        }
    })
}
