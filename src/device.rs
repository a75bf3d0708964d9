//! The convenience layer: one trait over every backend's owned buffers, and [`Device`], the
//! backend chosen at run time.

use crate::ops::gemm::{ActGrad, Gemm};
use crate::ops::ffn::BnParams;
use crate::ops::graph::{DeviceGraph, GraphArgs, GraphKernel, GraphParams};
use crate::ops::linattn::LinAttnParams;
use crate::ops::optim::OptimParams;
use crate::{DType, Error, HostTensor, Result};

/// Device memory held by a backend's buffers, in bytes (see [`Backend::memory_use`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUse {
    /// Held now.
    pub current: u64,
    /// The most held at once since the last reset.
    pub peak: u64,
}

/// Owned buffers and the primitive launches of one backend. Op compositions (backward passes,
/// FFN blocks) are written once over this trait.
pub trait Backend {
    /// An owned 1-D device buffer of one dtype.
    type Buf;
    /// The backend's name (`cpu`, `wgpu`, `cuda`).
    fn name(&self) -> &'static str;
    /// A buffer holding `t`'s values in its dtype.
    fn upload(&self, t: &HostTensor) -> Result<Self::Buf>;
    /// A buffer of `len` elements, zero-filled.
    fn alloc(&self, dtype: DType, len: usize) -> Result<Self::Buf>;
    /// A buffer of `len` elements whose values are unspecified until written: for an output or
    /// scratch buffer that the next launches write in full before anything reads it, which saves
    /// the zero-filling pass over it. Backends without unset memory zero-fill it.
    fn alloc_uninit(&self, dtype: DType, len: usize) -> Result<Self::Buf> {
        self.alloc(dtype, len)
    }
    /// The buffer's values (shape `[len]`). Waits for queued work.
    fn download(&self, buf: &Self::Buf) -> Result<HostTensor>;
    /// The buffer's dtype.
    fn dtype_of(&self, buf: &Self::Buf) -> DType;
    /// The buffer's length in elements.
    fn len_of(&self, buf: &Self::Buf) -> usize;
    /// Waits until all queued work has finished.
    fn synchronize(&self) -> Result<()>;
    /// Copies `src` into `dst` on the device (the copy-bandwidth ceiling of the benches).
    fn copy(&self, src: &Self::Buf, dst: &mut Self::Buf) -> Result<()>;
    /// Copies `src` into `dst` with a compute kernel of 16-byte loads and stores where the backend
    /// has one besides [`Backend::copy`] (wgpu: `copy` is the API's buffer copy, which a GPU may run
    /// on a copy engine slower than its cores can stream); `Ok(false)`, copying nothing, where it
    /// has none. The bench takes the faster of the two as the bandwidth ceiling.
    fn copy_kernel(&self, _src: &Self::Buf, _dst: &mut Self::Buf) -> Result<bool> {
        Ok(false)
    }
    /// Whether the backend's GEMM reads an operand with an inner stride (a gather) much slower
    /// than one with contiguous rows, so that an op with a choice should write its intermediate
    /// in the order the next product reads it (BlockShuffle's gathered middle activation). CUDA:
    /// its 16-byte copies and tensor-map loads need contiguous rows; elsewhere `false`.
    fn gemm_prefers_contiguous(&self) -> bool {
        false
    }
    /// Bytes of device memory held now by the buffers this backend allocates (tensors, outputs,
    /// scratch, index tables) and the most held at once since the last
    /// [`Backend::reset_peak_memory`]; `None` where the backend does not count them (the CPU
    /// reference). CUDA reads the counters of the memory pool its stream allocates from (shared
    /// with whatever else allocates there; a buffer counts from its allocation to its free, both
    /// in stream order); wgpu counts the storage buffers it creates, from creation to drop.
    fn memory_use(&self) -> Option<MemoryUse> {
        None
    }
    /// Starts a new peak for [`Backend::memory_use`] at the bytes held now.
    fn reset_peak_memory(&self) {}
    /// Device time in seconds of `reps` runs of `f`, after one warm-up run.
    fn time_runs(&self, reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<Vec<f64>>;

    /// [`Gemm`] forward; `z`, when given, receives the pre-activation (for the backward).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        desc: &Gemm,
        a: &Self::Buf,
        b: &Self::Buf,
        bias: Option<&Self::Buf>,
        r: Option<&Self::Buf>,
        c: &mut Self::Buf,
        z: Option<&mut Self::Buf>,
    ) -> Result<()>;
    /// `out = dc ⊙ act'(z)` on columns `< act_cols` (compact `[rows, cols]`).
    fn act_grad(&self, d: &ActGrad, dc: &Self::Buf, z: &Self::Buf, out: &mut Self::Buf) -> Result<()>;
    /// `out[j] = Σ_i x[i, j]` over compact `[rows, cols]`, summed in row order (deterministic).
    fn col_sum(&self, rows: usize, cols: usize, x: &Self::Buf, out: &mut Self::Buf) -> Result<()>;

