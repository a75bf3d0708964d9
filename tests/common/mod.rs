//! Shared test setup: the device backends present, with `FFKERN_REQUIRE` (e.g. `wgpu` or
//! `wgpu,cuda`) turning a missing backend into a failure instead of a skip, and
//! `FFKERN_TEST_BACKENDS` (e.g. `cuda`) limiting the device backends tested to those named.

#![allow(dead_code)]

use ffkern::ops::ffn::{BatchNorm, RepavitWeights};
use ffkern::ops::graph::{cpu as graph_cpu, DeviceGraph, GatLayer, GatParams, GcnLayer, Graph, SageLayer};
use ffkern::{with_backend, Activation, Backend};
use ffkern::{Compare, DType, Device, HostTensor, SplitMix64};

fn env_list(var: &str) -> Option<Vec<String>> {
    let v = std::env::var(var).ok()?;
    Some(v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
}

pub fn required() -> Vec<String> {
    env_list("FFKERN_REQUIRE").unwrap_or_default()
}

/// Whether `FFKERN_TEST_BACKENDS` (unset: every backend) lets the tests use backend `name`.
pub fn tested(name: &str) -> bool {
    env_list("FFKERN_TEST_BACKENDS").is_none_or(|l| l.iter().any(|b| b == name))
}

/// The GPU backends to test (wgpu, cuda), opened once per test process and shared by every
/// test (as a framework shares one device). A missing one is reported on stderr and skipped,
/// unless `FFKERN_REQUIRE` names it, in which case this panics (the test fails).
pub fn device_backends() -> Vec<&'static Device> {
    static DEVICES: std::sync::OnceLock<Vec<(&'static str, Result<Device, String>)>> = std::sync::OnceLock::new();
    let devices = DEVICES.get_or_init(|| ["wgpu", "cuda"].into_iter().filter(|n| tested(n)).map(|n| (n, Device::open(n).map_err(|e| e.to_string()))).collect());
    let req = required();
    let mut out = Vec::new();
    for (name, dev) in devices {
        match dev {
            Ok(d) => out.push(d),
            Err(e) => {
                if req.iter().any(|r| r == name) {
                    panic!("FFKERN_REQUIRE names {name} but it is unavailable: {e}");
                }
                eprintln!("skipping backend {name}: {e}");
            }
        }
    }
    out
}

/// The wgpu context alone, or None (skipped unless required).
#[cfg(feature = "wgpu")]
pub fn wgpu() -> Option<ffkern::WgpuContext> {
    if !tested("wgpu") {
        eprintln!("skipping wgpu: not in FFKERN_TEST_BACKENDS");
        return None;
    }
    match ffkern::WgpuContext::new() {
        Ok(c) => Some(c),
        Err(e) => {
            if required().iter().any(|r| r == "wgpu") {
                panic!("FFKERN_REQUIRE names wgpu but it is unavailable: {e}");
            }
            eprintln!("skipping wgpu: {e}");
            None
        }
    }
}

/// The device backends plus the CPU reference backend.
pub fn devices_and_cpu() -> Vec<&'static Device> {
    static CPU: Device = Device::Cpu(ffkern::Cpu);
    let mut d = device_backends();
    d.push(&CPU);
    d
}

/// Asserts `out` is within the SPEC budget of `dtype` against the f64 reference.
pub fn assert_close(what: &str, out: &[f32], reference: &[f64], dtype: DType) {
    let c = Compare::new(out, reference, dtype);
    assert!(c.passes(dtype.budget()), "{what}: rms_ratio {:.3e} max_abs {:.3e} over the {dtype} budget", c.rms_ratio, c.max_abs);
}

/// Seeded values in [-scale, scale) (never zeros), rounded to `dtype`.
pub fn scaled(dtype: DType, n: usize, scale: f32, seed: u64) -> HostTensor {
    let t = HostTensor::random(DType::F32, vec![n], seed);
    HostTensor { dtype, shape: vec![n], data: t.data.iter().map(|v| dtype.round(v * scale)).collect() }
}

