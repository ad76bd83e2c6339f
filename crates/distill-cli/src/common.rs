//! What the commands share: assets fetched on first use, the thread count, and models and
//! recipes loaded the same way by every command.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use distill::io::fetch;
use distill::io::lm::{self, LoadedLm};
use distill::recipe::{LmRecipe, Recipe};
use distill_text::{TextFormat, TextSource};
use tch::Device;

/// Fetches the assets named among `paths` (`asset:…`) that are not fetched yet.
pub fn fetch_missing<'a>(paths: impl IntoIterator<Item = &'a str>) -> Result<()> {
    for a in fetch::missing_assets(paths)? {
        eprintln!("fetching asset `{}` ({})", a.name, a.spec);
        fetch::fetch(a)?;
    }
    Ok(())
}

/// A model path that may name an asset (`asset:smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`).
pub fn resolve(p: &Path) -> Result<PathBuf> {
    let s = p.to_string_lossy();
    fetch_missing([s.as_ref()])?;
    Ok(fetch::resolve(&s)?)
}

/// A causal LM (GGUF file, HF directory or asset) on the CPU.
pub fn load_lm(p: &Path) -> Result<LoadedLm> {
    Ok(lm::load_lm(&resolve(p)?, Device::Cpu)?)
}

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// `threads`, or every core.
pub fn set_threads(threads: Option<usize>) {
    tch::set_num_threads(threads.unwrap_or_else(cores) as i32);
}

/// A recipe with its `--set` overrides, validated.
pub fn load_recipe(path: &Path, set: &[String]) -> Result<Recipe> {
    let r = Recipe::load(path, set)?;
    r.validate()?;
    Ok(r)
}

/// [`load_recipe`] for the commands that take a causal-lm recipe (`--recipe`).
pub fn load_lm_recipe(path: &Path, set: &[String]) -> Result<LmRecipe> {
    let Recipe::Lm(r) = load_recipe(path, set)? else {
        bail!("--recipe: {} is not a causal-lm recipe", path.display());
    };
    Ok(r)
}

/// `--data` arguments: text files, directories or globs.
pub fn text_sources(data: &[String]) -> Vec<TextSource> {
    data.iter().map(TextSource::new).collect()
}

/// `--format` of a text input as a [`TextFormat`]: `chat` is JSONL whose records are
/// conversations.
pub fn text_format(name: &str) -> Result<TextFormat> {
    Ok(match name {
        "auto" => TextFormat::Auto,
        "plain" => TextFormat::Plain,
        "brown" => TextFormat::Brown,
        "jsonl" | "chat" => TextFormat::jsonl(),
        "parquet" => TextFormat::Parquet(Default::default()),
        other => bail!("--format: unknown format `{other}` (auto, plain, brown, jsonl, parquet, chat)"),
    })
}
