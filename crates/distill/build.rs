//! Embeds libtorch's directory as an rpath so that test and example binaries run without
//! `LD_LIBRARY_PATH`, and compiles the crate's C++ against libtorch's headers:
//! `csrc/mkl_packed.cpp` (MKL packed GEMM through libtorch's dispatcher, see `models::packed`) and
//! `csrc/c10d.cpp` (a process group over libtorch's c10d, see `dist`). torch-sys publishes the
//! library directory as `DEP_TCH_LIBTORCH_LIB`; the headers sit in `../include` beside it (the
//! PyPI wheel and the libtorch archive alike).
//!
//! c10d's gloo backend is compiled in when gloo's headers are found (`GLOO_INCLUDE_DIR`, else
//! `/usr/include`, where Debian's libgloo-dev puts them; libtorch ships gloo's code but not its
//! headers). Its NCCL backend only when libtorch has CUDA (`libtorch_cuda.so`) and NCCL's and
//! CUDA's headers are found (`NCCL_INCLUDE_DIR`, `CUDA_HOME/include`, or the `nvidia/*/include`
//! directories of the PyPI wheels beside torch).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=csrc/mkl_packed.cpp");
    println!("cargo:rerun-if-changed=csrc/c10d.cpp");
    println!("cargo:rerun-if-changed=csrc/message.hpp");
    for v in ["LIBTORCH_CXX11_ABI", "GLOO_INCLUDE_DIR", "NCCL_INCLUDE_DIR", "CUDA_HOME"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not publish libtorch's directory (DEP_TCH_LIBTORCH_LIB)");
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    let lib = Path::new(&dir);
    let include = lib.join("../include");
    // torch ≥ 2.7 wheels and archives are built with the C++11 ABI; torch-sys reads the same
    // variable.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let base = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .pic(true)
            .warnings(false)
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .flag("-std=c++17")
            .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
            .flag("-DGLOG_USE_GLOG_EXPORT");
        b
    };
    base().file("csrc/mkl_packed.cpp").compile("distill_mkl_packed");

    // The process-group shim with every backend whose headers are here; should one not compile
    // (headers of another version), without it, saying so.
    let gloo = std::env::var_os("GLOO_INCLUDE_DIR").map(PathBuf::from).unwrap_or_else(|| "/usr/include".into());
    println!("cargo:rerun-if-changed={}", gloo.join("gloo/context.h").display());
    let gloo = gloo.join("gloo/context.h").is_file().then_some(gloo);
    if gloo.is_none() {
        println!(
            "cargo:warning=gloo's headers not found (install Debian's libgloo-dev or set GLOO_INCLUDE_DIR): this build cannot train data-parallel on CPU"
        );
    }
    let mut nccl = None;
    if lib.join("libtorch_cuda.so").is_file() {
        let wheel = |name: &str| lib.join("../../nvidia").join(name).join("include");
        let headers = std::env::var_os("NCCL_INCLUDE_DIR").map(PathBuf::from).unwrap_or_else(|| wheel("nccl"));
        let cuda = std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("include")).unwrap_or_else(|| {
            ["cu13", "cu12", "cuda_runtime"].map(wheel).into_iter().find(|d| d.is_dir()).unwrap_or_default()
        });
        // The runtime wheels lack parts of the toolkit's headers (`crt/`, `nv/`; setup installs
        // them from the nvidia-cuda-crt and -cccl wheels): without them, no NCCL path.
        println!("cargo:rerun-if-changed={}", cuda.join("crt/host_config.h").display());
        if headers.join("nccl.h").is_file()
            && cuda.join("crt/host_config.h").is_file()
            && cuda.join("nv/target").is_file()
        {
            nccl = Some((headers, cuda));
        }
    }
    let attempts = [(gloo.clone(), nccl.clone()), (gloo.clone(), None), (None, None)];
    for (i, (gloo, nccl)) in attempts.iter().enumerate() {
        if i > 0 && (gloo, nccl) == (&attempts[i - 1].0, &attempts[i - 1].1) {
            continue;
        }
        let mut b = base();
        b.file("csrc/c10d.cpp");
        if let Some(g) = gloo {
            b.include(g).define("DISTILL_GLOO", None);
        }
        if let Some((headers, cuda)) = nccl {
            b.include(headers).include(cuda).define("DISTILL_NCCL", None).define("USE_CUDA", None);
        }
        match b.try_compile("distill_c10d") {
            Ok(()) => return,
            Err(e) if gloo.is_some() || nccl.is_some() => {
                let what = if nccl.is_some() { "NCCL" } else { "gloo" };
                println!("cargo:warning=the c10d shim did not compile with {what} ({e}); building it without");
            }
            Err(e) => panic!("csrc/c10d.cpp: {e}"),
        }
    }
}
