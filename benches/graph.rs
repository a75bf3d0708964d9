//! Criterion bench of the graph primitives on the best backend present: spmm and the segment sum
//! over a uniform random graph of the registry's shape (OneForecast's mesh size on GPUs), bf16.
//! Device times through `iter_custom`; `ffkern bench` adds gather, the skewed graph, the edge MLP
//! and the OneForecast layer.

mod common;

use common::{device_timed, group};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ffkern::ops::graph::{self, DeviceGraph, Graph, Reduce};
use ffkern::{with_backend, Backend, DType, Device, HostTensor};

fn graph_ops(c: &mut Criterion) {
    let dev = Device::best();
    let (n, e, dim) = ffkern::registry::graph_bench_shape(dev.is_cpu_like());
    let g = Graph::random_uniform(n, e, 11).expect("graph");
    let mut grp = group(c, "graph", &dev);
    // Each per-edge row once plus the [N, D] side, bf16.
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

criterion_group!(benches, graph_ops);
criterion_main!(benches);
