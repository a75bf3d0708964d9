//! Criterion bench of the fused noisy SGD step (momentum, annealed Gaussian noise) on the best
//! backend present, over the registry's parameter count. Device times through `iter_custom`.

mod common;

use common::{device_timed, group};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ffkern::ops::optim::{NoisyOptimizer, TensorList};
use ffkern::{with_backend, Backend, DType, Device, HostTensor};

fn noisy_sgd(c: &mut Criterion) {
    let dev = Device::best();
    let n = ffkern::registry::optim_bench_params(dev.is_cpu_like());
    let mut grp = group(c, "optim", &dev);
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

criterion_group!(benches, noisy_sgd);
criterion_main!(benches);
