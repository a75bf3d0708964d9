//! The wgpu runtime: adapter choice, device with the adapter's real limits, cached pipelines and
//! bind-group layouts, a reusable staging buffer, launches, and timing (timestamp queries where
//! the adapter has them, otherwise wall clock around a waited submission).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wgpu::util::DeviceExt;

use crate::device::{same_dtype, Backend};
use crate::ops::gemm::{ActGrad, Gemm};
use crate::ops::ffn::BnParams;
use crate::ops::graph::{DeviceGraph, GraphArgs, GraphKernel, GraphParams};
use crate::ops::linattn::LinAttnParams;
use crate::ops::optim::OptimParams;
use crate::{DType, Error, HostTensor, Result};

const BACKEND: &str = "wgpu";

/// How to pick the adapter. Environment: `FFKERN_WGPU_ADAPTER` (a substring of the adapter name,
/// e.g. `llvmpipe` for lavapipe) and `FFKERN_WGPU_BACKEND` (`vulkan`, `metal`, `dx12`, `gl`).
#[derive(Clone, Debug, Default)]
pub struct WgpuOptions {
    /// Case-insensitive substring of the adapter name to require.
    pub adapter: Option<String>,
    /// Restrict to one graphics API.
    pub backends: Option<wgpu::Backends>,
    /// Do not request `SHADER_F16` even where the adapter has it (ffkern's f16 path does not
    /// need it: f16 is stored packed and widened in the shader).
    pub without_shader_f16: bool,
}

impl WgpuOptions {
    /// `FFKERN_WGPU_ADAPTER` and `FFKERN_WGPU_BACKEND` as options.
    pub fn from_env() -> Result<Self> {
        let mut o = WgpuOptions { adapter: std::env::var("FFKERN_WGPU_ADAPTER").ok().filter(|s| !s.is_empty()), ..Default::default() };
        if let Ok(b) = std::env::var("FFKERN_WGPU_BACKEND") {
            o.backends = Some(match b.to_ascii_lowercase().as_str() {
                "vulkan" => wgpu::Backends::VULKAN,
                "metal" => wgpu::Backends::METAL,
                "dx12" => wgpu::Backends::DX12,
                "gl" => wgpu::Backends::GL,
                other => return Err(Error::Invalid(format!("FFKERN_WGPU_BACKEND={other}: expected vulkan, metal, dx12 or gl"))),
            });
        }
        Ok(o)
    }
}

/// Live and peak bytes of the storage buffers a context created (see [`Backend::memory_use`]).
#[derive(Default)]
struct Meter {
    live: AtomicU64,
    peak: AtomicU64,
}

/// A storage buffer that its context's meter counts from creation to drop; it dereferences to
/// the `wgpu::Buffer`.
pub struct MeteredBuffer {
    buffer: wgpu::Buffer,
    meter: Arc<Meter>,
}

impl MeteredBuffer {
    fn new(buffer: wgpu::Buffer, meter: &Arc<Meter>) -> Self {
        let now = meter.live.fetch_add(buffer.size(), Ordering::Relaxed) + buffer.size();
        meter.peak.fetch_max(now, Ordering::Relaxed);
        MeteredBuffer { buffer, meter: meter.clone() }
    }
}

impl std::ops::Deref for MeteredBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for MeteredBuffer {
    fn drop(&mut self) {
        self.meter.live.fetch_sub(self.buffer.size(), Ordering::Relaxed);
    }
}

/// An owned buffer on a wgpu device: `len` elements of `dtype`, stored as u32 words.
pub struct WgpuBuffer {
    /// The metered storage buffer.
    pub buffer: MeteredBuffer,
    /// The element dtype.
    pub dtype: DType,
    /// Elements (the buffer is rounded up to whole words).
    pub len: usize,
}

/// A storage binding: a caller's buffer plus an element offset into it (any offset; the kernels
/// index by element, so a column slice of a wider matrix needs no copy).
#[derive(Clone, Copy)]
pub struct BufferRef<'a> {
    /// The caller's buffer.
    pub buffer: &'a wgpu::Buffer,
    /// The element offset of the operand's first element.
    pub offset: u64,
}

impl<'a> BufferRef<'a> {
    /// A binding of `buffer` from element `offset` on.
    pub fn new(buffer: &'a wgpu::Buffer, offset: u64) -> Self {
        BufferRef { buffer, offset }
    }
    /// Elements of `dtype` available from the offset to the end of the buffer.
    pub fn available(&self, dtype: DType) -> usize {
        ((self.buffer.size() / dtype.size() as u64).saturating_sub(self.offset)) as usize
    }
}

struct Timing {
    queries: wgpu::QuerySet,
    capacity: u32,
    next: u32,
}

/// The bind-group and pipeline layouts of one family and binding count.
type Layouts = (wgpu::BindGroupLayout, wgpu::PipelineLayout);
/// A cached pipeline: family, entry point, dtype.
type PipelineKey = (&'static str, &'static str, DType);

