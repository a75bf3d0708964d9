//! ffkern: handwritten CUDA and WGSL kernels for the hot paths of efficient feed-forward
//! architectures, a safe Rust API over them, and the CPU reference that every kernel is tested
//! against.
//!
//! Two levels of API:
//! - low level, for frameworks: the launchers in `ops::<family>::{wgpu,cuda}` run on memory the
//!   caller owns (`wgpu::Buffer` + element offsets on the caller's device and queue, cudarc views
//!   on the caller's stream) with no copies and no hidden synchronisation, and check every length
//!   they are given (the linear-attention and graph launchers are steps of multi-kernel forms
//!   over tables only `ops` builds, so they stay inside the crate: frameworks reach those
//!   families through [`Backend`], e.g. on a `CudaRuntime` made from their stream or on buffers
//!   `WgpuContext::adopt` wraps);
//! - convenience, for people and tests: the [`Backend`] trait with owned buffers
//!   (`upload`/`download`) implemented by [`Cpu`], `WgpuContext` and `CudaRuntime`, and the
//!   [`Device`] enum that picks the best backend present.
//!
//! ```
//! use ffkern::{Activation, Backend, Cpu, DType, Gemm, HostTensor};
//! # fn main() -> ffkern::Result<()> {
//! let be = Cpu; // or WgpuContext::new()? or CudaRuntime::new(0)? — the same calls follow
//! // C = relu(A·Bᵀ + bias) for A [2, 3], B [2, 3] (the [out, in] weight layout), bias [2].
//! let desc = Gemm::new(2, 2, 3).bias(true).act(Activation::Relu);
//! let a = be.upload(&HostTensor::new(DType::F32, vec![6], vec![1., 2., 3., 4., 5., 6.])?)?;
//! let b = be.upload(&HostTensor::new(DType::F32, vec![6], vec![1., 0., 0., 0., 0., -1.])?)?;
//! let bias = be.upload(&HostTensor::new(DType::F32, vec![2], vec![0.5, 0.5])?)?;
//! let mut c = be.alloc(DType::F32, 4)?;
//! be.gemm(&desc, &a, &b, Some(&bias), None, &mut c, None)?;
//! assert_eq!(be.download(&c)?.data, vec![1.5, 0.0, 4.5, 0.0]);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod bench;
pub mod check;
pub mod device;
pub mod dtype;
pub mod error;
pub mod ops;
pub mod registry;
pub mod runtime;

pub use device::{Backend, Device, MemoryUse};
pub use dtype::{Compare, DType, HostTensor, SplitMix64};
pub use error::{Error, Result};
pub use ops::gemm::{ALayout, Activation, BLayout, Gemm, GemmGrads};
pub use runtime::cpu::Cpu;
#[cfg(feature = "cuda")]
pub use runtime::cuda::CudaRuntime;
#[cfg(feature = "wgpu")]
pub use runtime::wgpu::{WgpuContext, WgpuOptions};

/// Names of the backends compiled into this build, best first.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    v.push("cpu");
    v
}
