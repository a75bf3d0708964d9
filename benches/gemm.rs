//! Criterion bench of the fused GEMM on the best backend present, over the shared shape registry
//! (small shapes on CPU adapters such as lavapipe), on the inputs `ffkern bench` uses. Times are
//! device times (CUDA events / wgpu timestamp queries) through `iter_custom`.

mod common;

use common::{device_timed, group};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ffkern::bench::GemmBench;
use ffkern::ops::gemm::GemmInputs;
use ffkern::{with_backend, DType, Device};

fn gemm(c: &mut Criterion) {
    let dev = Device::best().expect("FFKERN_* settings");
    let cases = if dev.is_cpu_like() { ffkern::registry::gemm_bench_cases_small() } else { ffkern::registry::gemm_bench_cases() };
    let mut group = group(c, "gemm", &dev);
    for case in cases {
        for dtype in [DType::F32, DType::BF16] {
            let x = GemmInputs::random(&case.desc, dtype, 42);
            group.throughput(Throughput::Elements(case.desc.flops() as u64));
            with_backend!(&dev, be => {
                let mut g = GemmBench::new(be, &case.desc, &x).expect("set-up");
                device_timed(&mut group, format!("{} {dtype}", case.name), be, &mut || g.run(be, &case.desc));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
