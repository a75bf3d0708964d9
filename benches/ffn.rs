//! Criterion bench of the FFN family on the best backend present: RePaViT's merged inference (two
//! fused GEMMs) beside the dense FFN it replaces, and the training form's BatchNorm (forward and
//! backward over H channels), at the registry's shape (ViT-L on GPUs, ViT-S on CPU adapters),
//! f32 and bf16, on the inputs `ffkern bench` uses. Device times through `iter_custom`.

mod common;

use common::{device_timed, group};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ffkern::bench::{BatchNormBench, RepavitBench};
use ffkern::{with_backend, DType, Device};

fn ffn(c: &mut Criterion) {
    let dev = Device::best().expect("FFKERN_* settings");
    let (t, dim, hidden, theta) = ffkern::registry::repavit_bench_shape(dev.is_cpu_like());
    let mut g = group(c, "ffn", &dev);
    for dtype in [DType::F32, DType::BF16] {
        with_backend!(&dev, be => {
            let f = RepavitBench::new(be, t, dim, hidden, theta, dtype).expect("set-up");
            g.throughput(Throughput::Elements(f.merged_flops() as u64));
            device_timed(&mut g, format!("repavit merged T{t} C{dim} H{hidden} θ={theta} {dtype}"), be, &mut || f.run_merged(be));
            g.throughput(Throughput::Elements(f.dense_flops() as u64));
            device_timed(&mut g, format!("dense T{t} C{dim} H{hidden} {dtype}"), be, &mut || f.run_dense(be));
            let mut bn = BatchNormBench::new(be, t, hidden, dtype).expect("set-up");
            g.throughput(Throughput::Bytes(bn.bytes(dtype) as u64));
            device_timed(&mut g, format!("batchnorm train fwd+bwd R{t} C{hidden} {dtype}"), be, &mut || bn.step(be));
        });
    }
    g.finish();
}

criterion_group!(benches, ffn);
criterion_main!(benches);
