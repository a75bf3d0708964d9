//! Device memory: the peak a call takes, as `Backend::memory_use` counts it. Its own test binary
//! (a process of its own), so that no other test's buffers share the counters, and its tests take
//! turns (`SERIAL`) for the same reason.

mod common;

use ffkern::ops::linattn::{FeatureMap, LinearAttention, Normalize};
use ffkern::{with_backend, Backend, DType, HostTensor};

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `f` run once on `be` with earlier work (and its frees) settled before and after: the bytes held
/// before it, after it, and at its peak.
fn measured<Be: Backend>(be: &Be, f: &mut dyn FnMut()) -> (u64, u64, u64) {
    let held = || {
        be.synchronize().expect("sync");
        be.memory_use().expect("a device backend counts its memory").current
    };
    let before = held();
    be.reset_peak_memory();
    f();
    let after = held();
    (before, after, be.memory_use().expect("memory").peak)
}

/// Every form's device memory is linear in T (no T×T matrix; at most one state per chunk), on
/// every device backend: the peak memory a call takes beyond what was held before it (scratch,
/// chunk states and tables; the backward also its gradients) at most doubles, within 5 %, when T
/// doubles from 1024 to 2048 and to 4096 (a T² term would make it grow up to 4×). The backward
/// allocates dq, dk and dv itself, so its peak is at least their bytes: the meter counts.
#[test]
fn every_form_takes_memory_linear_in_t() {
    let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for dev in common::device_backends() {
        with_backend!(dev, be => {
            let peak = |t: usize| -> [u64; 4] {
                let d = LinearAttention { batch: 1, seq: t, heads: 4, k: 64, v: 64, feature_map: FeatureMap::Elu1, scale: None, normalize: Normalize::Normalizer { eps: 1e-6 } };
                let x = |n: usize, dt: DType, seed: u64| HostTensor::random(dt, vec![n], seed);
                let (q, k, v, d_o) = (x(d.qk_len(), DType::BF16, 3), x(d.qk_len(), DType::BF16, 4), x(d.vo_len(), DType::BF16, 5), x(d.vo_len(), DType::BF16, 6));
                let (s0, z0) = (x(d.state_len(), DType::F32, 7), HostTensor::new(DType::F32, vec![d.z_len()], vec![0.75; d.z_len()]).expect("z0"));
                let up = |t: &HostTensor| be.upload(t).expect("upload");
                let (qb, kb, vb, dob, s0b, z0b) = (up(&q), up(&k), up(&v), up(&d_o), up(&s0), up(&z0));
                let (mut s, mut z, mut o) = (up(&s0), up(&z0), be.alloc(DType::BF16, d.vo_len()).expect("o"));
                let taken = |f: &mut dyn FnMut()| {
                    let (before, _, peak) = measured(be, f);
                    peak - before
                };
                let chunk = taken(&mut || d.chunk(be, &qb, &kb, &vb, &mut s, &mut z, 0, &mut o).expect("chunk"));
                let chunk_bwd = taken(&mut || drop(d.chunk_backward(be, &qb, &kb, &vb, &o, &dob, &s0b, &z0b, [None, None], 0).expect("chunk backward")));
                let rec = taken(&mut || d.recurrent(be, &qb, &kb, &vb, &mut s, &mut z, 0, &mut o).expect("recurrent"));
                let rec_bwd = taken(&mut || drop(d.backward(be, &qb, &kb, &vb, &o, &dob, &s0b, &z0b, [None, None], 0).expect("backward")));
                let grads = (2 * d.qk_len() + d.vo_len()) as u64 * 2;
                assert!(chunk_bwd >= grads && rec_bwd >= grads, "{}: backward peaks {chunk_bwd} / {rec_bwd} bytes, under the {grads} of dq, dk, dv", dev.name());
                [chunk, chunk_bwd, rec, rec_bwd]
            };
            let [p1, p2, p4] = [1024, 2048, 4096].map(peak);
            for (i, form) in ["chunk", "chunk backward", "recurrent", "recurrent backward"].iter().enumerate() {
                let (a, b, c) = (p1[i] as f64, p2[i] as f64, p4[i] as f64);
                assert!(b <= 2.05 * a && c <= 2.05 * b, "{} {form}: peaks {a}, {b}, {c} bytes at T = 1024, 2048, 4096", dev.name());
            }
        });
    }
}

