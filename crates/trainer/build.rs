//! Makes the binaries find libtorch without `LD_LIBRARY_PATH`, and compiles the small
//! C++ shim (`csrc/autocast.cpp`) for the autocast switches tch does not expose.
//!
//! tch's own link arguments (rpath, `--no-as-needed -ltorch`) do not reach downstream
//! binaries, so the binary would have no RUNPATH and, through `--as-needed`, no DT_NEEDED
//! on `libtorch_cuda.so` (CUDA would never initialise). torch-sys (`links = "tch"`)
//! exports its library directory as `DEP_TCH_LIBTORCH_LIB` to direct dependents.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=SIMSIAM_LINK_TORCH_CUDA");
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not report its libtorch directory (DEP_TCH_LIBTORCH_LIB)");
    };
    compile_shim(Path::new(&dir));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    if link_torch_cuda(Path::new(&dir)) {
        // Only the trainer: the server must not link libtorch.
        println!("cargo:rustc-link-arg-bin=trainer=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg-bin=trainer=-ltorch_cuda");
        println!("cargo:rustc-link-arg-bin=trainer=-Wl,--as-needed");
    }
}

/// `csrc/autocast.cpp` against libtorch's headers (`<lib>/../include`), as torch-sys
/// compiles its own shim.
fn compile_shim(lib_dir: &Path) {
    let include = lib_dir.join("../include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .file("csrc/autocast.cpp")
        .compile("simsiam_autocast");
}

/// `libtorch_cuda.so` ships in every Linux torch wheel, but on the slim CPU route its
/// CUDA dependencies (cuDNN, cuBLAS, ...) are absent and linking it would make the
/// binary unloadable. Link it when the full route's cuDNN sits beside torch, or when
/// forced with `SIMSIAM_LINK_TORCH_CUDA=1` (e.g. to run on a machine that has them).
fn link_torch_cuda(lib_dir: &Path) -> bool {
    if !lib_dir.join("libtorch_cuda.so").exists() {
        return false;
    }
    match std::env::var("SIMSIAM_LINK_TORCH_CUDA").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => {
            let site = lib_dir.join("../..");
            site.join("nvidia/cudnn").exists()
        }
    }
}