/// A wgpu device and queue with ffkern's caches.
pub struct WgpuContext {
    /// The device every buffer and pipeline belongs to.
    pub device: wgpu::Device,
    /// The queue every pass is submitted to.
    pub queue: wgpu::Queue,
    /// The adapter's description.
    pub info: wgpu::AdapterInfo,
    layouts: Mutex<HashMap<(&'static str, usize), Arc<Layouts>>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    staging: Mutex<Option<wgpu::Buffer>>,
    dummy_ro: wgpu::Buffer,
    dummy_rw: wgpu::Buffer,
    timing: Mutex<Option<Timing>>,
    /// The storage buffers created through this context (tensors, workspaces, index tables).
    meter: Arc<Meter>,
}

/// A WGSL family shader assembled for one dtype: `_dtype_<dtype>.wgsl + _common.wgsl +
/// [_<prefix>.wgsl] + <family>.wgsl`, the snippet shared by the families whose names start with
/// its prefix (build.rs validates exactly this assembly).
pub fn shader_source(family: &str, dtype: DType) -> Result<String> {
    let dt = match dtype {
        DType::F32 => include_str!("../../shaders/_dtype_f32.wgsl"),
        DType::F16 => include_str!("../../shaders/_dtype_f16.wgsl"),
        DType::BF16 => include_str!("../../shaders/_dtype_bf16.wgsl"),
    };
    let body = match family {
        "gemm" => include_str!("../../shaders/gemm.wgsl"),
        "optim" => include_str!("../../shaders/optim.wgsl"),
        "ffn" => include_str!("../../shaders/ffn.wgsl"),
        "linattn" => include_str!("../../shaders/linattn.wgsl"),
        "linattn_bwd" => include_str!("../../shaders/linattn_bwd.wgsl"),
        "graph" => include_str!("../../shaders/graph.wgsl"),
        "graph_sg" => include_str!("../../shaders/graph_sg.wgsl"),
        "copy" => include_str!("../../shaders/copy.wgsl"),
        other => return Err(Error::Unsupported(format!("no WGSL family '{other}'"))),
    };
    let snippet = match family {
        "linattn" | "linattn_bwd" => include_str!("../../shaders/_linattn.wgsl"),
        "graph" | "graph_sg" => include_str!("../../shaders/_graph.wgsl"),
        _ => "",
    };
    Ok(format!("{dt}\n{}\n{snippet}\n{body}", include_str!("../../shaders/_common.wgsl")))
}

/// A launcher's size checks on the caller's buffers, `(name, buffer, elements, dtype)` each: a
/// shader's accesses past a binding's end are clamped or dropped, so a buffer shorter than the
/// launch reaches is a shape error instead of a silently wrong result.
pub(crate) fn check_sizes(op: &'static str, bufs: &[(&str, &wgpu::Buffer, usize, DType)]) -> Result<()> {
    match bufs.iter().find(|(_, b, n, dt)| b.size() < (n * dt.size()) as u64) {
        Some((name, b, n, dt)) => Err(Error::shape(op, format!("{name} holds {} bytes, the launch reaches {n} {dt} elements", b.size()))),
        None => Ok(()),
    }
}

/// The loop iterations one shader invocation may plan on under llvmpipe. Mesa's llvmpipe (the
/// driver behind lavapipe) ends every loop of an invocation, silently, once its loops together have
/// run 65,535 iterations (gallivm's loop limiter); the margin covers the loops a launch does not
/// count. Loops with a constant trip count are unrolled there and do not count.
pub const LLVMPIPE_LOOP_BUDGET: u64 = 60_000;

impl WgpuContext {
    /// Refuses, on llvmpipe, a launch whose invocations would loop `iterations` times in all (see
    /// [`LLVMPIPE_LOOP_BUDGET`]): an unsupported error saying `what` and what runs it instead
    /// (`instead`), where the driver would return results cut short. Other adapters have no such
    /// limit.
    pub fn within_loop_budget(&self, iterations: u64, what: &str, instead: &str) -> Result<()> {
        if iterations > LLVMPIPE_LOOP_BUDGET && self.info.name.contains("llvmpipe") {
            return Err(Error::Unsupported(format!(
                "{what} on llvmpipe: it would run {iterations} loop iterations in one shader invocation, and llvmpipe ends them all after 65,535 (planned budget {LLVMPIPE_LOOP_BUDGET}); {instead}"
            )));
        }
        Ok(())
    }

    /// The best adapter (a discrete or integrated GPU before a CPU adapter such as lavapipe),
    /// honouring `FFKERN_WGPU_ADAPTER` / `FFKERN_WGPU_BACKEND`.
    pub fn new() -> Result<Self> {
        Self::with_options(&WgpuOptions::from_env()?)
    }

