//! `distill self-distill`: verified self-distillation, and its table of held-out pass rates.

use std::path::Path;

use anyhow::{bail, Result};
use distill::eval::verify::Family;
use distill::experiments::selfdistill::{self, trainable, SelfDistillOptions, SelfDistillReport};
use distill::io::lm::{self, LoadedLm};
use tch::Device;

use crate::cli::SelfDistillArgs;
use crate::common::{resolve, set_threads};

pub fn run(a: SelfDistillArgs) -> Result<()> {
    let o = options(&a)?;
    set_threads(a.threads);
    let model = resolve(&a.model)?;
    let student = a.student.as_deref().map(resolve).transpose()?;
    let writer = match &student {
        Some(s) => Some(writer_for(&model, s)?),
        None => None,
    };
    let initial = student.clone().unwrap_or_else(|| model.clone());
    let load = |p: Option<&Path>| trainable(&initial, p);
    let rep = selfdistill::run(writer.as_ref(), &load, &o, &a.out, &|m| eprintln!("{m}"))?;
    print_table(&rep, &o, &a);
    println!("{}: {:.0} s", a.out.display(), rep.seconds);
    Ok(())
}

/// The options from the flags, validated before any model loads.
fn options(a: &SelfDistillArgs) -> Result<SelfDistillOptions> {
    let families = a.families.split(',').map(|f| Family::parse(f.trim())).collect::<distill::Result<Vec<_>>>()?;
    let o = SelfDistillOptions {
        families,
        train_problems: a.train,
        heldout_problems: a.heldout,
        samples: a.samples,
        eval_samples: a.eval_samples,
        rounds: a.rounds,
        temperature: a.temperature,
        max_new_tokens: a.max_tokens,
        keep_per_problem: a.keep,
        epochs: a.epochs,
        lr: a.lr,
        train_batch: a.train_batch,
        gen_batch: a.batch,
        chat: a.chat,
        seed: a.seed,
    };
    o.validate()?;
    Ok(o)
}

/// With `--student`, `--model` only writes the solutions; the student must read its token ids.
fn writer_for(model: &Path, student: &Path) -> Result<LoadedLm> {
    let w = lm::load_lm(model, Device::Cpu)?;
    let st = lm::load_lm(student, Device::Cpu)?;
    if lm::tokenizer_fingerprint(&w.tokenizer) != lm::tokenizer_fingerprint(&st.tokenizer) {
        bail!("--student {} has another tokenizer than --model; it cannot learn from its token ids", student.display());
    }
    Ok(w)
}

/// Held-out pass@1 (and pass@N) per family and round, as a Markdown table.
fn print_table(rep: &SelfDistillReport, o: &SelfDistillOptions, a: &SelfDistillArgs) {
    let header: Vec<String> = (0..=a.rounds).map(|r| format!("round {r}")).collect();
    println!(
        "held-out greedy pass@1 (pass@{}) per family, before training (round 0) and after each round",
        a.eval_samples
    );
    println!("| family | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(a.rounds + 1));
    for (i, f) in o.families.iter().enumerate() {
        let cells: Vec<String> = rep
            .evals
            .iter()
            .map(|ev| {
                let e = &ev[i];
                match e.pass_n {
                    Some(pn) => format!("{:.1}% ({:.1}%)", 100.0 * e.pass1, 100.0 * pn),
                    None => format!("{:.1}%", 100.0 * e.pass1),
                }
            })
            .collect();
        println!("| {} | {} |", f.name(), cells.join(" | "));
    }
}
