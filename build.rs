//! Build-time kernel checks.
//! - Every WGSL family shader is assembled exactly as the runtime assembles it
//!   (`_dtype_<dtype>.wgsl + _common.wgsl + <family>.wgsl`, see `src/runtime/wgpu.rs`) for each
//!   dtype, then parsed and validated by naga; an error fails the build with `file:line: message`.
//!   Each validated module then goes through naga's SPIR-V writer (what wgpu runs on Vulkan), so a
//!   shader that validates but cannot be translated fails the build too, naming the file.
//! - With feature `cuda`: every `kernels/*.cu` is compiled by nvcc twice: to `<family>.ptx`
//!   (`compute_80`, runs on Ampere and Hopper) and to `<family>.sm90a.ptx` (`compute_90a` with
//!   `FFKERN_SM90A` defined: the Hopper-only wgmma entries). Every kernel name listed in
//!   `src/ops/<family>/cuda.rs` (`KERNELS`, `KERNELS_SM90A`) must be an `.entry` of its PTX, and,
//!   when ptxas sits beside nvcc, the PTX is assembled (compute_80 for sm_80 and sm_90a,
//!   compute_90a for sm_90a) and any register spill fails the build.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DTYPES: [&str; 3] = ["f32", "f16", "bf16"];

fn main() {
    println!("cargo:rerun-if-changed=shaders");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=src/ops");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    check_shaders();
    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        build_cuda();
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", path.display())))
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    println!("cargo:warning={}", msg.lines().next().unwrap_or(""));
    std::process::exit(1);
}

fn sorted_files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| fail(&format!("cannot list {dir}: {e}")))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// Maps a line of the assembled source back to (file, line).
fn locate(parts: &[(PathBuf, usize)], line: usize) -> (String, usize) {
    let mut start = 1;
    for (path, lines) in parts {
        if line < start + lines {
            return (path.display().to_string(), line - start + 1);
        }
        start += lines;
    }
    ("<assembled shader>".into(), line)
}

