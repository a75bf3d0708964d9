//! Criterion benches of the op families beyond the GEMM (its own bench is `gemm`) on the best
//! backend present: the linear-attention decode step and chunked forward, the graph spmm and
//! segment sum, the fused noisy SGD step. Small shapes on CPU adapters such as lavapipe, the
//! issues' shapes on GPUs. Times are device times (CUDA events / wgpu timestamp queries) through
//! `iter_custom`; `ffkern bench` reports the same ops with roofline fractions and peers.

mod common;

use common::{device_timed, group};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ffkern::{with_backend, Backend, DType, Device, HostTensor};

fn linear_attention(c: &mut Criterion) {
    use ffkern::ops::linattn::{FeatureMap, LinearAttention, Normalize};
    let dev = Device::best();
    let small = dev.is_cpu_like();
    let mut g = group(c, "linear_attn", &dev);
    // The decode step (issue 4: B64 H32 K = V = 128) and the chunked forward at B1 H4 D64.
    let (b, h, kd) = if small { (8, 8, 64) } else { (64, 32, 128) };
    let decode = LinearAttention { batch: b, seq: 1, heads: h, k: kd, v: kd, feature_map: FeatureMap::Identity, scale: None, normalize: Normalize::None };
    let seq = if small { 1024 } else { 8192 };
    let chunked = LinearAttention { batch: 1, seq, heads: 4, k: 64, v: 64, feature_map: FeatureMap::Identity, scale: None, normalize: Normalize::None };
    with_backend!(&dev, be => {
        for (d, what) in [(&decode, format!("decode step B{b} H{h} K{kd} bf16")), (&chunked, format!("chunk forward B1 T{seq} H4 D64 bf16"))] {
            let r = |n: usize, dt: DType, s: u64| be.upload(&HostTensor::random(dt, vec![n], s)).expect("upload");
            let (q, k, v) = (r(d.qk_len(), DType::BF16, 1), r(d.qk_len(), DType::BF16, 2), r(d.vo_len(), DType::BF16, 3));
            let (mut s, mut z, mut o) = (r(d.state_len(), DType::F32, 4), r(d.z_len(), DType::F32, 5), be.alloc(DType::BF16, d.vo_len()).expect("alloc"));
            let is_decode = d.seq == 1;
            g.throughput(Throughput::Bytes(if is_decode { 8 * d.state_len() as u64 } else { 2 * (d.qk_len() + d.vo_len()) as u64 * 2 }));
            device_timed(&mut g, what, be, &mut || {
                if is_decode {
                    d.recurrent(be, &q, &k, &v, &mut s, &mut z, 0, &mut o)
                } else {
                    d.chunk(be, &q, &k, &v, &mut s, &mut z, 0, &mut o)
                }
            });
        }
    });
    g.finish();
}

fn graph(c: &mut Criterion) {
    use ffkern::ops::graph::{self, DeviceGraph, Graph, Reduce};
    let dev = Device::best();
    let (n, e, dim) = if dev.is_cpu_like() { (2_000, 16_000, 128) } else { (12_337, 98_296, 512) };
    let g = Graph::random_uniform(n, e, 11).expect("graph");
    let mut grp = group(c, "graph", &dev);
    grp.throughput(Throughput::Bytes(((e + n) * dim * 2) as u64));
    with_backend!(&dev, be => {
        let dg = DeviceGraph::upload(be, &g).expect("upload graph");
        let x = be.upload(&HostTensor::random(DType::BF16, vec![n * dim], 1)).expect("upload");
        let m = be.upload(&HostTensor::random(DType::BF16, vec![e * dim], 2)).expect("upload");
        device_timed(&mut grp, format!("spmm N{n} E{e} D{dim} bf16"), be, &mut || graph::spmm(be, &dg, &x, None, dim).map(|_| ()));
        device_timed(&mut grp, format!("segment_sum N{n} E{e} D{dim} bf16"), be, &mut || graph::segment_reduce(be, &dg, &m, dim, Reduce::Sum).map(|_| ()));
    });
    grp.finish();
}

fn noisy_sgd(c: &mut Criterion) {
    use ffkern::ops::optim::{NoisyOptimizer, TensorList};
    let dev = Device::best();
    let n = if dev.is_cpu_like() { 4_000_000 } else { 100_000_000 };
    let mut grp = group(c, "noisy_optimizer", &dev);
    // 20 bytes move per parameter: read p, g, m; write p, m.
    grp.throughput(Throughput::Bytes(20 * n as u64));
    with_backend!(&dev, be => {
        let list = TensorList::new(vec![n]);
        let mut opt = NoisyOptimizer::sgd(1e-3, 0.9, 42);
        let mut param = be.upload(&HostTensor::random(DType::F32, vec![n], 1)).expect("upload");
        let grad = be.upload(&HostTensor::random(DType::F32, vec![n], 2)).expect("upload");
        let mut state = vec![be.upload(&HostTensor::random(DType::F32, vec![n], 3)).expect("upload")];
        device_timed(&mut grp, format!("sgd momentum {}M f32", n / 1_000_000), be, &mut || opt.step(be, &list, &mut param, &grad, &mut state));
    });
    grp.finish();
}

criterion_group!(benches, linear_attention, graph, noisy_sgd);
criterion_main!(benches);
