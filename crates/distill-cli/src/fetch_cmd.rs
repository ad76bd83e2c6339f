//! `distill fetch`: the known assets, or the named ones fetched and their paths printed.

use anyhow::Result;
use distill::io::fetch;

pub fn run(names: &[String], list: bool) -> Result<()> {
    if list || names.is_empty() {
        for a in fetch::ASSETS {
            let state = if a.is_fetched() { "fetched" } else { "not fetched" };
            println!("{:<14} {:<12} {}", a.name, state, a.about);
        }
        return Ok(());
    }
    // Every name is checked before anything is fetched.
    let assets: Vec<_> = names.iter().map(|n| fetch::asset(n)).collect::<Result<_, _>>()?;
    let mut paths = Vec::new();
    for a in assets {
        if !a.is_fetched() {
            eprintln!("fetching {} ({})", a.name, a.spec);
        }
        paths.push(fetch::fetch(a)?);
    }
    for p in paths {
        println!("{}", p.display());
    }
    Ok(())
}
