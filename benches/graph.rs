//! Criterion bench of the graph primitives on the best backend present: spmm and the segment sum
//! over a uniform random graph of the registry's shape (OneForecast's mesh size on GPUs), bf16,
//! on the rotating inputs `ffkern bench` uses. Device times through `iter_custom`; `ffkern bench`
//! adds gather, the skewed graph, the edge MLP and the OneForecast layer.

mod common;

use common::{device_timed, group};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ffkern::bench::GraphBench;
use ffkern::ops::graph::{DeviceGraph, Graph};
use ffkern::{with_backend, DType, Device};

fn graph_ops(c: &mut Criterion) {
    let dev = Device::best().expect("FFKERN_* settings");
    let (n, e, dim) = ffkern::registry::graph_bench_shape(dev.is_cpu_like());
    let g = Graph::random_uniform(n, e, 11).expect("graph");
    let mut grp = group(c, "graph", &dev);
    // Each per-edge row once plus the [N, D] side, bf16.
    grp.throughput(Throughput::Bytes(((e + n) * dim * 2) as u64));
    with_backend!(&dev, be => {
        let dg = DeviceGraph::upload(be, &g).expect("upload graph");
        let mut inputs = GraphBench::new(be, n, e, dim, DType::BF16, 1).expect("set-up");
        device_timed(&mut grp, format!("spmm N{n} E{e} D{dim} bf16"), be, &mut || inputs.spmm(be, &dg));
        device_timed(&mut grp, format!("segment_sum N{n} E{e} D{dim} bf16"), be, &mut || inputs.segment_sum(be, &dg));
    });
    grp.finish();
}

criterion_group!(benches, graph_ops);
criterion_main!(benches);
