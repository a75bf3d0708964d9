//! The CUDA runtime: context and stream (the caller's or our own), PTX modules built by build.rs
//! loaded once, kernel functions cached, the one launch helper that holds every `unsafe` launch,
//! CUDA-event timing, and cuBLAS/cuBLASLt handles for baselines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtrMut, LaunchArgs, LaunchConfig};
use half::{bf16, f16};

use crate::device::{same_dtype, Backend};
use crate::ops::gemm::{ActGrad, Gemm};
use crate::ops::ffn::BnParams;
use crate::ops::graph::{DeviceGraph, GraphArgs, GraphKernel, GraphParams};
use crate::ops::linattn::LinAttnParams;
use crate::ops::optim::OptimParams;
use crate::{DType, Error, HostTensor, Result};

/// The linear-attention family's name in errors.
const LINATTN: &str = "linear_attn";

/// Calls `go::<T, S>(args)` for inputs of dtype `t` and per-chunk states of dtype `s`: f32, or the
/// inputs' own 16-bit type (see `Backend::linattn_snapshot_dtype`); anything else is an error.
macro_rules! with_states {
    ($t:expr, $s:expr, $go:ident($($arg:expr),*)) => {
        match ($t, $s) {
            (DType::F32, DType::F32) => $go::<f32, f32>($($arg),*),
            (DType::F16, DType::F32) => $go::<f16, f32>($($arg),*),
            (DType::BF16, DType::F32) => $go::<bf16, f32>($($arg),*),
            (DType::F16, DType::F16) => $go::<f16, f16>($($arg),*),
            (DType::BF16, DType::BF16) => $go::<bf16, bf16>($($arg),*),
            (t, s) => Err(Error::dtype(LINATTN, format!("per-chunk states in {s} for {t} inputs"))),
        }
    };
}

const BACKEND: &str = "cuda";

/// Which PTX of a family a kernel lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ptx {
    /// `compute_80`: every kernel, runs on Ampere and newer.
    Base,
    /// `compute_90a`: the Hopper-only entries (wgmma), loadable on compute capability 9.0 only.
    Sm90a,
}

/// The PTX of each kernel family, compiled by build.rs from `kernels/<family>.cu`.
fn family_ptx(family: &str, ptx: Ptx) -> Result<&'static str> {
    match (family, ptx) {
        ("gemm", Ptx::Base) => Ok(include_str!(concat!(env!("OUT_DIR"), "/gemm.ptx"))),
        ("gemm", Ptx::Sm90a) => Ok(include_str!(concat!(env!("OUT_DIR"), "/gemm.sm90a.ptx"))),
        ("optim", Ptx::Base) => Ok(include_str!(concat!(env!("OUT_DIR"), "/optim.ptx"))),
        ("ffn", Ptx::Base) => Ok(include_str!(concat!(env!("OUT_DIR"), "/ffn.ptx"))),
        ("linattn", Ptx::Base) => Ok(include_str!(concat!(env!("OUT_DIR"), "/linattn.ptx"))),
        ("graph", Ptx::Base) => Ok(include_str!(concat!(env!("OUT_DIR"), "/graph.ptx"))),
        (other, _) => Err(Error::Unsupported(format!("no CUDA kernel family '{other}'"))),
    }
}

/// A storage element the CUDA kernels take.
pub trait CudaElem: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy + Default + Unpin + 'static {
    /// The dtype this element stores.
    const DTYPE: DType;
    /// Rounds an f32 to this element.
    fn from_f32(x: f32) -> Self;
    /// Widens to f32.
    fn to_f32(self) -> f32;
    /// The typed slice of a buffer holding this element.
    fn of(buf: &CudaBuf) -> Option<&CudaSlice<Self>>;
    /// The typed slice, mutable, of a buffer holding this element.
    fn of_mut(buf: &mut CudaBuf) -> Option<&mut CudaSlice<Self>>;
}

/// The entry of a family's `kernels` named `base`, or `base` + `_f32` / `_f16` / `_bf16` (T's
/// dtype) where the kernel has one instance per dtype.
pub(crate) fn kernel_name<T: CudaElem>(kernels: &'static [&'static str], base: &str) -> Result<&'static str> {
    let suffix = format!("_{}", T::DTYPE.name());
    kernels.iter().copied().find(|k| *k == base || k.strip_prefix(base) == Some(suffix.as_str())).ok_or_else(|| Error::Invalid(format!("no CUDA kernel {base}")))
}

/// A view's device address, for the launchers' alignment checks.
pub(crate) fn device_addr<T, V: cudarc::driver::DevicePtr<T>>(rt: &CudaRuntime, v: &V) -> u64 {
    v.device_ptr(&rt.stream).0
}