    /// One fused noisy-optimizer step over arenas of `p.n` elements (see `ops::optim`): `param`
    /// and `state` are f32, `grad` any dtype. Callers go through `NoisyOptimizer::step`, which
    /// validates.
    fn optim_step(&self, p: &OptimParams, param: &mut Self::Buf, grad: &Self::Buf, state: &mut [Self::Buf]) -> Result<()>;
    /// `out[i]` = standard normal `i` of step `t` (SPEC §7), f32, for `i < n`.
    fn philox_normal(&self, n: usize, seed: u64, t: u32, out: &mut Self::Buf) -> Result<()>;
    /// The raw Philox words of blocks `0..blocks` of step `t`, 4 per block, stored as the bits of
    /// an f32 buffer (for bitwise cross-backend checks).
    fn philox_words(&self, blocks: usize, seed: u64, t: u32, out: &mut Self::Buf) -> Result<()>;

    /// BatchNorm forward over `[rows, channels]` (see `ops::ffn::BatchNormState`, which checks
    /// the buffers): `affine = [γ | β]`, running statistics updated in train mode, `stats`
    /// receives `[mean | rstd | scale | shift]` and `mean_lo` (at 6C).
    #[allow(clippy::too_many_arguments)]
    fn batchnorm(&self, p: &BnParams, x: &Self::Buf, affine: &Self::Buf, running_mean: &mut Self::Buf, running_var: &mut Self::Buf, stats: &mut Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// BatchNorm backward (training mode) from the forward's `stats`: `dx` (+ `extra`), and
    /// `[dγ | dβ]` into `stats[4C..6C]`.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward(&self, p: &BnParams, x: &Self::Buf, dy: &Self::Buf, affine: &Self::Buf, stats: &mut Self::Buf, extra: Option<&Self::Buf>, dx: &mut Self::Buf) -> Result<()>;

    /// Causal linear attention, fused recurrent form (see `ops::linattn::LinearAttention::recurrent`,
    /// which checks the buffers): sequence `n` is rows `starts[n] .. starts[n + 1]` of the
    /// `[B·T, H, ·]` tensors; `state` (f32) and `z` (f32) in as the initial state, out as the final.
    #[allow(clippy::too_many_arguments)]
    fn linattn_recurrent(&self, p: &LinAttnParams, q: &Self::Buf, k: &Self::Buf, v: &Self::Buf, starts: &[u32], state: &mut Self::Buf, z: &mut Self::Buf, o: &mut Self::Buf) -> Result<()>;
    /// The chunked form's inter-chunk pass (see `ops::linattn::LinearAttention::chunk`):
    /// `hs`, `zs` hold each chunk's own state sum and become the state at its start;
    /// `state`, `z` hold each sequence's initial state and become its final state. Sequence
    /// `n`'s chunks are `seq_chunk0[n] .. seq_chunk0[n + 1]`; `p.count0` is the chunk count.
    fn linattn_chunk_scan(&self, p: &LinAttnParams, seq_chunk0: &[u32], state: &mut Self::Buf, z: &mut Self::Buf, hs: &mut Self::Buf, zs: &mut Self::Buf) -> Result<()>;
    /// The chunk start states in one pass (see `ops::linattn::LinearAttention::chunk`): for each
    /// of the `p.batch` sequences, its state `state`, `z` carried through its chunks, each chunk's
    /// start state written into `hs`, `zs` and the final state left in `state`, `z`. `table` holds
    /// `[C | chunk bounds (C + 1) | their positions (C) | each sequence's first chunk (p.batch + 1)]`;
    /// `hs`, `zs` have room for `C + p.batch` slots; `hs` is of `linattn_snapshot_dtype`'s dtype
    /// and may arrive unset: every chunk's slot is written before any is read.
    #[allow(clippy::too_many_arguments)]
    fn linattn_chunk_states(&self, p: &LinAttnParams, table: &[u32], k: &Self::Buf, v: &Self::Buf, state: &mut Self::Buf, z: &mut Self::Buf, hs: &mut Self::Buf, zs: &mut Self::Buf) -> Result<()>;
    /// Its backward (see `ops::linattn::LinearAttention::backward`, which validates):
    /// `x = [q, k, v, o, do]`, the initial state `s0`, `z0` and the gradients of the final state
    /// and normalizer (f32; None: 0); writes `[dq, dk, dv, dS0, dz0]`. With `p.varlen == 2` the
    /// sequences are chunks and `starts` carries their positions (as for the forward).
    #[allow(clippy::too_many_arguments)]
    fn linattn_backward(&self, p: &LinAttnParams, starts: &[u32], x: [&Self::Buf; 5], s0: &Self::Buf, z0: &Self::Buf, d_final: [Option<&Self::Buf>; 2], out: [&mut Self::Buf; 5]) -> Result<()>;
    /// The chunked backward's first per-chunk pass (see `ops::linattn::LinearAttention::chunk_backward`):
    /// `p.batch` chunks (`p.varlen == 2`, `bounds` as for the forward), `x = [q, k, v, o, do]`,
    /// the forward's state at each chunk's start `start = [S_c, z_c]`; writes what the later
    /// passes read into `scratch` (f32, `ops::linattn::chunk_scratch_len` elements) and, given
    /// `own`, each chunk's own `Σ q̃·dnᵀ`, `Σ q̃·dd` there.
    #[allow(clippy::too_many_arguments)]
    fn linattn_chunk_dstate(&self, p: &LinAttnParams, bounds: &[u32], x: [&Self::Buf; 5], start: [&Self::Buf; 2], scratch: &mut Self::Buf, own: Option<[&mut Self::Buf; 2]>) -> Result<()>;
    /// The chunked backward's reverse pass in one sweep (many sequences·heads; the twin of
    /// `linattn_chunk_states`, same `table` and parameters): for each sequence, the gradient of
    /// the state and normalizer `d` (in: dS_T, dz_T; out: dS0, dz0) carried back through its
    /// chunks, each chunk's end gradient written into `g` (`C + p.batch` slots; `g[0]` may arrive
    /// unset, as `hs` there). `x`, `start` and `scratch` as for `linattn_chunk_dstate`, which
    /// filled `scratch`.
    #[allow(clippy::too_many_arguments)]
    fn linattn_chunk_grad_states(&self, p: &LinAttnParams, table: &[u32], x: [&Self::Buf; 5], start: [&Self::Buf; 2], scratch: &Self::Buf, d: [&mut Self::Buf; 2], g: [&mut Self::Buf; 2]) -> Result<()>;
    /// The second: with `end = [G_c, g_c]`, the gradients of the state and normalizer at each
    /// chunk's end, writes `[dq, dk, dv]`.
    #[allow(clippy::too_many_arguments)]
    fn linattn_chunk_grads(&self, p: &LinAttnParams, bounds: &[u32], x: [&Self::Buf; 5], start: [&Self::Buf; 2], end: [&Self::Buf; 2], scratch: &mut Self::Buf, out: [&mut Self::Buf; 3]) -> Result<()>;
    /// The dtype of the per-chunk states (`hs` and the backward's `g` states) when one sweep
    /// carries them (`linattn_chunk_states`, `linattn_chunk_grad_states`), for inputs of `dtype`:
    /// f32 unless every kernel that writes and reads them takes 16-bit states (CUDA's
    /// bf16 under the default `FFKERN_LINATTN_KERNEL=auto`), which halves the chunked forms' largest arrays.
    /// `backward`: the chunked backward's states. The final state is f32 whatever this says.
    fn linattn_snapshot_dtype(&self, _p: &LinAttnParams, _dtype: DType, _backward: bool) -> Result<DType> {
        Ok(DType::F32)
    }
    /// The chunked forward in one pass where the backend has one for these inputs (the arguments
    /// of [`Backend::linattn_chunk_states`], with `q` and the output `o`): every chunk's output
    /// from the running state, which `state`, `z` carry in and out. `Ok(false)`, touching nothing,
    /// where it has none; the caller then runs the two passes.
    #[allow(clippy::too_many_arguments)]
    fn linattn_chunk_fused(&self, _p: &LinAttnParams, _table: &[u32], _q: &Self::Buf, _k: &Self::Buf, _v: &Self::Buf, _state: &mut Self::Buf, _z: &mut Self::Buf, _o: &mut Self::Buf) -> Result<bool> {
        Ok(false)
    }
    /// The chunked backward in one pass per gradient where the backend has them for these inputs
    /// (the table of [`Backend::linattn_chunk_states`], `x = [q, k, v, o, do]`, the initial state
    /// `s0`, `z0`): dq rebuilds the forward's state chunk by chunk, dk and dv carry the state's
    /// gradient back from `d = [dS_T, dz_T]`, which leaves `[dS0, dz0]` there, so no per-chunk
    /// state is stored at all. Writes `out = [dq, dk, dv]`. `Ok(false)`, touching nothing, where it
    /// has none.
    #[allow(clippy::too_many_arguments)]
    fn linattn_chunk_backward_fused(&self, _p: &LinAttnParams, _table: &[u32], _x: [&Self::Buf; 5], _s0: &Self::Buf, _z0: &Self::Buf, _d: [&mut Self::Buf; 2], _out: [&mut Self::Buf; 3]) -> Result<bool> {
        Ok(false)
    }

    /// One graph primitive (see `ops::graph`, which checks the buffers; [`GraphKernel`] says
    /// which operands each reads; `g` is None only for LayerNorm, which reads no graph); `arg`
    /// gets the max/min arg words.
    fn graph_op(&self, kind: GraphKernel, p: &GraphParams, g: Option<&DeviceGraph<Self::Buf>>, a: &GraphArgs<Self::Buf>, out: &mut Self::Buf, arg: Option<&mut Self::Buf>) -> Result<()>;
}

/// Checks that every operand has the dtype of the first.
pub(crate) fn same_dtype(op: &'static str, dtypes: &[(&str, DType)]) -> Result<DType> {
    let first = dtypes.first().map(|d| d.1).unwrap_or(DType::F32);
    for (name, d) in dtypes {
        if *d != first {
            return Err(Error::dtype(op, format!("{name} is {d}, expected {first} like the other operands")));
        }
    }
    Ok(first)
}

/// A backend picked at run time.
pub enum Device {
    /// The CPU reference.
    Cpu(crate::Cpu),
    /// A wgpu adapter.
    #[cfg(feature = "wgpu")]
    Wgpu(std::sync::Arc<crate::WgpuContext>),
    /// A CUDA GPU.
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<crate::CudaRuntime>),
}