    /// The first adapter that `opts` allow, best first (see [`WgpuContext::new`]).
    pub fn with_options(opts: &WgpuOptions) -> Result<Self> {
        super::grid_limit()?;
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = opts.backends.unwrap_or(wgpu::Backends::PRIMARY);
        let instance = wgpu::Instance::new(desc);
        let adapters = pollster::block_on(instance.enumerate_adapters(desc_backends(opts)));
        let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        let mut candidates: Vec<wgpu::Adapter> = adapters
            .into_iter()
            .filter(|a| match &opts.adapter {
                Some(s) => a.get_info().name.to_lowercase().contains(&s.to_lowercase()),
                None => true,
            })
            .collect();
        candidates.sort_by_key(rank);
        let adapter = candidates.into_iter().next().ok_or_else(|| Error::BackendUnavailable {
            backend: BACKEND,
            reason: match &opts.adapter {
                Some(s) => format!("no adapter whose name contains '{s}'"),
                None => "no adapter found (on a machine without a GPU: apt-get install mesa-vulkan-drivers for lavapipe)".into(),
            },
        })?;
        let mut features = adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP);
        if crate::runtime::WGPU_SUBGROUPS.current()? == "off" {
            features.remove(wgpu::Features::SUBGROUP);
        }
        if opts.without_shader_f16 {
            features.remove(wgpu::Features::SHADER_F16);
        }
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("ffkern"),
            required_features: features,
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| Error::driver("wgpu: requesting the device", e))?;
        Ok(Self::from_device(device, queue, adapter.get_info()))
    }

    /// Wraps a device and queue the caller already has (a framework's own).
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        device.on_uncaptured_error(Arc::new(|e| eprintln!("ffkern: uncaptured wgpu error: {e}")));
        let mk = |usage, label| {
            device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size: 16, usage, mapped_at_creation: false })
        };
        let dummy_ro = mk(wgpu::BufferUsages::STORAGE, "ffkern dummy ro");
        let dummy_rw = mk(wgpu::BufferUsages::STORAGE, "ffkern dummy rw");
        WgpuContext {
            device,
            queue,
            info,
            layouts: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            staging: Mutex::new(None),
            dummy_ro,
            dummy_rw,
            timing: Mutex::new(None),
            meter: Arc::default(),
        }
    }

    /// The adapter's name, graphics API, type and driver, for reports.
    pub fn describe(&self) -> String {
        format!("{} ({:?}, {:?}, driver {} {})", self.info.name, self.info.backend, self.info.device_type, self.info.driver, self.info.driver_info)
    }

    /// The adapter's smallest subgroup size where the device has subgroup operations and
    /// `FFKERN_WGPU_SUBGROUPS` allows them (kernels with a subgroup form then take it).
    pub fn subgroups(&self) -> Result<Option<u32>> {
        static CHOICE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let on = self.device.features().contains(wgpu::Features::SUBGROUP) && crate::runtime::kernel_env(&CHOICE, &crate::runtime::WGPU_SUBGROUPS)? != "off";
        Ok(on.then_some(self.info.subgroup_min_size.max(1)))
    }

    /// Whether passes can be timed with timestamp queries.
    pub fn has_timestamps(&self) -> bool {
        self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// The dummy buffers bound in place of absent optional operands.
    pub(crate) fn dummy(&self, writable: bool) -> &wgpu::Buffer {
        if writable {
            &self.dummy_rw
        } else {
            &self.dummy_ro
        }
    }

    /// The bind-group layout of a family: binding 0 is the uniform parameter block, then
    /// `read_only` storage buffers, then the writable ones. Built once per family.
    fn layout(&self, family: &'static str, read_only: usize, writable: usize) -> Arc<(wgpu::BindGroupLayout, wgpu::PipelineLayout)> {
        let mut cache = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry((family, read_only * 16 + writable))
            .or_insert_with(|| {
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Uniform, has_dynamic_offset: false, min_binding_size: None },
                    count: None,
                }];
                for i in 0..read_only + writable {
                    entries.push(wgpu::BindGroupLayoutEntry {
                        binding: 1 + i as u32,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage { read_only: i < read_only },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    });
                }
                let bgl = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(family), entries: &entries });
                let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(family),
                    bind_group_layouts: &[Some(&bgl)],
                    immediate_size: 0,
                });
                Arc::new((bgl, pl))
            })
            .clone()
    }

    /// A compute pipeline for `family`'s `entry` in `dtype`, compiled once and cached.
    pub(crate) fn pipeline(
        &self,
        family: &'static str,
        entry: &'static str,
        dtype: DType,
        read_only: usize,
        writable: usize,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = (family, entry, dtype);
        if let Some(p) = self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(p.clone());
        }
        let layout = self.layout(family, read_only, writable);
        let source = shader_source(family, dtype)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(family),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&layout.1),
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions { zero_initialize_workgroup_memory: false, ..Default::default() },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::driver(format!("wgpu: building {family}::{entry} ({dtype})"), e));
        }
        let p = Arc::new(pipeline);
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).insert(key, p.clone());
        Ok(p)
    }

    /// Records and submits one dispatch. `buffers` follow the family layout (read-only first).
    /// With a timing session open, the pass writes begin/end timestamps.
    pub(crate) fn dispatch(
        &self,
        pipeline: &wgpu::ComputePipeline,
        family: &'static str,
        read_only: usize,
        params: &[u8],
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) -> Result<()> {
        let max = self.device.limits().max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Limit(format!("{family}: dispatch {groups:?} exceeds {max} workgroups per dimension")));
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let layout = self.layout(family, read_only, buffers.len() - read_only);
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("ffkern params"),
            contents: params,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: 1 + i as u32, resource: b.as_entire_binding() });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(family), layout: &layout.0, entries: &entries });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(family) });
        {
            let mut timing = self.timing.lock().unwrap_or_else(|p| p.into_inner());
            let ts = timing.as_mut().filter(|t| t.next + 2 <= t.capacity).map(|t| {
                t.next += 2;
                wgpu::ComputePassTimestampWrites {
                    query_set: &t.queries,
                    beginning_of_pass_write_index: Some(t.next - 2),
                    end_of_pass_write_index: Some(t.next - 1),
                }
            });
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(family), timestamp_writes: ts });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        self.queue.submit([enc.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::driver(format!("wgpu: dispatching {family}"), e));
        }
        Ok(())
    }

    /// Grid for `n` invocations of a 256-wide 1-D kernel, folded into y past the x limit.
    pub(crate) fn grid_1d(&self, n: usize) -> [u32; 3] {
        let groups = n.div_ceil(256);
        let max = super::grid_cap(self.device.limits().max_compute_workgroups_per_dimension as usize);
        if groups <= max {
            [groups as u32, 1, 1]
        } else {
            [max as u32, groups.div_ceil(max) as u32, 1]
        }
    }

    fn wait(&self) -> Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::driver("wgpu: waiting for the queue", e))?;
        Ok(())
    }

    /// Copies `bytes` bytes of `src` from `offset` to the host through the cached staging buffer.
    pub fn read_bytes(&self, src: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        let size = bytes.div_ceil(4) * 4;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut staging = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        if staging.as_ref().is_none_or(|s| s.size() < size) {
            *staging = Some(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("ffkern staging"),
                size: size.next_power_of_two().max(1 << 16),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let st = staging.as_ref().ok_or_else(|| Error::driver("wgpu", "staging buffer missing"))?;
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern readback") });
        enc.copy_buffer_to_buffer(src, offset, st, 0, size);
        self.queue.submit([enc.finish()]);
        let slice = st.slice(0..size);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|e| Error::driver("wgpu: mapping the staging buffer", e))?
            .map_err(|e| Error::driver("wgpu: mapping the staging buffer", e))?;
        let data = slice.get_mapped_range().map_err(|e| Error::driver("wgpu: reading the staging buffer", e))?[..bytes as usize].to_vec();
        st.unmap();
        Ok(data)
    }

    /// Times `reps` runs of `f` (after one warm-up run) and returns seconds per run. With
    /// timestamp queries a run lasts from its first pass's start to its last pass's end; otherwise
    /// it is the wall clock of the run's submissions, waited for.
    pub fn time_runs(&self, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
        f()?;
        self.wait()?;
        let mut out = Vec::with_capacity(reps);
        if !self.has_timestamps() {
            for _ in 0..reps {
                let t = Instant::now();
                f()?;
                self.wait()?;
                out.push(t.elapsed().as_secs_f64());
            }
            return Ok(out);
        }
        let capacity = 64u32;
        for _ in 0..reps {
            let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("ffkern timing"),
                ty: wgpu::QueryType::Timestamp,
                count: capacity,
            });
            *self.timing.lock().unwrap_or_else(|p| p.into_inner()) = Some(Timing { queries, capacity, next: 0 });
            let r = f();
            let t = self.timing.lock().unwrap_or_else(|p| p.into_inner()).take();
            r?;
            let Some(t) = t else { continue };
            if t.next == 0 {
                out.push(0.0);
                continue;
            }
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("ffkern timestamps"),
                size: 8 * capacity as u64,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern timing") });
            enc.resolve_query_set(&t.queries, 0..t.next, &resolve, 0);
            self.queue.submit([enc.finish()]);
            let bytes = self.read_bytes(&resolve, 0, 8 * t.next as u64)?;
            let ticks: Vec<u64> = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
            let first = ticks.first().copied().unwrap_or(0);
            let last = ticks.last().copied().unwrap_or(0);
            out.push(last.saturating_sub(first) as f64 * self.queue.get_timestamp_period() as f64 * 1e-9);
        }
        Ok(out)
    }

    /// A read-only storage buffer holding `words` (sequence starts, chunk tables).
    pub fn upload_u32(&self, words: &[u32]) -> MeteredBuffer {
        let buffer = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("ffkern u32 table"), contents: bytemuck::cast_slice(words), usage: wgpu::BufferUsages::STORAGE });
        MeteredBuffer::new(buffer, &self.meter)
    }

    /// A caller's storage buffer as an owned [`WgpuBuffer`] of `len` elements of `dtype` (for the
    /// [`Backend`] calls on a framework's own memory), metered like the buffers ffkern creates.
    /// The buffer must have `STORAGE` usage (`COPY_SRC` to download it) and hold the elements in
    /// whole words; it should come from this context's device.
    pub fn adopt(&self, buffer: wgpu::Buffer, dtype: DType, len: usize) -> Result<WgpuBuffer> {
        let need = word_bytes(dtype, len)?;
        if buffer.size() < need {
            return Err(Error::shape("wgpu", format!("a buffer of {} bytes cannot hold {len} {dtype} elements ({need} bytes)", buffer.size())));
        }
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::Invalid("wgpu: an adopted buffer needs STORAGE usage".into()));
        }
        Ok(WgpuBuffer { buffer: MeteredBuffer::new(buffer, &self.meter), dtype, len })
    }

    /// A buffer for `len` elements of `dtype` (rounded up to whole words), usable as storage,
    /// copy source and copy destination.
    pub fn create_buffer(&self, dtype: DType, len: usize) -> Result<MeteredBuffer> {
        let bytes = word_bytes(dtype, len)?.max(4);
        let max = self.device.limits().max_storage_buffer_binding_size;
        if bytes > max || bytes > self.device.limits().max_buffer_size {
            return Err(Error::Limit(format!("wgpu: a buffer of {bytes} bytes exceeds the adapter's binding limit of {max}")));
        }
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("ffkern tensor"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(MeteredBuffer::new(buffer, &self.meter))
    }
}