/// The launch of a 1-D grid-stride kernel of 256-thread blocks over `threads` threads: one block
/// per 256 threads, at least one and at most `cap` (or `FFKERN_GRID_LIMIT`, see
/// [`super::grid_limit`]); the kernel's loop takes the rest.
pub(crate) fn stride_grid(threads: usize, cap: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (threads.div_ceil(256).clamp(1, super::grid_cap(cap)) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// A launcher's length checks on the caller's views, `(name, elements held, elements read or
/// written)` each: a kernel must not reach past a view, so a short one is a shape error.
pub(crate) fn check_lens(op: &'static str, views: &[(&str, usize, usize)]) -> Result<()> {
    match views.iter().find(|(_, have, need)| have < need) {
        Some((name, have, need)) => Err(Error::shape(op, format!("{name} holds {have} elements, the launch reaches {need}"))),
        None => Ok(()),
    }
}

macro_rules! elem_access {
    ($t:ty, $v:ident) => {
        fn of(buf: &CudaBuf) -> Option<&CudaSlice<$t>> {
            match buf {
                CudaBuf::$v(s) => Some(s),
                _ => None,
            }
        }
        fn of_mut(buf: &mut CudaBuf) -> Option<&mut CudaSlice<$t>> {
            match buf {
                CudaBuf::$v(s) => Some(s),
                _ => None,
            }
        }
    };
}
impl CudaElem for f32 {
    const DTYPE: DType = DType::F32;
    elem_access!(f32, F32);
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl CudaElem for f16 {
    const DTYPE: DType = DType::F16;
    elem_access!(f16, F16);
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}
impl CudaElem for bf16 {
    const DTYPE: DType = DType::BF16;
    elem_access!(bf16, BF16);
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// An owned device buffer of one dtype.
#[derive(Debug)]
pub enum CudaBuf {
    /// f32 elements.
    F32(CudaSlice<f32>),
    /// f16 elements.
    F16(CudaSlice<f16>),
    /// bf16 elements.
    BF16(CudaSlice<bf16>),
}

impl CudaBuf {
    /// The typed slice, when the buffer holds `T`.
    pub fn typed<T: CudaElem>(&self) -> Result<&CudaSlice<T>> {
        T::of(self).ok_or_else(|| Error::dtype("cuda", format!("a {} buffer where {} was expected", self.dtype(), T::DTYPE)))
    }
    /// The typed slice, mutable, when the buffer holds `T`.
    pub fn typed_mut<T: CudaElem>(&mut self) -> Result<&mut CudaSlice<T>> {
        let dtype = self.dtype();
        T::of_mut(self).ok_or_else(|| Error::dtype("cuda", format!("a {dtype} buffer where {} was expected", T::DTYPE)))
    }
    /// The element dtype.
    pub fn dtype(&self) -> DType {
        match self {
            CudaBuf::F32(_) => DType::F32,
            CudaBuf::F16(_) => DType::F16,
            CudaBuf::BF16(_) => DType::BF16,
        }
    }
    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            CudaBuf::F32(s) => s.len(),
            CudaBuf::F16(s) => s.len(),
            CudaBuf::BF16(s) => s.len(),
        }
    }
    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A CUDA device context and stream with ffkern's module and function caches.
pub struct CudaRuntime {
    /// The context (a caller's, or the device's primary context). One that [`CudaRuntime::new`]
    /// opened has cudarc's event tracking off (its one stream orders every use): work on other
    /// streams of it must be ordered against that stream by the caller.
    pub ctx: Arc<CudaContext>,
    /// The stream every launch, copy and allocation goes to.
    pub stream: Arc<CudaStream>,
    modules: Mutex<HashMap<(&'static str, Ptx), Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    blas: OnceLock<std::result::Result<cudarc::cublas::CudaBlas, String>>,
    blas_lt: OnceLock<std::result::Result<cudarc::cublaslt::CudaBlasLT, String>>,
    /// The device's memory in bytes, asked of the driver once (every allocation is checked
    /// against it).
    total_mem: OnceLock<usize>,
    /// See [`CudaRuntime::with_sync_scratch`].
    sync_scratch: Mutex<Option<CudaSlice<u32>>>,
}

/// A vendor-library handle created once (or the reason it could not be), as a typed error.
fn vendor_handle<'a, H>(
    cell: &'a OnceLock<std::result::Result<H, String>>,
    name: &'static str,
    present: bool,
    make: impl FnOnce() -> std::result::Result<H, String>,
) -> Result<&'a H> {
    cell.get_or_init(|| if present { make() } else { Err(format!("lib{name} is not present (add its folder to LD_LIBRARY_PATH)")) })
        .as_ref()
        .map_err(|e| Error::BackendUnavailable { backend: name, reason: e.clone() })
}

pub(crate) fn drv(context: &str) -> impl FnOnce(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::driver(format!("cuda: {context}"), e)
}

/// Lets the device's memory pool keep what the runtime frees (release threshold: unlimited), as
/// a framework's caching allocator does. Buffers are allocated stream-ordered from that pool; with
/// the driver's default threshold of 0 every synchronisation hands the freed memory back to the
/// system, so each op's next output or scratch buffer would be mapped afresh, a cost that grows
/// with its size and that the kernels' timings would include. Only a runtime that opens its own
/// context does this: one on a caller's stream leaves the caller's pool as it is. Where the device
/// has no pools nothing changes.
fn keep_freed_memory(ctx: &CudaContext) {
    if let Some(pool) = alloc_pool(ctx) {
        set_pool_attr(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, u64::MAX);
    }
}

/// A u64 attribute of a live pool, `None` where the driver refuses.
fn pool_attr(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: `pool` is a live pool; the call writes one u64 through the pointer to the local.
    let ok = unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut v as *mut u64).cast()) } == sys::CUresult::CUDA_SUCCESS;
    ok.then_some(v)
}

/// Sets a u64 attribute of a live pool; a refusal leaves the pool as it was.
fn set_pool_attr(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute, mut v: u64) {
    // SAFETY: `pool` is a live pool; the call reads only the local passed by pointer.
    let _ = unsafe { sys::cuMemPoolSetAttribute(pool, attr, (&mut v as *mut u64).cast()) };
}