/// Every family hands back the scratch it takes: once a call's outputs are dropped, the device
/// holds what it held before — split-K workspaces and column-sum partials (GEMM and its
/// backward), chunk states and the backward's per-chunk scratch (linear attention), long rows'
/// segment partials (spmm on a power-law graph, past the CUDA runtime's kept sync scratch), and
/// the OneForecast layer's saved activations and statistics, forward and backward. Each call is
/// checked to take memory at all.
#[test]
fn calls_release_their_scratch() {
    let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    use ffkern::ops::gemm::{gemm_backward, GemmInputs};
    use ffkern::ops::graph::{spmm, DeviceGraph, Graph, OneForecastLayer, OneForecastParams};
    use ffkern::{Activation, Gemm};
    for dev in common::device_backends() {
        with_backend!(dev, be => {
            let check = |what: &str, f: &mut dyn FnMut()| {
                let (before, after, peak) = measured(be, f);
                assert!(peak > before, "{}: {what} took no memory (peak {peak}, held {before})", dev.name());
                assert_eq!(after, before, "{}: {what} left {} bytes behind", dev.name(), after as i64 - before as i64);
            };
            let up = |t: &HostTensor| be.upload(t).expect("upload");
            // A long K with few output tiles: split-K on the device backends.
            let desc = Gemm::new(48, 40, 8192).bias(true).act(Activation::GeluTanh);
            let x = GemmInputs::random(&desc, DType::F32, 5);
            let (a, b, bias) = (up(&x.a), up(&x.b), up(x.bias.as_ref().expect("bias")));
            let dc = up(&HostTensor::random(DType::F32, vec![48 * 40], 6));
            check("gemm", &mut || {
                let mut c = be.alloc(DType::F32, 48 * 40).expect("c");
                let mut z = be.alloc(DType::F32, 48 * 40).expect("z");
                be.gemm(&desc, &a, &b, Some(&bias), None, &mut c, Some(&mut z)).expect("gemm");
                drop(gemm_backward(be, &desc, &a, &b, Some(&z), &dc).expect("gemm backward"));
            });
            let d = LinearAttention { batch: 2, seq: 300, heads: 2, k: 32, v: 24, feature_map: FeatureMap::Relu, scale: None, normalize: Normalize::Count };
            let r = |n: usize, dt: DType, seed: u64| up(&HostTensor::random(dt, vec![n], seed));
            let (q, k, v, d_o) = (r(d.qk_len(), DType::BF16, 7), r(d.qk_len(), DType::BF16, 8), r(d.vo_len(), DType::BF16, 9), r(d.vo_len(), DType::BF16, 10));
            let (s0, z0) = (r(d.state_len(), DType::F32, 11), r(d.z_len(), DType::F32, 12));
            check("linear attention", &mut || {
                let (mut s, mut z, mut o) = (be.alloc(DType::F32, d.state_len()).expect("s"), be.alloc(DType::F32, d.z_len()).expect("z"), be.alloc(DType::BF16, d.vo_len()).expect("o"));
                d.chunk(be, &q, &k, &v, &mut s, &mut z, 0, &mut o).expect("chunk");
                drop(d.chunk_backward(be, &q, &k, &v, &o, &d_o, &s0, &z0, [None, None], 0).expect("chunk backward"));
                drop(d.backward(be, &q, &k, &v, &o, &d_o, &s0, &z0, [None, None], 0).expect("backward"));
            });
            let g = Graph::power_law(2000, 16000, 3).expect("graph");
            let dg = DeviceGraph::upload(be, &g).expect("graph upload");
            let feats = r(2000 * 32, DType::BF16, 13);
            // The CUDA runtime keeps one sync scratch for kernels whose blocks coordinate (the
            // warp form's long rows), grown to the largest use and reused: a first call sizes it.
            drop(spmm(be, &dg, &feats, None, 32).expect("spmm"));
            check("spmm with split rows", &mut || drop(spmm(be, &dg, &feats, None, 32).expect("spmm")));
            let l = OneForecastLayer { dim: 32, heads: 4, gate_hidden: 16, attn_hidden: 8, eps: 1e-5 };
            let mesh = Graph::icosphere(2).expect("mesh");
            let (dm, dmt) = (DeviceGraph::upload(be, &mesh).expect("mesh"), DeviceGraph::upload(be, &mesh.transposed()).expect("transposed"));
            let p = OneForecastParams::from_tensors(l.seeded_params(DType::BF16, 14).iter().map(up).collect()).expect("params");
            let (ne, n) = (mesh.num_edges(), mesh.num_nodes);
            let (e, h, de, dh) = (r(ne * 32, DType::BF16, 15), r(n * 32, DType::BF16, 16), r(ne * 32, DType::BF16, 17), r(n * 32, DType::BF16, 18));
            check("oneforecast layer", &mut || {
                let st = l.forward(be, &dm, &e, &h, &p).expect("forward");
                drop(l.backward(be, &dm, &dmt, &e, &h, &p, &st, &de, &dh).expect("backward"));
            });
        });
    }
}
