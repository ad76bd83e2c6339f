//! Embeds libtorch's directory as an rpath so that test and example binaries run without
//! `LD_LIBRARY_PATH`, and compiles `csrc/mkl_packed.cpp` (MKL packed GEMM through libtorch's
//! dispatcher, see `models::packed`) against libtorch's headers. torch-sys publishes the library
//! directory as `DEP_TCH_LIBTORCH_LIB`; the headers sit in `../include` beside it (the PyPI wheel
//! and the libtorch archive alike).
fn main() {
    println!("cargo:rerun-if-changed=csrc/mkl_packed.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not publish libtorch's directory (DEP_TCH_LIBTORCH_LIB)");
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    let include = std::path::Path::new(&dir).join("../include");
    // torch ≥ 2.7 wheels and archives are built with the C++11 ABI; torch-sys reads the same
    // variable.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/mkl_packed.cpp")
        .compile("distill_mkl_packed");
}