impl Device {
    /// Opens a backend by name: `cpu`, `wgpu` or `cuda`.
    pub fn open(name: &str) -> Result<Device> {
        match name {
            "cpu" => Ok(Device::Cpu(crate::Cpu)),
            #[cfg(feature = "wgpu")]
            "wgpu" => Ok(Device::Wgpu(std::sync::Arc::new(crate::WgpuContext::new()?))),
            #[cfg(feature = "cuda")]
            "cuda" => Ok(Device::Cuda(std::sync::Arc::new(crate::CudaRuntime::new(0)?))),
            #[cfg(not(feature = "wgpu"))]
            "wgpu" => Err(Error::BackendUnavailable { backend: "wgpu", reason: "ffkern was built without the `wgpu` feature".into() }),
            #[cfg(not(feature = "cuda"))]
            "cuda" => Err(Error::BackendUnavailable { backend: "cuda", reason: "ffkern was built without the `cuda` feature".into() }),
            other => Err(Error::Invalid(format!("unknown backend '{other}' (cpu, wgpu, cuda)"))),
        }
    }

    /// The best backend present: cuda, then wgpu on a real GPU, then wgpu on any adapter, then cpu.
    /// A backend that cannot open moves on to the next; a setting that is wrong (an
    /// `FFKERN_*` variable with a value no backend takes) is an error, not a quiet fall back to
    /// the CPU.
    pub fn best() -> Result<Device> {
        for name in crate::compiled_backends() {
            if let Some(d) = Device::open_if_present(name)? {
                return Ok(d);
            }
        }
        Ok(Device::Cpu(crate::Cpu))
    }