/// The bytes of `len` elements of `dtype` rounded up to whole 4-byte words (every buffer is read as
/// u32 words).
fn word_bytes(dtype: DType, len: usize) -> Result<u64> {
    Ok(dtype.bytes(len)?.div_ceil(4).saturating_mul(4) as u64)
}

fn desc_backends(opts: &WgpuOptions) -> wgpu::Backends {
    opts.backends.unwrap_or(wgpu::Backends::PRIMARY)
}

impl Backend for WgpuContext {
    type Buf = WgpuBuffer;

    fn name(&self) -> &'static str {
        BACKEND
    }
    fn upload(&self, t: &HostTensor) -> Result<WgpuBuffer> {
        let buffer = self.create_buffer(t.dtype, t.len())?;
        let mut bytes = t.to_bytes();
        bytes.resize(buffer.size() as usize, 0);
        self.queue.write_buffer(&buffer, 0, &bytes);
        Ok(WgpuBuffer { buffer, dtype: t.dtype, len: t.len() })
    }
    fn alloc(&self, dtype: DType, len: usize) -> Result<WgpuBuffer> {
        Ok(WgpuBuffer { buffer: self.create_buffer(dtype, len)?, dtype, len })
    }
    /// Zeros (wgpu zero-fills every new buffer), or every bit set (NaN) under `FFKERN_POISON`
    /// (see `runtime::poison`).
    fn alloc_uninit(&self, dtype: DType, len: usize) -> Result<WgpuBuffer> {
        let buf = self.alloc(dtype, len)?;
        if super::poison() {
            self.queue.write_buffer(&buf.buffer, 0, &vec![0xffu8; buf.buffer.size() as usize]);
        }
        Ok(buf)
    }
    fn download(&self, buf: &WgpuBuffer) -> Result<HostTensor> {
        let bytes = self.read_bytes(&buf.buffer, 0, (buf.len * buf.dtype.size()) as u64)?;
        Ok(HostTensor { dtype: buf.dtype, shape: vec![buf.len], data: buf.dtype.decode(&bytes) })
    }
    fn dtype_of(&self, buf: &WgpuBuffer) -> DType {
        buf.dtype
    }
    fn len_of(&self, buf: &WgpuBuffer) -> usize {
        buf.len
    }
    fn synchronize(&self) -> Result<()> {
        self.wait()
    }
    fn copy(&self, src: &WgpuBuffer, dst: &mut WgpuBuffer) -> Result<()> {
        let size = src.buffer.size().min(dst.buffer.size());
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern copy") });
        let mut timing = self.timing.lock().unwrap_or_else(|p| p.into_inner());
        let ts = timing.as_mut().filter(|t| t.next + 2 <= t.capacity);
        // A copy has no pass to carry timestamps: bracket it with two empty timed passes.
        if let Some(t) = ts {
            let (b, e) = (t.next, t.next + 1);
            t.next += 2;
            drop(enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites { query_set: &t.queries, beginning_of_pass_write_index: Some(b), end_of_pass_write_index: None }),
            }));
            enc.copy_buffer_to_buffer(&src.buffer, 0, &dst.buffer, 0, size);
            drop(enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites { query_set: &t.queries, beginning_of_pass_write_index: None, end_of_pass_write_index: Some(e) }),
            }));
        } else {
            enc.copy_buffer_to_buffer(&src.buffer, 0, &dst.buffer, 0, size);
        }
        drop(timing);
        self.queue.submit([enc.finish()]);
        Ok(())
    }
    fn memory_use(&self) -> Option<crate::MemoryUse> {
        Some(crate::MemoryUse { current: self.meter.live.load(Ordering::Relaxed), peak: self.meter.peak.load(Ordering::Relaxed) })
    }
    fn reset_peak_memory(&self) {
        self.meter.peak.store(self.meter.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    fn copy_kernel(&self, src: &WgpuBuffer, dst: &mut WgpuBuffer) -> Result<bool> {
        // Whole 16-byte pieces of the shorter buffer (a tail under 16 bytes is not copied: the
        // bench's buffers are whole MiB).
        let pieces = (src.buffer.size().min(dst.buffer.size()) / 16) as usize;
        let pipe = self.pipeline("copy", "copy16", DType::F32, 1, 1)?;
        let params = [pieces as u32, 0, 0, 0];
        self.dispatch(&pipe, "copy", 1, bytemuck::cast_slice(&params), &[&*src.buffer, &*dst.buffer], self.grid_1d(pieces))?;
        Ok(true)
    }
    fn time_runs(&self, reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<Vec<f64>> {
        WgpuContext::time_runs(self, reps, f)
    }

    fn gemm(
        &self,
        desc: &Gemm,
        a: &WgpuBuffer,
        b: &WgpuBuffer,
        bias: Option<&WgpuBuffer>,
        r: Option<&WgpuBuffer>,
        c: &mut WgpuBuffer,
        z: Option<&mut WgpuBuffer>,
    ) -> Result<()> {
        let mut dts = vec![("A", a.dtype), ("B", b.dtype), ("C", c.dtype)];
        bias.iter().for_each(|t| dts.push(("bias", t.dtype)));
        r.iter().for_each(|t| dts.push(("R", t.dtype)));
        z.iter().for_each(|t| dts.push(("Z", t.dtype)));
        let dtype = same_dtype("gemm", &dts)?;
        let o = desc.offsets;
        let (la, lb, lbias, lr, lc) = o.remaining(a.len, b.len, bias.map(|t| t.len), r.map(|t| t.len), c.len)?;
        desc.validate_lens(la, lb, lbias, lr, lc, z.as_ref().map(|t| t.len.saturating_sub(o.c)))?;
        fn at(t: &WgpuBuffer, off: usize) -> BufferRef<'_> {
            BufferRef::new(&t.buffer, off as u64)
        }
        crate::ops::gemm::wgpu::gemm(
            self,
            desc,
            dtype,
            at(a, o.a),
            at(b, o.b),
            bias.map(|t| at(t, o.bias)),
            r.map(|t| at(t, o.r)),
            at(c, o.c),
            z.map(|t| BufferRef::new(&t.buffer, o.c as u64)),
        )
    }

    fn act_grad(&self, d: &ActGrad, dc: &WgpuBuffer, z: &WgpuBuffer, out: &mut WgpuBuffer) -> Result<()> {
        let dtype = same_dtype("act_grad", &[("dC", dc.dtype), ("Z", z.dtype), ("out", out.dtype)])?;
        d.check_lens(dc.len, z.len, out.len)?;
        crate::ops::gemm::wgpu::act_grad(self, d, dtype, &dc.buffer, &z.buffer, &out.buffer)
    }

    fn col_sum(&self, rows: usize, cols: usize, x: &WgpuBuffer, out: &mut WgpuBuffer) -> Result<()> {
        let dtype = same_dtype("col_sum", &[("x", x.dtype), ("out", out.dtype)])?;
        crate::ops::gemm::check_col_sum(rows, cols, x.len, out.len)?;
        crate::ops::gemm::wgpu::col_sum(self, rows, cols, dtype, &x.buffer, &out.buffer)
    }

    fn optim_step(&self, p: &OptimParams, param: &mut WgpuBuffer, grad: &WgpuBuffer, state: &mut [WgpuBuffer]) -> Result<()> {
        let (m, v) = match state {
            [] => (None, None),
            [m] => (Some(&*m.buffer), None),
            [m, v, ..] => (Some(&*m.buffer), Some(&*v.buffer)),
        };
        crate::ops::optim::wgpu::step(self, p, grad.dtype, &grad.buffer, &param.buffer, m, v)
    }

    fn philox_normal(&self, n: usize, seed: u64, t: u32, out: &mut WgpuBuffer) -> Result<()> {
        if out.len < n || out.dtype != DType::F32 {
            return Err(Error::shape("philox_normal", format!("output must be f32 with {n} elements")));
        }
        crate::ops::optim::wgpu::philox(self, n, seed, t, false, &out.buffer)
    }

    fn philox_words(&self, blocks: usize, seed: u64, t: u32, out: &mut WgpuBuffer) -> Result<()> {
        if out.len < 4 * blocks || out.dtype != DType::F32 {
            return Err(Error::shape("philox_words", format!("output must be f32 with {} elements", 4 * blocks)));
        }
        crate::ops::optim::wgpu::philox(self, blocks, seed, t, true, &out.buffer)
    }

    fn batchnorm(&self, p: &BnParams, x: &WgpuBuffer, affine: &WgpuBuffer, running_mean: &mut WgpuBuffer, running_var: &mut WgpuBuffer, stats: &mut WgpuBuffer, y: &mut WgpuBuffer) -> Result<()> {
        same_dtype("batchnorm", &[("x", x.dtype), ("y", y.dtype)])?;
        crate::ops::ffn::wgpu::batchnorm(self, p, x.dtype, &x.buffer, &affine.buffer, &running_mean.buffer, &running_var.buffer, &stats.buffer, &y.buffer)
    }

    fn batchnorm_backward(&self, p: &BnParams, x: &WgpuBuffer, dy: &WgpuBuffer, affine: &WgpuBuffer, stats: &mut WgpuBuffer, extra: Option<&WgpuBuffer>, dx: &mut WgpuBuffer) -> Result<()> {
        same_dtype("batchnorm", &[("x", x.dtype), ("dy", dy.dtype), ("dx", dx.dtype)])?;
        crate::ops::ffn::wgpu::batchnorm_backward(self, p, x.dtype, &x.buffer, &dy.buffer, &affine.buffer, &stats.buffer, extra.map(|t| &*t.buffer), &dx.buffer)
    }

    fn linattn_recurrent(&self, p: &LinAttnParams, q: &WgpuBuffer, k: &WgpuBuffer, v: &WgpuBuffer, starts: &[u32], state: &mut WgpuBuffer, z: &mut WgpuBuffer, o: &mut WgpuBuffer) -> Result<()> {
        let dtype = same_dtype("linear_attn", &[("q", q.dtype), ("k", k.dtype), ("v", v.dtype), ("o", o.dtype)])?;
        crate::ops::linattn::wgpu::recurrent(self, p, dtype, &q.buffer, &k.buffer, &v.buffer, starts, &state.buffer, &z.buffer, &o.buffer)
    }

    fn linattn_chunk_scan(&self, p: &LinAttnParams, seq_chunk0: &[u32], state: &mut WgpuBuffer, z: &mut WgpuBuffer, hs: &mut WgpuBuffer, zs: &mut WgpuBuffer) -> Result<()> {
        crate::ops::linattn::wgpu::chunk_scan(self, p, seq_chunk0, &state.buffer, &z.buffer, &hs.buffer, &zs.buffer)
    }

    fn linattn_chunk_states(&self, p: &LinAttnParams, table: &[u32], k: &WgpuBuffer, v: &WgpuBuffer, state: &mut WgpuBuffer, z: &mut WgpuBuffer, hs: &mut WgpuBuffer, zs: &mut WgpuBuffer) -> Result<()> {
        let dtype = same_dtype("linear_attn", &[("k", k.dtype), ("v", v.dtype)])?;
        crate::ops::linattn::wgpu::chunk_states(self, p, dtype, table, &k.buffer, &v.buffer, &state.buffer, &z.buffer, &hs.buffer, &zs.buffer)
    }

    fn linattn_chunk_fused(&self, p: &LinAttnParams, table: &[u32], q: &WgpuBuffer, k: &WgpuBuffer, v: &WgpuBuffer, state: &mut WgpuBuffer, z: &mut WgpuBuffer, o: &mut WgpuBuffer) -> Result<bool> {
        let dtype = same_dtype("linear_attn", &[("q", q.dtype), ("k", k.dtype), ("v", v.dtype), ("o", o.dtype)])?;
        crate::ops::linattn::wgpu::chunk_fused(self, p, dtype, table, &q.buffer, &k.buffer, &v.buffer, &state.buffer, &z.buffer, &o.buffer)
    }

    fn linattn_chunk_backward_fused(&self, p: &LinAttnParams, table: &[u32], x: [&WgpuBuffer; 5], s0: &WgpuBuffer, z0: &WgpuBuffer, d: [&mut WgpuBuffer; 2], out: [&mut WgpuBuffer; 3]) -> Result<bool> {
        let [dq, dk, dv] = out;
        let dtype = same_dtype("linear_attn", &[("q", x[0].dtype), ("k", x[1].dtype), ("v", x[2].dtype), ("o", x[3].dtype), ("do", x[4].dtype), ("dq", dq.dtype), ("dk", dk.dtype), ("dv", dv.dtype)])?;
        let [ds, dz] = d;
        crate::ops::linattn::wgpu::chunk_fused_grads(self, p, dtype, table, x.map(|b| &*b.buffer), &s0.buffer, &z0.buffer, [&*ds.buffer, &*dz.buffer], [&*dq.buffer, &*dk.buffer, &*dv.buffer])
    }

    fn linattn_backward(&self, p: &LinAttnParams, starts: &[u32], x: [&WgpuBuffer; 5], s0: &WgpuBuffer, z0: &WgpuBuffer, d_final: [Option<&WgpuBuffer>; 2], out: [&mut WgpuBuffer; 5]) -> Result<()> {
        let [dq, dk, dv, ds0, dz0] = out;
        let dtype = same_dtype("linear_attn", &[("q", x[0].dtype), ("k", x[1].dtype), ("v", x[2].dtype), ("o", x[3].dtype), ("do", x[4].dtype), ("dq", dq.dtype), ("dk", dk.dtype), ("dv", dv.dtype)])?;
        let xb = x.map(|b| &*b.buffer);
        let outs = [&*dq.buffer, &*dk.buffer, &*dv.buffer, &*ds0.buffer, &*dz0.buffer];
        crate::ops::linattn::wgpu::backward(self, p, dtype, starts, xb, &s0.buffer, &z0.buffer, d_final.map(|b| b.map(|b| &*b.buffer)), outs)
    }

    fn linattn_chunk_dstate(&self, p: &LinAttnParams, bounds: &[u32], x: [&WgpuBuffer; 5], start: [&WgpuBuffer; 2], scratch: &mut WgpuBuffer, own: Option<[&mut WgpuBuffer; 2]>) -> Result<()> {
        let dtype = same_dtype("linear_attn", &[("q", x[0].dtype), ("k", x[1].dtype), ("v", x[2].dtype), ("o", x[3].dtype), ("do", x[4].dtype)])?;
        let own = own.map(|[g, gz]| [&*g.buffer, &*gz.buffer]);
        crate::ops::linattn::wgpu::chunk_dstate(self, p, dtype, bounds, x.map(|b| &*b.buffer), &start[1].buffer, &scratch.buffer, own)
    }

    fn linattn_chunk_grad_states(&self, p: &LinAttnParams, table: &[u32], x: [&WgpuBuffer; 5], _start: [&WgpuBuffer; 2], scratch: &WgpuBuffer, d: [&mut WgpuBuffer; 2], g: [&mut WgpuBuffer; 2]) -> Result<()> {
        let dtype = same_dtype("linear_attn", &[("q", x[0].dtype), ("do", x[4].dtype)])?;
        let ([ds, dz], [gs, gzs]) = (d, g);
        crate::ops::linattn::wgpu::chunk_grad_states(self, p, dtype, table, &x[0].buffer, &x[4].buffer, &scratch.buffer, [&*ds.buffer, &*dz.buffer], [&*gs.buffer, &*gzs.buffer])
    }

    fn linattn_chunk_grads(&self, p: &LinAttnParams, bounds: &[u32], x: [&WgpuBuffer; 5], start: [&WgpuBuffer; 2], end: [&WgpuBuffer; 2], scratch: &mut WgpuBuffer, out: [&mut WgpuBuffer; 3]) -> Result<()> {
        let [dq, dk, dv] = out;
        let dtype = same_dtype("linear_attn", &[("q", x[0].dtype), ("k", x[1].dtype), ("v", x[2].dtype), ("o", x[3].dtype), ("do", x[4].dtype), ("dq", dq.dtype), ("dk", dk.dtype), ("dv", dv.dtype)])?;
        let outs = [&*dq.buffer, &*dk.buffer, &*dv.buffer];
        crate::ops::linattn::wgpu::chunk_grads(self, p, dtype, bounds, x.map(|b| &*b.buffer), start.map(|b| &*b.buffer), end.map(|b| &*b.buffer), &scratch.buffer, outs)
    }

    fn graph_op(&self, kind: GraphKernel, p: &GraphParams, g: Option<&DeviceGraph<WgpuBuffer>>, a: &GraphArgs<WgpuBuffer>, out: &mut WgpuBuffer, arg: Option<&mut WgpuBuffer>) -> Result<()> {
        if let (Some(x), GraphKernel::Gather | GraphKernel::SegmentReduce | GraphKernel::Spmm) = (a.x, kind) {
            same_dtype("graph", &[("x", x.dtype), ("out", out.dtype)])?;
        }
        crate::ops::graph::wgpu::launch(self, kind, p, g, a, out, arg.map(|a| &*a))
    }
}
