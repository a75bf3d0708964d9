//! Criterion bench of the FFN family on the best backend present: RePaViT's merged inference (two
//! fused GEMMs) beside the dense FFN it replaces, at the registry's shape (ViT-L on GPUs, ViT-S on
//! CPU adapters), f32 and bf16. Device times through `iter_custom`.

mod common;

use common::{device_timed, group};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ffkern::ops::ffn::{active_channels, DenseFfn, FfnWeights, RepavitMerged};
use ffkern::{with_backend, Activation, Backend, DType, Device, HostTensor};

fn ffn(c: &mut Criterion) {
    let dev = Device::best();
    let (t, dim, hidden, theta) = ffkern::registry::repavit_bench_shape(dev.is_cpu_like());
    let a = active_channels(hidden, theta).expect("θ");
    let mut g = group(c, "ffn", &dev);
    for dtype in [DType::F32, DType::BF16] {
        let merged = RepavitMerged {
            dim,
            active: a,
            wu: HostTensor::random(dtype, vec![a + dim, dim], 2),
            bu: HostTensor::random(dtype, vec![a + dim], 3),
            wo: HostTensor::random(dtype, vec![dim, a], 4),
        };
        let dense = DenseFfn { tokens: t, dim, hidden, act: Activation::GeluErf, residual: true };
        with_backend!(&dev, be => {
            let r = |n: usize, s: u64| be.upload(&HostTensor::random(dtype, vec![n], s)).expect("upload");
            let x = r(t * dim, 1);
            let (wu, bu, wo) = (be.upload(&merged.wu).expect("upload"), be.upload(&merged.bu).expect("upload"), be.upload(&merged.wo).expect("upload"));
            g.throughput(Throughput::Elements((2 * t * dim * (2 * a + dim)) as u64));
            device_timed(&mut g, format!("repavit merged T{t} C{dim} H{hidden} θ={theta} {dtype}"), be, &mut || merged.forward(be, t, &x, (&wu, &bu, &wo)).map(|_| ()));
            let w = FfnWeights { w1: r(hidden * dim, 5), b1: r(hidden, 6), w2: r(dim * hidden, 7), b2: r(dim, 8) };
            g.throughput(Throughput::Elements((4 * t * dim * hidden) as u64));
            device_timed(&mut g, format!("dense T{t} C{dim} H{hidden} {dtype}"), be, &mut || dense.forward(be, &x, &w, false).map(|_| ()));
        });
    }
    g.finish();
}

criterion_group!(benches, ffn);
criterion_main!(benches);
