//! Backend runtimes: device setup, kernel/pipeline caches, buffers, launches and timing.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;
