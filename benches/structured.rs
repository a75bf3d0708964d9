//! Criterion bench of the structured FFN blocks `S2(GELU(S1(x) + b1)) + b2` (LowRank, BlockDense,
//! BlockShuffle at about a third of the dense FFN's parameters, registry shapes) on the best
//! backend present, f32 and bf16. Device times through `iter_custom`; `ffkern bench` puts each
//! beside the dense FFN and measures the pre-merge crossover.

mod common;

use common::{device_timed, group};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ffkern::ops::structured::StructuredFfn;
use ffkern::{with_backend, Activation, Backend, DType, Device, HostTensor};

fn structured(c: &mut Criterion) {
    let dev = Device::best();
    let (t, layers) = ffkern::registry::structured_bench_layers(dev.is_cpu_like());
    let mut g = group(c, "structured", &dev);
    for (s1, s2, label) in layers {
        let block = StructuredFfn { tokens: t, s1, s2, act: Activation::GeluErf };
        let ((a1, b1), (a2, b2)) = (s1.factor_lens(), s2.factor_lens());
        g.throughput(Throughput::Elements((2 * t * (s1.params() + s2.params())) as u64));
        for dtype in [DType::F32, DType::BF16] {
            with_backend!(&dev, be => {
                let r = |n: usize, s: u64| be.upload(&HostTensor::random(dtype, vec![n], s)).expect("upload");
                let x = r(t * s1.inp(), 1);
                let f = [r(a1, 2), r(b1, 3), r(a2, 4), r(b2, 5)];
                let (bias1, bias2) = (r(s1.out(), 6), r(s1.inp(), 7));
                device_timed(&mut g, format!("{label} T{t} d{} {dtype}", s1.inp()), be, &mut || {
                    block.infer(be, &x, [&f[0], &f[1], &f[2], &f[3]], &bias1, &bias2).map(|_| ())
                });
            });
        }
    }
    g.finish();
}

criterion_group!(benches, structured);
criterion_main!(benches);