/// A BatchNorm over `n` channels with parameters and running statistics away from 0 and 1.
pub fn batchnorm(n: usize, rng: &mut SplitMix64) -> BatchNorm {
    let mut v = |lo: f32, hi: f32| (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect::<Vec<f32>>();
    BatchNorm { gamma: v(0.5, 1.5), beta: v(-0.5, 0.5), mean: v(-0.3, 0.3), var: v(0.5, 2.0), eps: 1e-5 }
}

/// Seeded f32 weights of a RePaViT FFN (C → H → C), scaled by fan-in, with both BatchNorms.
pub fn repavit_weights(c: usize, h: usize, seed: u64) -> RepavitWeights {
    let mut rng = SplitMix64::new(seed);
    let f = |n: usize, scale: f32, s: u64| scaled(DType::F32, n, scale, seed.wrapping_mul(10).wrapping_add(s));
    RepavitWeights {
        w1: f(h * c, 1.0 / (c as f32).sqrt(), 1),
        b1: f(h, 0.2, 2),
        w2: f(c * h, 1.0 / (h as f32).sqrt(), 3),
        b2: f(c, 0.2, 4),
        bn1: batchnorm(c, &mut rng),
        bn2: batchnorm(h, &mut rng),
    }
}

/// A GCN, a GraphSAGE-mean and a GAT layer (`in_dim` → `out_dim`, GAT's heads dividing
/// `out_dim`) on one graph with seeded inputs, weights and output gradient: what tests/gnn.rs
/// and the property tests run on every backend.
pub struct GnnLayers {
    pub g: Graph,
    pub gcn: GcnLayer,
    pub sage: SageLayer,
    pub gat: GatLayer,
    pub x: HostTensor,
    pub dy: HostTensor,
    /// GCN's W and SAGE's W_self.
    pub w: HostTensor,
    /// SAGE's W_neigh.
    pub wn: HostTensor,
    pub b: HostTensor,
    /// GAT's W, a_src, a_dst, b.
    pub pg: [HostTensor; 4],
}

impl GnnLayers {
    #[allow(clippy::too_many_arguments)]
    pub fn new(g: Graph, in_dim: usize, out_dim: usize, heads: usize, acts: [Activation; 3], dtype: DType, seed: u64) -> Self {
        let (n, i, o) = (g.num_nodes, in_dim, out_dim);
        let t = |len: usize, scale: f32, k: u64| scaled(dtype, len, scale, seed.wrapping_add(k));
        GnnLayers {
            gcn: GcnLayer { in_dim: i, out_dim: o, act: acts[0] },
            sage: SageLayer { in_dim: i, out_dim: o, act: acts[1] },
            gat: GatLayer { in_dim: i, heads, head_dim: o / heads, act: acts[2] },
            x: t(n * i, 1.0, 1),
            dy: t(n * o, 1.0, 2),
            w: t(o * i, 0.4, 3),
            wn: t(o * i, 0.4, 4),
            b: t(o, 0.5, 5),
            pg: [t(o * i, 0.4, 6), t(o, 1.0, 7), t(o, 1.0, 8), t(o, 0.5, 9)],
            g,
        }
    }

    /// The f64 references of the three forward outputs.
    pub fn references(&self) -> [Vec<f64>; 3] {
        let f = |t: &HostTensor| t.data.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let (g, pg) = (&self.g, &self.pg);
        [
            graph_cpu::gcn_layer(g, &f(&self.x), &f(&self.w), &f(&self.b), self.gcn.act),
            graph_cpu::sage_layer(g, &f(&self.x), &f(&self.wn), &f(&self.w), &f(&self.b), self.sage.act),
            graph_cpu::gat_layer(g, &f(&self.x), &f(&pg[0]), &f(&pg[1]), &f(&pg[2]), &f(&pg[3]), self.gat.heads, self.gat.act),
        ]
    }

    /// Every layer's output and gradients on `dev`, named, in a fixed order (each layer's output
    /// first).
    pub fn run(&self, dev: &Device) -> ffkern::Result<Vec<(String, HostTensor)>> {
        let (gl, ew) = GcnLayer::normalize(&self.g)?;
        let ew = HostTensor::new(DType::F32, vec![ew.len()], ew)?;
        let mw = SageLayer::mean_weights(&self.g);
        let mw = HostTensor::new(DType::F32, vec![mw.len()], mw)?;
        with_backend!(dev, be => {
            let up = |t: &HostTensor| be.upload(t);
            let (xb, dyb, wb, wnb, bb) = (up(&self.x)?, up(&self.dy)?, up(&self.w)?, up(&self.wn)?, up(&self.b)?);
            let (dgl, dglt, ewb) = (DeviceGraph::upload(be, &gl)?, DeviceGraph::upload(be, &gl.transposed())?, up(&ew)?);
            let st = self.gcn.forward(be, &dgl, &ewb, &xb, &wb, &bb)?;
            let gr = self.gcn.backward(be, &dglt, &ewb, &wb, &st, &dyb)?;
            let mut out = vec![("gcn y".to_string(), be.download(&st.out)?), ("gcn dx".into(), be.download(&gr.dx)?), ("gcn dw".into(), be.download(&gr.w)?), ("gcn db".into(), be.download(&gr.b)?)];
            let (dg, dgt, mwb) = (DeviceGraph::upload(be, &self.g)?, DeviceGraph::upload(be, &self.g.transposed())?, up(&mw)?);
            let st = self.sage.forward(be, &dg, &mwb, &xb, &wnb, &wb, &bb)?;
            let gr = self.sage.backward(be, &dgt, &mwb, &xb, &wnb, &wb, &st, &dyb)?;
            out.extend([
                ("sage y".to_string(), be.download(&st.out)?),
                ("sage dx".into(), be.download(&gr.dx)?),
                ("sage dw_neigh".into(), be.download(&gr.w_neigh)?),
                ("sage dw_self".into(), be.download(&gr.w_self)?),
                ("sage db".into(), be.download(&gr.b)?),
            ]);
            let p = GatParams { w: up(&self.pg[0])?, a_src: up(&self.pg[1])?, a_dst: up(&self.pg[2])?, b: up(&self.pg[3])? };
            let st = self.gat.forward(be, &dg, &xb, &p)?;
            let gr = self.gat.backward(be, &dg, &dgt, &xb, &p, &st, &dyb)?;
            out.extend([
                ("gat y".to_string(), be.download(&st.out)?),
                ("gat dx".into(), be.download(&gr.dx)?),
                ("gat dw".into(), be.download(&gr.params.w)?),
                ("gat da_src".into(), be.download(&gr.params.a_src)?),
                ("gat da_dst".into(), be.download(&gr.params.a_dst)?),
                ("gat db".into(), be.download(&gr.params.b)?),
            ]);
            Ok(out)
        })
    }
}
