//! Criterion bench of the fused noisy SGD step (momentum, annealed Gaussian noise) on the best
//! backend present, over the registry's parameter count in one tensor, on the inputs `ffkern
//! bench` uses. Device times through `iter_custom`.

mod common;

use common::{device_timed, group};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ffkern::bench::SgdBench;
use ffkern::{with_backend, Device};

fn noisy_sgd(c: &mut Criterion) {
    let dev = Device::best().expect("FFKERN_* settings");
    let n = ffkern::registry::optim_bench_params(dev.is_cpu_like());
    let mut grp = group(c, "optim", &dev);
    // 20 bytes move per parameter: read p, g, m; write p, m.
    grp.throughput(Throughput::Bytes(20 * n as u64));
    with_backend!(&dev, be => {
        let mut sgd = SgdBench::new(be, n, 1).expect("set-up");
        device_timed(&mut grp, format!("sgd momentum {}M f32", n / 1_000_000), be, &mut || sgd.step(be));
    });
    grp.finish();
}

criterion_group!(benches, noisy_sgd);
criterion_main!(benches);
