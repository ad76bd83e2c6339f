//! Embeds libtorch's directory as an rpath so that test and example binaries run without
//! `LD_LIBRARY_PATH`. torch-sys publishes the directory as `DEP_TCH_LIBTORCH_LIB`.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