    /// [`Device::open`], with `None` where the backend cannot open here (no driver, no adapter,
    /// not compiled in); a wrong setting (an `FFKERN_*` value no backend takes) stays an error.
    pub fn open_if_present(name: &str) -> Result<Option<Device>> {
        match Device::open(name) {
            Ok(d) => Ok(Some(d)),
            Err(e @ Error::Invalid(_)) => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// The backend's name.
    pub fn name(&self) -> &'static str {
        match self {
            Device::Cpu(_) => "cpu",
            #[cfg(feature = "wgpu")]
            Device::Wgpu(_) => "wgpu",
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => "cuda",
        }
    }

    /// Whether the device computes on the CPU (the reference, or a CPU adapter such as lavapipe):
    /// benches then default to small shapes.
    pub fn is_cpu_like(&self) -> bool {
        match self {
            Device::Cpu(_) => true,
            #[cfg(feature = "wgpu")]
            Device::Wgpu(w) => w.info.device_type == wgpu::DeviceType::Cpu,
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => false,
        }
    }

    /// A one-line description of the device (adapter or GPU name).
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu(_) => "cpu reference (f64 accumulation)".into(),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(w) => w.describe(),
            #[cfg(feature = "cuda")]
            Device::Cuda(c) => c.describe(),
        }
    }
}

/// Runs `$body` with `$be` bound to the concrete backend inside a [`Device`].
#[macro_export]
macro_rules! with_backend {
    ($dev:expr, $be:ident => $body:expr) => {
        match $dev {
            $crate::Device::Cpu($be) => $body,
            #[cfg(feature = "wgpu")]
            $crate::Device::Wgpu($be) => {
                let $be = &**$be;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::Device::Cuda($be) => {
                let $be = &**$be;
                $body
            }
        }
    };
}
