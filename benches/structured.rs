//! Criterion bench of the structured FFN blocks `S2(GELU(S1(x) + b1)) + b2` (LowRank, BlockDense,
//! BlockShuffle at about a third of the dense FFN's parameters, registry shapes) on the best
//! backend present, f32 and bf16, on the inputs `ffkern bench` uses. Device times through
//! `iter_custom`; `ffkern bench` puts each beside the dense FFN and measures the pre-merge
//! crossover.

mod common;

use common::{device_timed, group};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ffkern::bench::StructuredBench;
use ffkern::{with_backend, DType, Device};

fn structured(c: &mut Criterion) {
    let dev = Device::best().expect("FFKERN_* settings");
    let (t, layers) = ffkern::registry::structured_bench_layers(dev.is_cpu_like());
    let mut g = group(c, "structured", &dev);
    for (s1, s2, label) in layers {
        for dtype in [DType::F32, DType::BF16] {
            with_backend!(&dev, be => {
                let f = StructuredBench::new(be, t, s1, s2, dtype).expect("set-up");
                g.throughput(Throughput::Elements(f.flops() as u64));
                device_timed(&mut g, format!("{label} T{t} d{} {dtype}", s1.inp()), be, &mut || f.run_structured(be));
            });
        }
    }
    g.finish();
}

criterion_group!(benches, structured);
criterion_main!(benches);