/// The memory pool that stream-ordered allocations on `ctx`'s device come from (the device's
/// current pool), or `None` where buffers are not allocated from a pool.
fn alloc_pool(ctx: &CudaContext) -> Option<sys::CUmemoryPool> {
    if !ctx.has_async_alloc() {
        return None;
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: takes a valid device handle and writes only the local handle.
    let ok = unsafe { sys::cuDeviceGetMemPool(&mut pool, ctx.cu_device()) } == sys::CUresult::CUDA_SUCCESS;
    (ok && !pool.is_null()).then_some(pool)
}

/// The fill of buffers that a launch writes in full: none, or every bit set (NaN in f32, f16 and
/// bf16) under `FFKERN_POISON` (see `runtime::poison`).
fn uninit_fill() -> Option<u8> {
    super::poison().then_some(0xff)
}

impl CudaRuntime {
    /// Opens GPU `ordinal` with its own stream. A machine without the CUDA driver gives
    /// [`Error::BackendUnavailable`], never a panic.
    pub fn new(ordinal: usize) -> Result<Self> {
        super::grid_limit()?;
        // SAFETY: only tries to load libcuda dynamically and reports whether it could.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::BackendUnavailable { backend: BACKEND, reason: "the CUDA driver library (libcuda) is not present".into() });
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::BackendUnavailable { backend: BACKEND, reason: format!("no usable GPU {ordinal}: {e}") })?;
        keep_freed_memory(&ctx);
        // cudarc orders each buffer's uses across streams by events: a wait and a record for every
        // buffer a launch takes, two events made and waited on for every allocation. This context
        // is ours and has one stream, whose order already orders every use, so that is only host
        // time: about twenty driver calls an op, which a short op (the decode step, a graph
        // primitive) paid in every call before its kernel could start.
        // SAFETY: every buffer of this runtime is allocated, used and freed on its one stream,
        // created just below; a caller that adds streams to `ctx` orders them itself (see `ctx`).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv("creating a stream"))?;
        Ok(Self::from_stream(stream))
    }

    /// Runs on the caller's stream (a framework's own); nothing else is synchronised. The caller's
    /// context keeps its own event-tracking setting (cudarc's default, on, costs a few driver
    /// calls per buffer of each launch; a framework that orders its streams itself may turn it
    /// off).
    pub fn from_stream(stream: Arc<CudaStream>) -> Self {
        CudaRuntime {
            ctx: stream.context().clone(),
            stream,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            blas: OnceLock::new(),
            blas_lt: OnceLock::new(),
            total_mem: OnceLock::new(),
            sync_scratch: Mutex::new(None),
        }
    }

    /// The GPU's compute capability, `(0, 0)` where the driver does not say.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.ctx.compute_capability().unwrap_or((0, 0))
    }

    /// The GPU's name, architecture and memory, for reports.
    pub fn describe(&self) -> String {
        let (maj, min) = self.compute_capability();
        let name = self.ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let mem = self.ctx.total_mem().unwrap_or(0) as f64 / (1u64 << 30) as f64;
        format!("{name} (sm_{maj}{min}, {mem:.0} GiB)")
    }

    /// The number of multiprocessors (persistent kernels launch one block per multiprocessor).
    pub fn sm_count(&self) -> u32 {
        self.ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map(|n| n.max(1) as u32)
            .unwrap_or(1)
    }

    /// The most dynamic shared memory one block may take on this GPU (its opt-in limit).
    pub fn max_block_smem(&self) -> u32 {
        self.ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map(|n| n.max(0) as u32)
            .unwrap_or(48 * 1024)
    }

    /// Whether the Hopper-only (`compute_90a`) kernels can run here.
    pub fn is_sm90a(&self) -> bool {
        self.compute_capability() == (9, 0)
    }

    /// A kernel of `family`, loaded once, whose launches take `smem` bytes of dynamic shared
    /// memory: its limit is raised once, after loading, where that is over the default 48 KiB.
    pub(crate) fn function(&self, family: &'static str, ptx: Ptx, name: &'static str, smem: u32) -> Result<CudaFunction> {
        if ptx == Ptx::Sm90a && !self.is_sm90a() {
            return Err(Error::Unsupported(format!("{name} needs compute capability 9.0 (Hopper)")));
        }
        if let Some(f) = self.functions.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(f.clone());
        }
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            match modules.get(&(family, ptx)) {
                Some(m) => m.clone(),
                None => {
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_src(family_ptx(family, ptx)?))
                        .map_err(drv("loading the PTX module"))?;
                    modules.insert((family, ptx), m.clone());
                    m
                }
            }
        };
        let f = module.load_function(name).map_err(drv(name))?;
        if smem > 48 * 1024 {
            f.set_attribute(cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
                .map_err(drv("raising the shared-memory limit"))?;
        }
        self.functions.lock().unwrap_or_else(|p| p.into_inner()).insert(name, f.clone());
        Ok(f)
    }

    /// The one place where ffkern launches a kernel.
    ///
    /// Callers guarantee (and state in a SAFETY note at the call site) that `push` pushes exactly
    /// the kernel's parameters in order and type, and that every pointer is valid for every
    /// element the kernel reads or writes under the descriptor they validated first.
    pub(crate) fn launch<'a>(&'a self, func: &'a CudaFunction, cfg: LaunchConfig, push: impl FnOnce(&mut LaunchArgs<'a>)) -> Result<()> {
        // An empty grid has nothing to do (the driver would reject it).
        if cfg.grid_dim.0 == 0 || cfg.grid_dim.1 == 0 || cfg.grid_dim.2 == 0 {
            return Ok(());
        }
        let mut args = self.stream.launch_builder(func);
        push(&mut args);
        // SAFETY: the caller's contract above: parameters match the kernel signature and the
        // validated descriptor keeps every access inside the buffers passed; cudarc records the
        // buffers' use on this stream so none is freed while the kernel runs.
        unsafe { args.launch(cfg) }.map_err(drv("kernel launch"))?;
        Ok(())
    }

    /// Runs `f` (which queues launches) with the runtime's sync scratch of at least `len` words:
    /// one buffer kept for kernels whose blocks coordinate through counters and flags at its start
    /// and which leave those words 0 when they finish (the words after them are theirs to write
    /// before they read). It is zeroed when it is made or grown, so no launch pays an allocation
    /// or a fill; the stream orders one launch's use after the previous one's, and the lock keeps
    /// another host thread from growing it while `f` queues its launch.
    pub(crate) fn with_sync_scratch<R>(&self, len: usize, f: impl FnOnce(&mut CudaSlice<u32>) -> Result<R>) -> Result<R> {
        let mut held = self.sync_scratch.lock().unwrap_or_else(|p| p.into_inner());
        let scratch = match held.take() {
            Some(s) if s.len() >= len => s,
            old => {
                let grown = len.max(2 * old.as_ref().map_or(0, |s| s.len()));
                drop(old);
                self.stream.alloc_zeros::<u32>(grown).map_err(drv("allocating the sync scratch"))?
            }
        };
        f(held.insert(scratch))
    }

    /// Times `reps` runs of `f` after one warm-up, with CUDA events on this stream (seconds).
    pub fn time_runs(&self, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
        f()?;
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut out = Vec::with_capacity(reps);
        for _ in 0..reps {
            let start = self.ctx.new_event(flags).map_err(drv("creating an event"))?;
            let end = self.ctx.new_event(flags).map_err(drv("creating an event"))?;
            start.record(&self.stream).map_err(drv("recording an event"))?;
            f()?;
            end.record(&self.stream).map_err(drv("recording an event"))?;
            end.synchronize().map_err(drv("waiting for an event"))?;
            out.push(start.elapsed_ms(&end).map_err(drv("reading an event"))? as f64 * 1e-3);
        }
        Ok(out)
    }

    /// cuBLAS on this stream (for baselines), or why it is unavailable.
    pub fn blas(&self) -> Result<&cudarc::cublas::CudaBlas> {
        // SAFETY: only tries to load libcublas dynamically.
        let present = unsafe { cudarc::cublas::sys::is_culib_present() };
        vendor_handle(&self.blas, "cublas", present, || cudarc::cublas::CudaBlas::new(self.stream.clone()).map_err(|e| e.to_string()))
    }

    /// cuBLASLt on this stream (for baselines with a bias+GELU epilogue).
    pub fn blas_lt(&self) -> Result<&cudarc::cublaslt::CudaBlasLT> {
        // SAFETY: only tries to load libcublasLt dynamically.
        let present = unsafe { cudarc::cublaslt::sys::is_culib_present() };
        vendor_handle(&self.blas_lt, "cublaslt", present, || cudarc::cublaslt::CudaBlasLT::new(self.stream.clone()).map_err(|e| e.to_string()))
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_typed<T: CudaElem>(
        &self,
        desc: &Gemm,
        a: &CudaBuf,
        b: &CudaBuf,
        bias: Option<&CudaBuf>,
        r: Option<&CudaBuf>,
        c: &mut CudaBuf,
        z: Option<&mut CudaBuf>,
    ) -> Result<()> {
        let o = desc.offsets;
        o.remaining(a.len(), b.len(), bias.map(|t| t.len()), r.map(|t| t.len()), c.len())?;
        if z.as_ref().is_some_and(|t| t.len() < o.c) {
            return Err(Error::shape("gemm", "Z offset is beyond its buffer"));
        }
        let bias = bias.map(|t| t.typed::<T>().map(|s| s.slice(o.bias..))).transpose()?;
        let r = r.map(|t| t.typed::<T>().map(|s| s.slice(o.r..))).transpose()?;
        let mut z = match z {
            Some(t) => Some(t.typed_mut::<T>()?.slice_mut(o.c..)),
            None => None,
        };
        crate::ops::gemm::cuda::gemm::<T>(
            self,
            desc,
            &a.typed::<T>()?.slice(o.a..),
            &b.typed::<T>()?.slice(o.b..),
            bias.as_ref(),
            r.as_ref(),
            &mut c.typed_mut::<T>()?.slice_mut(o.c..),
            z.as_mut(),
        )
    }

    fn upload_typed<T: CudaElem>(&self, data: &[f32]) -> Result<CudaSlice<T>> {
        let v: Vec<T> = data.iter().map(|&x| T::from_f32(x)).collect();
        if v.is_empty() {
            return self.zeros(0);
        }
        self.stream.clone_htod(&v).map_err(drv("copying to the device"))
    }

    /// `len` zeros. The driver refuses zero-byte allocations, so an empty buffer owns one
    /// element but reports length 0: downloads and shape checks see what the caller asked for.
    fn zeros<T: CudaElem>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.new_slice(len, Some(0))
    }

    /// `len` elements for a launch that writes them all before any is read (see
    /// `Backend::alloc_uninit`): unset, or NaN under `FFKERN_POISON`.
    pub(crate) fn uninit<T: CudaElem>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.new_slice(len, uninit_fill())
    }

    /// `len` elements, each byte set to `fill`, or left as the pool hands them out (`None`).
    fn new_slice<T: CudaElem>(&self, len: usize, fill: Option<u8>) -> Result<CudaSlice<T>> {
        let bytes = T::DTYPE.bytes(len)?;
        // More than the device holds is a limit of the device, not a driver failure.
        let total = *self.total_mem.get_or_init(|| self.ctx.total_mem().unwrap_or(usize::MAX));
        if bytes > total {
            return Err(Error::Limit(format!("{len} elements of {} ({bytes} bytes) exceed the device's {total} bytes", T::DTYPE)));
        }
        // SAFETY: the memory is unset until the memset below (or, with `fill` None, until a kernel
        // writes it: `Backend::alloc_uninit`'s contract); every bit pattern is a valid f32, f16 or
        // bf16, so reading it early gives unspecified numbers, never undefined behaviour.
        let mut s = unsafe { self.stream.alloc::<T>(len.max(1)) }.map_err(drv("allocating"))?;
        if let Some(byte) = fill {
            let bytes = s.num_bytes();
            let (ptr, _record) = s.device_ptr_mut(&self.stream);
            // SAFETY: sets exactly the `bytes` bytes of the allocation just made, in stream order.
            unsafe { cudarc::driver::result::memset_d8_async(ptr, byte, bytes, self.stream.cu_stream()) }.map_err(drv("filling"))?;
        }
        if len > 0 {
            return Ok(s);
        }
        let ptr = s.leak();
        // SAFETY: `ptr` is the one-element allocation leaked just above; the new slice owns it
        // again (it is freed when that slice drops) and claims none of it.
        Ok(unsafe { self.stream.upgrade_device_ptr(ptr, 0) })
    }

    fn alloc_filled(&self, dtype: DType, len: usize, fill: Option<u8>) -> Result<CudaBuf> {
        Ok(match dtype {
            DType::F32 => CudaBuf::F32(self.new_slice(len, fill)?),
            DType::F16 => CudaBuf::F16(self.new_slice(len, fill)?),
            DType::BF16 => CudaBuf::BF16(self.new_slice(len, fill)?),
        })
    }

    fn download_typed<T: CudaElem>(&self, s: &CudaSlice<T>) -> Result<Vec<f32>> {
        if s.is_empty() {
            return Ok(Vec::new());
        }
        let v = self.stream.clone_dtoh(s).map_err(drv("copying to the host"))?;
        Ok(v.into_iter().map(T::to_f32).collect())
    }
}