fn check_shaders() {
    for family in sorted_files("shaders", "wgsl") {
        let name = family.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.starts_with('_') {
            continue;
        }
        for dtype in DTYPES {
            // A family's shared snippet: `_linattn.wgsl` for linattn and linattn_bwd.
            let stem = name.trim_end_matches(".wgsl");
            let snippet = PathBuf::from(format!("shaders/_{}.wgsl", stem.split('_').next().unwrap_or(stem)));
            let mut files = vec![PathBuf::from(format!("shaders/_dtype_{dtype}.wgsl")), PathBuf::from("shaders/_common.wgsl")];
            if snippet.exists() {
                files.push(snippet);
            }
            files.push(family.clone());
            let mut source = String::new();
            let mut parts = Vec::new();
            for f in &files {
                let mut text = read(f);
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                parts.push((f.clone(), text.lines().count()));
                source.push_str(&text);
            }
            let module = match naga::front::wgsl::parse_str(&source) {
                Ok(m) => m,
                Err(e) => {
                    let (file, line) = e.location(&source).map(|l| locate(&parts, l.line_number as usize)).unwrap_or(("?".into(), 0));
                    fail(&format!("{file}:{line}: (dtype {dtype}) {}", e.message()));
                }
            };
            let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
            let info = match validator.validate(&module) {
                Ok(info) => info,
                Err(e) => {
                    let (file, line) = e.location(&source).map(|l| locate(&parts, l.line_number as usize)).unwrap_or(("?".into(), 0));
                    fail(&format!("{file}:{line}: (dtype {dtype}) {}", e.emit_to_string(&source).trim()));
                }
            };
            // Then through naga's SPIR-V writer, which wgpu runs on Vulkan when it builds a
            // pipeline: a construct that validates but that the writer cannot translate (or
            // panics on) fails here rather than in a user's process.
            let options = naga::back::spv::Options { lang_version: (1, 3), ..Default::default() };
            match std::panic::catch_unwind(|| naga::back::spv::write_vec(&module, &info, &options, None)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => fail(&format!("shaders/{name}: (dtype {dtype}) naga's SPIR-V writer: {e}")),
                Err(_) => fail(&format!("shaders/{name}: (dtype {dtype}) naga's SPIR-V writer panicked (see the message above)")),
            }
        }
    }
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    if let Some(home) = env::var_os("CUDA_HOME").or_else(|| env::var_os("CUDA_PATH")) {
        let p = Path::new(&home).join("bin/nvcc");
        if p.exists() {
            return Some(p);
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    // The pinned PyPI wheels (DESIGN.md) install nvcc inside site-packages.
    let out = Command::new("python3")
        .args(["-c", "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'bin', 'nvcc'))"])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_file().then_some(p)
}

/// Kernel names a family's Rust launcher uses: the strings of its `list` constant
/// (`KERNELS` or `KERNELS_SM90A`).
fn rust_kernel_names(family: &str, list: &str) -> Vec<String> {
    let path = PathBuf::from(format!("src/ops/{family}/cuda.rs"));
    if !path.exists() {
        return Vec::new();
    }
    let text = read(&path);
    let Some(start) = text.find(&format!("{list}: &[&str] = &[")) else {
        if list != "KERNELS" {
            return Vec::new();
        }
        fail(&format!("{}: no `KERNELS: &[&str] = &[...]` list", path.display()));
    };
    let rest = &text[start..];
    let end = rest.find("];").unwrap_or(rest.len());
    rest[..end].split('"').skip(1).step_by(2).map(str::to_string).collect()
}

fn build_cuda() {
    let nvcc = find_nvcc().unwrap_or_else(|| {
        fail(
            "feature `cuda` needs nvcc (set NVCC or CUDA_HOME, or put it on PATH). Without a CUDA install: \
             pip install nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
             nvidia-cuda-runtime==13.0.88 \"nvidia-cuda-cccl==13.0.*\" (nvcc lands in site-packages/nvidia/cu13/bin)",
        )
    });
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR is not set")));
    let ptxas = nvcc.with_file_name("ptxas");
    for cu in sorted_files("kernels", "cu") {
        let family = cu.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        let variants: [(&str, &str, &[&str], &[&str]); 2] = [
            ("ptx", "compute_80", &[], &["sm_80", "sm_90a"]),
            ("sm90a.ptx", "compute_90a", &["-DFFKERN_SM90A"], &["sm_90a"]),
        ];
        for (suffix, arch, defines, ptxas_archs) in variants {
            let ptx = out_dir.join(format!("{family}.{suffix}"));
            let out = Command::new(&nvcc)
                .args(["--ptx", "-O3", "-std=c++17", &format!("-arch={arch}"), "-Ikernels", "-diag-suppress", "177"])
                .args(defines)
                .arg("-o")
                .arg(&ptx)
                .arg(&cu)
                .output()
                .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", nvcc.display())));
            if !out.status.success() {
                fail(&format!("nvcc ({arch}) failed on {}:\n{}", cu.display(), String::from_utf8_lossy(&out.stderr)));
            }
            let text = read(&ptx);
            let list = if suffix == "ptx" { "KERNELS" } else { "KERNELS_SM90A" };
            for name in rust_kernel_names(&family, list) {
                if !text.contains(&format!(".entry {name}(")) {
                    fail(&format!("kernel `{name}` ({list} in src/ops/{family}/cuda.rs) is not an entry of {family}.{suffix}"));
                }
            }
            if !ptxas.is_file() {
                continue;
            }
            for target in ptxas_archs {
                let out = Command::new(&ptxas)
                    .args(["-v", &format!("-arch={target}"), "-o", "/dev/null"])
                    .arg(&ptx)
                    .output()
                    .unwrap_or_else(|e| fail(&format!("cannot run ptxas: {e}")));
                let log = String::from_utf8_lossy(&out.stderr).to_string();
                if !out.status.success() {
                    fail(&format!("ptxas ({target}) failed on {family}.{suffix}:\n{log}"));
                }
                for line in log.lines().filter(|l| l.contains("spill")) {
                    if !line.contains("0 bytes spill stores, 0 bytes spill loads") {
                        fail(&format!("ptxas ({target}) reports spills in {family}.{suffix}: {line}\n{log}"));
                    }
                }
                if log.contains("Potential Performance Loss") {
                    fail(&format!("ptxas ({target}) warns on {family}.{suffix}:\n{log}"));
                }
                fs::write(out_dir.join(format!("{family}.{suffix}.{target}.ptxas.txt")), log).ok();
            }
        }
    }
}
