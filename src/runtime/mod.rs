//! Backend runtimes: device setup, kernel/pipeline caches, buffers, launches and timing.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

/// A kernel choice read once from environment variable `var` into `cell`: one of `allowed`, the
/// first when unset; any other value is an error that names the choices (a typo must not
/// silently run the default).
pub(crate) fn kernel_env(cell: &'static std::sync::OnceLock<Option<String>>, var: &str, allowed: &[&'static str]) -> crate::Result<&'static str> {
    match cell.get_or_init(|| std::env::var(var).ok()) {
        None => Ok(allowed[0]),
        Some(v) => allowed.iter().copied().find(|a| a == v).ok_or_else(|| crate::Error::Invalid(format!("{var}={v}: expected one of {}", allowed.join(", ")))),
    }
}