/// Dispatches `$body` over the dtype of a set of [`CudaBuf`]s that must all share it, binding
/// each name to its typed slice.
macro_rules! typed {
    ($op:expr, ($($name:ident),+), $body:expr) => {{
        match ($($name,)+) {
            ($(CudaBuf::F32($name),)+) => $body,
            ($(CudaBuf::F16($name),)+) => $body,
            ($(CudaBuf::BF16($name),)+) => $body,
            #[allow(unreachable_patterns)]
            _ => Err(Error::dtype($op, "operands have different dtypes")),
        }
    }};
}

impl Backend for CudaRuntime {
    type Buf = CudaBuf;

    fn name(&self) -> &'static str {
        BACKEND
    }
    fn upload(&self, t: &HostTensor) -> Result<CudaBuf> {
        Ok(match t.dtype {
            DType::F32 => CudaBuf::F32(self.upload_typed(&t.data)?),
            DType::F16 => CudaBuf::F16(self.upload_typed(&t.data)?),
            DType::BF16 => CudaBuf::BF16(self.upload_typed(&t.data)?),
        })
    }
    fn alloc(&self, dtype: DType, len: usize) -> Result<CudaBuf> {
        self.alloc_filled(dtype, len, Some(0))
    }
    fn alloc_uninit(&self, dtype: DType, len: usize) -> Result<CudaBuf> {
        self.alloc_filled(dtype, len, uninit_fill())
    }
    fn download(&self, buf: &CudaBuf) -> Result<HostTensor> {
        let data = match buf {
            CudaBuf::F32(s) => self.download_typed(s)?,
            CudaBuf::F16(s) => self.download_typed(s)?,
            CudaBuf::BF16(s) => self.download_typed(s)?,
        };
        Ok(HostTensor { dtype: buf.dtype(), shape: vec![data.len()], data })
    }
    fn dtype_of(&self, buf: &CudaBuf) -> DType {
        buf.dtype()
    }
    fn len_of(&self, buf: &CudaBuf) -> usize {
        buf.len()
    }
    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv("synchronising the stream"))
    }
    fn copy(&self, src: &CudaBuf, dst: &mut CudaBuf) -> Result<()> {
        macro_rules! cp {
            ($s:expr, $d:expr) => {{
                let n = $s.len().min($d.len());
                self.stream.memcpy_dtod(&$s.slice(..n), &mut $d.slice_mut(..n)).map_err(drv("device copy"))
            }};
        }
        match (src, dst) {
            (CudaBuf::F32(s), CudaBuf::F32(d)) => cp!(s, d),
            (CudaBuf::F16(s), CudaBuf::F16(d)) => cp!(s, d),
            (CudaBuf::BF16(s), CudaBuf::BF16(d)) => cp!(s, d),
            _ => Err(Error::dtype("copy", "source and destination dtypes differ")),
        }
    }
    fn time_runs(&self, reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<Vec<f64>> {
        CudaRuntime::time_runs(self, reps, f)
    }

    fn gemm(
        &self,
        desc: &Gemm,
        a: &CudaBuf,
        b: &CudaBuf,
        bias: Option<&CudaBuf>,
        r: Option<&CudaBuf>,
        c: &mut CudaBuf,
        z: Option<&mut CudaBuf>,
    ) -> Result<()> {
        let mut dts = vec![("A", a.dtype()), ("B", b.dtype()), ("C", c.dtype())];
        bias.iter().for_each(|t| dts.push(("bias", t.dtype())));
        r.iter().for_each(|t| dts.push(("R", t.dtype())));
        z.iter().for_each(|t| dts.push(("Z", t.dtype())));
        same_dtype("gemm", &dts)?;
        match c.dtype() {
            DType::F32 => self.gemm_typed::<f32>(desc, a, b, bias, r, c, z),
            DType::F16 => self.gemm_typed::<f16>(desc, a, b, bias, r, c, z),
            DType::BF16 => self.gemm_typed::<bf16>(desc, a, b, bias, r, c, z),
        }
    }

    fn act_grad(&self, d: &ActGrad, dc: &CudaBuf, z: &CudaBuf, out: &mut CudaBuf) -> Result<()> {
        d.check_lens(dc.len(), z.len(), out.len())?;
        typed!("act_grad", (dc, z, out), crate::ops::gemm::cuda::act_grad(self, d, dc, z, out))
    }

    fn col_sum(&self, rows: usize, cols: usize, x: &CudaBuf, out: &mut CudaBuf) -> Result<()> {
        crate::ops::gemm::check_col_sum(rows, cols, x.len(), out.len())?;
        typed!("col_sum", (x, out), crate::ops::gemm::cuda::col_sum(self, rows, cols, x, out))
    }

    fn optim_step(&self, p: &OptimParams, param: &mut CudaBuf, grad: &CudaBuf, state: &mut [CudaBuf]) -> Result<()> {
        let CudaBuf::F32(param) = param else {
            return Err(Error::dtype("optim", "parameters are f32 master weights"));
        };
        let mut views = Vec::with_capacity(2);
        for s in state.iter_mut() {
            match s {
                CudaBuf::F32(s) => views.push(s.as_view_mut()),
                _ => return Err(Error::dtype("optim", "state arenas are f32")),
            }
        }
        let mut it = views.iter_mut();
        let (m, v) = (it.next(), it.next());
        let mut pv = param.as_view_mut();
        match grad {
            CudaBuf::F32(g) => crate::ops::optim::cuda::step(self, p, &g.as_view(), &mut pv, m, v),
            CudaBuf::F16(g) => crate::ops::optim::cuda::step(self, p, &g.as_view(), &mut pv, m, v),
            CudaBuf::BF16(g) => crate::ops::optim::cuda::step(self, p, &g.as_view(), &mut pv, m, v),
        }
    }

    fn philox_normal(&self, n: usize, seed: u64, t: u32, out: &mut CudaBuf) -> Result<()> {
        match out {
            CudaBuf::F32(o) if o.len() >= n => crate::ops::optim::cuda::philox(self, n, seed, t, false, &mut o.as_view_mut()),
            _ => Err(Error::shape("philox_normal", format!("output must be f32 with {n} elements"))),
        }
    }

    fn philox_words(&self, blocks: usize, seed: u64, t: u32, out: &mut CudaBuf) -> Result<()> {
        match out {
            CudaBuf::F32(o) if o.len() >= 4 * blocks => crate::ops::optim::cuda::philox(self, blocks, seed, t, true, &mut o.as_view_mut()),
            _ => Err(Error::shape("philox_words", format!("output must be f32 with {} elements", 4 * blocks))),
        }
    }

    fn batchnorm(&self, p: &BnParams, x: &CudaBuf, affine: &CudaBuf, running_mean: &mut CudaBuf, running_var: &mut CudaBuf, stats: &mut CudaBuf, y: &mut CudaBuf) -> Result<()> {
        let affine = affine.typed::<f32>()?.as_view();
        let mut rm = running_mean.typed_mut::<f32>()?.as_view_mut();
        let mut rv = running_var.typed_mut::<f32>()?.as_view_mut();
        let mut st = stats.typed_mut::<f32>()?.as_view_mut();
        let mut scratch = self.alloc_uninit(DType::F32, if p.train != 0 { p.partials_len() } else { 1 })?;
        let mut part = scratch.typed_mut::<f32>()?.as_view_mut();
        #[allow(clippy::too_many_arguments)]
        fn go<T: CudaElem>(rt: &CudaRuntime, p: &BnParams, x: &CudaBuf, a: &CudaView<f32>, rm: &mut CudaViewMut<f32>, rv: &mut CudaViewMut<f32>, st: &mut CudaViewMut<f32>, part: &mut CudaViewMut<f32>, y: &mut CudaBuf) -> Result<()> {
            crate::ops::ffn::cuda::batchnorm::<T>(rt, p, &x.typed::<T>()?.as_view(), a, rm, rv, st, part, &mut y.typed_mut::<T>()?.as_view_mut())
        }
        match x.dtype() {
            DType::F32 => go::<f32>(self, p, x, &affine, &mut rm, &mut rv, &mut st, &mut part, y),
            DType::F16 => go::<f16>(self, p, x, &affine, &mut rm, &mut rv, &mut st, &mut part, y),
            DType::BF16 => go::<bf16>(self, p, x, &affine, &mut rm, &mut rv, &mut st, &mut part, y),
        }
    }

    fn batchnorm_backward(&self, p: &BnParams, x: &CudaBuf, dy: &CudaBuf, affine: &CudaBuf, stats: &mut CudaBuf, extra: Option<&CudaBuf>, dx: &mut CudaBuf) -> Result<()> {
        let affine = affine.typed::<f32>()?.as_view();
        let mut st = stats.typed_mut::<f32>()?.as_view_mut();
        let mut scratch = self.alloc_uninit(DType::F32, p.partials_len())?;
        let mut part = scratch.typed_mut::<f32>()?.as_view_mut();
        #[allow(clippy::too_many_arguments)]
        fn go<T: CudaElem>(rt: &CudaRuntime, p: &BnParams, x: &CudaBuf, dy: &CudaBuf, a: &CudaView<f32>, st: &mut CudaViewMut<f32>, part: &mut CudaViewMut<f32>, extra: Option<&CudaBuf>, dx: &mut CudaBuf) -> Result<()> {
            let extra = extra.map(|e| e.typed::<T>().map(|s| s.as_view())).transpose()?;
            crate::ops::ffn::cuda::batchnorm_backward::<T>(rt, p, &x.typed::<T>()?.as_view(), &dy.typed::<T>()?.as_view(), a, st, part, extra.as_ref(), &mut dx.typed_mut::<T>()?.as_view_mut())
        }
        match x.dtype() {
            DType::F32 => go::<f32>(self, p, x, dy, &affine, &mut st, &mut part, extra, dx),
            DType::F16 => go::<f16>(self, p, x, dy, &affine, &mut st, &mut part, extra, dx),
            DType::BF16 => go::<bf16>(self, p, x, dy, &affine, &mut st, &mut part, extra, dx),
        }
    }

    fn linattn_snapshot_dtype(&self, p: &LinAttnParams, dtype: DType, backward: bool) -> Result<DType> {
        Ok(if crate::ops::linattn::cuda::snapshot16(p, dtype, backward)? { dtype } else { DType::F32 })
    }

    fn linattn_recurrent(&self, p: &LinAttnParams, q: &CudaBuf, k: &CudaBuf, v: &CudaBuf, starts: &[u32], state: &mut CudaBuf, z: &mut CudaBuf, o: &mut CudaBuf) -> Result<()> {
        if state.dtype() != DType::F32 {
            // The chunked output from 16-bit per-chunk start states (the 16-bit sweep's).
            if p.varlen != 2 || p.aux != 0 {
                return Err(Error::dtype(LINATTN, "the state must be f32"));
            }
            let starts = crate::ops::linattn::cuda::upload_words(self, starts, "the chunk bounds")?;
            let z = z.typed::<f32>()?.as_view();
            #[allow(clippy::too_many_arguments)]
            fn go<T: CudaElem, S: CudaElem>(rt: &CudaRuntime, p: &LinAttnParams, q: &CudaBuf, k: &CudaBuf, v: &CudaBuf, starts: &CudaSlice<u32>, hs: &CudaBuf, z: &CudaView<f32>, o: &mut CudaBuf) -> Result<()> {
                let (q, k, v) = (q.typed::<T>()?.as_view(), k.typed::<T>()?.as_view(), v.typed::<T>()?.as_view());
                crate::ops::linattn::cuda::chunk_output::<T, S>(rt, p, &q, &k, &v, starts, &hs.typed::<S>()?.as_view(), z, &mut o.typed_mut::<T>()?.as_view_mut())
            }
            return with_states!(q.dtype(), state.dtype(), go(self, p, q, k, v, &starts, state, &z, o));
        }
        let mut st = state.typed_mut::<f32>()?.as_view_mut();
        let mut zv = z.typed_mut::<f32>()?.as_view_mut();
        #[allow(clippy::too_many_arguments)]
        fn go<T: CudaElem>(rt: &CudaRuntime, p: &LinAttnParams, q: &CudaBuf, k: &CudaBuf, v: &CudaBuf, starts: &[u32], st: &mut CudaViewMut<f32>, z: &mut CudaViewMut<f32>, o: &mut CudaBuf) -> Result<()> {
            crate::ops::linattn::cuda::recurrent::<T>(rt, p, &q.typed::<T>()?.as_view(), &k.typed::<T>()?.as_view(), &v.typed::<T>()?.as_view(), starts, st, z, &mut o.typed_mut::<T>()?.as_view_mut())
        }
        match q.dtype() {
            DType::F32 => go::<f32>(self, p, q, k, v, starts, &mut st, &mut zv, o),
            DType::F16 => go::<f16>(self, p, q, k, v, starts, &mut st, &mut zv, o),
            DType::BF16 => go::<bf16>(self, p, q, k, v, starts, &mut st, &mut zv, o),
        }
    }

    fn linattn_chunk_scan(&self, p: &LinAttnParams, seq_chunk0: &[u32], state: &mut CudaBuf, z: &mut CudaBuf, hs: &mut CudaBuf, zs: &mut CudaBuf) -> Result<()> {
        crate::ops::linattn::cuda::chunk_scan(
            self,
            p,
            seq_chunk0,
            &mut state.typed_mut::<f32>()?.as_view_mut(),
            &mut z.typed_mut::<f32>()?.as_view_mut(),
            &mut hs.typed_mut::<f32>()?.as_view_mut(),
            &mut zs.typed_mut::<f32>()?.as_view_mut(),
        )
    }

    fn gemm_prefers_contiguous(&self) -> bool {
        true
    }

    fn memory_use(&self) -> Option<crate::MemoryUse> {
        use cudarc::driver::sys::CUmemPool_attribute::{CU_MEMPOOL_ATTR_USED_MEM_CURRENT, CU_MEMPOOL_ATTR_USED_MEM_HIGH};
        let pool = alloc_pool(&self.ctx)?;
        Some(crate::MemoryUse { current: pool_attr(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?, peak: pool_attr(pool, CU_MEMPOOL_ATTR_USED_MEM_HIGH)? })
    }

    fn reset_peak_memory(&self) {
        // The high watermark set to 0 (the only value the driver accepts) restarts at the bytes
        // in use.
        if let Some(pool) = alloc_pool(&self.ctx) {
            set_pool_attr(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0);
        }
    }

    fn linattn_chunk_fused(&self, p: &LinAttnParams, table: &[u32], q: &CudaBuf, k: &CudaBuf, v: &CudaBuf, state: &mut CudaBuf, z: &mut CudaBuf, o: &mut CudaBuf) -> Result<bool> {
        let (mut st, mut zv) = (state.typed_mut::<f32>()?.as_view_mut(), z.typed_mut::<f32>()?.as_view_mut());
        use crate::ops::linattn::cuda::chunk_fused;
        typed!(LINATTN, (q, k, v, o), chunk_fused(self, p, table, &q.as_view(), &k.as_view(), &v.as_view(), &mut st, &mut zv, &mut o.as_view_mut()))
    }

    fn linattn_chunk_backward_fused(&self, p: &LinAttnParams, table: &[u32], x: [&CudaBuf; 5], s0: &CudaBuf, _z0: &CudaBuf, d: [&mut CudaBuf; 2], out: [&mut CudaBuf; 3]) -> Result<bool> {
        let s0 = s0.typed::<f32>()?.as_view();
        let [ds, dz] = d;
        let (mut ds, dz) = (ds.typed_mut::<f32>()?.as_view_mut(), dz.typed::<f32>()?.as_view());
        let ([q, k, v, _, d_o], [dq, dk, dv]) = (x, out);
        use crate::ops::linattn::cuda::chunk_fused_grads;
        typed!(
            LINATTN,
            (q, k, v, d_o, dq, dk, dv),
            chunk_fused_grads(self, p, table, [&q.as_view(), &k.as_view(), &v.as_view(), &d_o.as_view()], &s0, (&mut ds, &dz), [&mut dq.as_view_mut(), &mut dk.as_view_mut(), &mut dv.as_view_mut()])
        )
    }

    fn linattn_chunk_states(&self, p: &LinAttnParams, table: &[u32], k: &CudaBuf, v: &CudaBuf, state: &mut CudaBuf, z: &mut CudaBuf, hs: &mut CudaBuf, zs: &mut CudaBuf) -> Result<()> {
        let (mut st, mut zv) = (state.typed_mut::<f32>()?.as_view_mut(), z.typed_mut::<f32>()?.as_view_mut());
        let mut zz = zs.typed_mut::<f32>()?.as_view_mut();
        #[allow(clippy::too_many_arguments)]
        fn go<T: CudaElem, S: CudaElem>(rt: &CudaRuntime, p: &LinAttnParams, table: &[u32], k: &CudaBuf, v: &CudaBuf, st: &mut CudaViewMut<f32>, z: &mut CudaViewMut<f32>, hs: &mut CudaBuf, zs: &mut CudaViewMut<f32>) -> Result<()> {
            crate::ops::linattn::cuda::chunk_states::<T, S>(rt, p, table, &k.typed::<T>()?.as_view(), &v.typed::<T>()?.as_view(), st, z, &mut hs.typed_mut::<S>()?.as_view_mut(), zs)
        }
        with_states!(k.dtype(), hs.dtype(), go(self, p, table, k, v, &mut st, &mut zv, hs, &mut zz))
    }

    fn linattn_backward(&self, p: &LinAttnParams, starts: &[u32], x: [&CudaBuf; 5], s0: &CudaBuf, z0: &CudaBuf, d_final: [Option<&CudaBuf>; 2], out: [&mut CudaBuf; 5]) -> Result<()> {
        #[allow(clippy::too_many_arguments)]
        fn go<T: CudaElem>(rt: &CudaRuntime, p: &LinAttnParams, starts: &[u32], x: [&CudaBuf; 5], s0: &CudaBuf, z0: &CudaBuf, d_final: [Option<&CudaBuf>; 2], out: [&mut CudaBuf; 5]) -> Result<()> {
            let views = [x[0].typed::<T>()?.as_view(), x[1].typed::<T>()?.as_view(), x[2].typed::<T>()?.as_view(), x[3].typed::<T>()?.as_view(), x[4].typed::<T>()?.as_view()];
            let ds = d_final[0].map(|b| b.typed::<f32>().map(|s| s.as_view())).transpose()?;
            let dz = d_final[1].map(|b| b.typed::<f32>().map(|s| s.as_view())).transpose()?;
            let [dq, dk, dv, ds0, dz0] = out;
            let (mut dq, mut dk, mut dv) = (dq.typed_mut::<T>()?.as_view_mut(), dk.typed_mut::<T>()?.as_view_mut(), dv.typed_mut::<T>()?.as_view_mut());
            let [a, b, c, d, e] = &views;
            crate::ops::linattn::cuda::backward::<T>(
                rt,
                p,
                starts,
                [a, b, c, d, e],
                &s0.typed::<f32>()?.as_view(),
                &z0.typed::<f32>()?.as_view(),
                [ds.as_ref(), dz.as_ref()],
                [&mut dq, &mut dk, &mut dv],
                [&mut ds0.typed_mut::<f32>()?.as_view_mut(), &mut dz0.typed_mut::<f32>()?.as_view_mut()],
            )
        }
        match x[0].dtype() {
            DType::F32 => go::<f32>(self, p, starts, x, s0, z0, d_final, out),
            DType::F16 => go::<f16>(self, p, starts, x, s0, z0, d_final, out),
            DType::BF16 => go::<bf16>(self, p, starts, x, s0, z0, d_final, out),
        }
    }

    fn linattn_chunk_dstate(&self, p: &LinAttnParams, bounds: &[u32], x: [&CudaBuf; 5], start: [&CudaBuf; 2], scratch: &mut CudaBuf, own: Option<[&mut CudaBuf; 2]>) -> Result<()> {
        let (dd_off, dd_len) = chunk_dendd(p, bounds);
        let mut own = match own {
            Some([g, hz]) => Some([g.typed_mut::<f32>()?.as_view_mut(), hz.typed_mut::<f32>()?.as_view_mut()]),
            None => None,
        };
        let mut dendd = scratch.typed_mut::<f32>()?.slice_mut(dd_off..dd_off + dd_len);
        let z = start[1].typed::<f32>()?.as_view();
        fn go<T: CudaElem>(rt: &CudaRuntime, p: &LinAttnParams, bounds: &[u32], x: [&CudaBuf; 5], z: &CudaView<f32>, dendd: &mut CudaViewMut<f32>, own: Option<[&mut CudaViewMut<f32>; 2]>) -> Result<()> {
            let v = [x[0].typed::<T>()?.as_view(), x[1].typed::<T>()?.as_view(), x[2].typed::<T>()?.as_view(), x[3].typed::<T>()?.as_view(), x[4].typed::<T>()?.as_view()];
            crate::ops::linattn::cuda::chunk_dstate::<T>(rt, p, bounds, [&v[0], &v[1], &v[2], &v[3], &v[4]], z, dendd, own)
        }
        let own = own.as_mut().map(|[g, hz]| [g, hz]);
        match x[0].dtype() {
            DType::F32 => go::<f32>(self, p, bounds, x, &z, &mut dendd, own),
            DType::F16 => go::<f16>(self, p, bounds, x, &z, &mut dendd, own),
            DType::BF16 => go::<bf16>(self, p, bounds, x, &z, &mut dendd, own),
        }
    }

    fn linattn_chunk_grad_states(&self, p: &LinAttnParams, table: &[u32], x: [&CudaBuf; 5], _start: [&CudaBuf; 2], scratch: &CudaBuf, d: [&mut CudaBuf; 2], g: [&mut CudaBuf; 2]) -> Result<()> {
        let c = table[0] as usize;
        let pc = LinAttnParams { batch: c as u32, ..*p };
        let (dd_off, dd_len) = chunk_dendd(&pc, &table[1..]);
        let dendd = scratch.typed::<f32>()?.slice(dd_off..dd_off + dd_len);
        let ([ds, dz], [gs, gzs]) = (d, g);
        let (mut ds, mut dz) = (ds.typed_mut::<f32>()?.as_view_mut(), dz.typed_mut::<f32>()?.as_view_mut());
        let mut gzs = gzs.typed_mut::<f32>()?.as_view_mut();
        #[allow(clippy::too_many_arguments)]
        fn go<T: CudaElem, S: CudaElem>(rt: &CudaRuntime, p: &LinAttnParams, table: &[u32], x: [&CudaBuf; 5], dendd: &CudaView<f32>, d: [&mut CudaViewMut<f32>; 2], gs: &mut CudaBuf, gzs: &mut CudaViewMut<f32>) -> Result<()> {
            crate::ops::linattn::cuda::chunk_grad_states::<T, S>(rt, p, table, &x[0].typed::<T>()?.as_view(), &x[4].typed::<T>()?.as_view(), dendd, d, (&mut gs.typed_mut::<S>()?.as_view_mut(), gzs))
        }
        let gs_dtype = gs.dtype();
        with_states!(x[0].dtype(), gs_dtype, go(self, p, table, x, &dendd, [&mut ds, &mut dz], gs, &mut gzs))
    }

    fn linattn_chunk_grads(&self, p: &LinAttnParams, bounds: &[u32], x: [&CudaBuf; 5], start: [&CudaBuf; 2], end: [&CudaBuf; 2], scratch: &mut CudaBuf, out: [&mut CudaBuf; 3]) -> Result<()> {
        let (dd_off, dd_len) = chunk_dendd(p, bounds);
        let dendd = scratch.typed::<f32>()?.slice(dd_off..dd_off + dd_len);
        let (start_z, end_z) = (start[1].typed::<f32>()?.as_view(), end[1].typed::<f32>()?.as_view());
        if start[0].dtype() != end[0].dtype() {
            return Err(Error::dtype(LINATTN, "the start states and end gradients differ in dtype"));
        }
        #[allow(clippy::too_many_arguments)]
        fn go<T: CudaElem, S: CudaElem>(rt: &CudaRuntime, p: &LinAttnParams, bounds: &[u32], x: [&CudaBuf; 5], start: (&CudaBuf, &CudaView<f32>), end: (&CudaBuf, &CudaView<f32>), dendd: &CudaView<f32>, out: [&mut CudaBuf; 3]) -> Result<()> {
            let v = [x[0].typed::<T>()?.as_view(), x[1].typed::<T>()?.as_view(), x[2].typed::<T>()?.as_view(), x[3].typed::<T>()?.as_view(), x[4].typed::<T>()?.as_view()];
            let (s, e) = (start.0.typed::<S>()?.as_view(), end.0.typed::<S>()?.as_view());
            let [dq, dk, dv] = out;
            let (mut dq, mut dk, mut dv) = (dq.typed_mut::<T>()?.as_view_mut(), dk.typed_mut::<T>()?.as_view_mut(), dv.typed_mut::<T>()?.as_view_mut());
            crate::ops::linattn::cuda::chunk_grads::<T, S>(rt, p, bounds, [&v[0], &v[1], &v[2], &v[3], &v[4]], (&s, start.1), (&e, end.1), dendd, [&mut dq, &mut dk, &mut dv])
        }
        with_states!(x[0].dtype(), start[0].dtype(), go(self, p, bounds, x, (start[0], &start_z), (end[0], &end_z), &dendd, out))
    }

    fn graph_op(&self, kind: GraphKernel, p: &GraphParams, g: Option<&DeviceGraph<CudaBuf>>, a: &GraphArgs<CudaBuf>, out: &mut CudaBuf, arg: Option<&mut CudaBuf>) -> Result<()> {
        use crate::ops::graph::cuda::{launch, CudaGraphArgs};
        fn go<T: CudaElem>(rt: &CudaRuntime, kind: GraphKernel, p: &GraphParams, g: Option<&DeviceGraph<CudaBuf>>, a: &GraphArgs<CudaBuf>, out: &mut CudaBuf, arg: Option<&mut CudaBuf>) -> Result<()> {
            fn view<E: CudaElem>(b: Option<&CudaBuf>) -> Result<Option<CudaView<'_, E>>> {
                b.map(|b| b.typed::<E>().map(|s| s.as_view())).transpose()
            }
            let ca = CudaGraphArgs { idx: view::<f32>(g.map(|g| &g.words))?, x: view::<T>(a.x)?, y: view::<T>(a.y)?, w: view::<f32>(a.w)?, v: view::<f32>(a.v)? };
            let mut arg = match arg {
                Some(b) => Some(b.typed_mut::<f32>()?.as_view_mut()),
                None => None,
            };
            if matches!(kind, GraphKernel::Sddmm | GraphKernel::EdgeDot | GraphKernel::Softmax | GraphKernel::SoftmaxBackward | GraphKernel::LayerNormParams | GraphKernel::ToF32 | GraphKernel::GateMean) {
                launch::<T>(rt, kind, p, &ca, None, Some(&mut out.typed_mut::<f32>()?.as_view_mut()), arg.as_mut())
            } else {
                launch::<T>(rt, kind, p, &ca, Some(&mut out.typed_mut::<T>()?.as_view_mut()), None, arg.as_mut())
            }
        }
        match a.x.map_or(out.dtype(), |x| x.dtype()) {
            DType::F32 => go::<f32>(self, kind, p, g, a, out, arg),
            DType::F16 => go::<f16>(self, kind, p, g, a, out, arg),
            DType::BF16 => go::<bf16>(self, kind, p, g, a, out, arg),
        }
    }
}

/// Where the chunked backward's den, dd per row and head lie in its scratch
/// (`ops::linattn::chunk_scratch_len`): after the 2C + 1 bounds, R·H·2 of them.
fn chunk_dendd(p: &LinAttnParams, bounds: &[u32]) -> (usize, usize) {
    let c = p.batch as usize;
    (2 * c + 1, 2 * bounds[c] as usize * p.heads as usize)
}
