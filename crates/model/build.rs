//! With the `cuda` feature, compiles the GPU kernels (`src/gpu/cuda/*.cu`) to PTX with nvcc, one
//! module per file, for the crate to embed. Without it there is nothing to do.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let dir = Path::new("src/gpu/cuda");
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_ROOT");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // The scripts/cuda_toolchain.sh root when set, else nvcc on PATH.
    let nvcc = std::env::var_os("CUDA_ROOT").map_or_else(|| PathBuf::from("nvcc"), |r| Path::new(&r).join("bin/nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("src/gpu/cuda is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for src in sources {
        let ptx = out.join(src.with_extension("ptx").file_name().expect("a file name"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", "-lineinfo"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-I")
            .arg(dir)
            .arg("-o")
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "running {} for {}: {e}; install CUDA or run scripts/cuda_toolchain.sh",
                    nvcc.display(),
                    src.display()
                )
            });
        assert!(status.success(), "nvcc failed on {}", src.display());
    }
}
