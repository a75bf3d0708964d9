//! Shared by the criterion benches: device-timed benchmarks on the best backend present.

use std::time::Duration;

use criterion::{measurement::WallTime, BenchmarkGroup, Criterion};
use ffkern::{Backend, Device};

/// A benchmark group for `family` on `dev`, sized for device-timed runs.
pub fn group<'a>(c: &'a mut Criterion, family: &str, dev: &Device) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(format!("{family}/{}", dev.name()));
    g.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_secs(2));
    g
}

/// One benchmark whose iterations are `iters` device-timed runs of `f` (CUDA events / wgpu
/// timestamp queries) through `iter_custom`.
pub fn device_timed<Be: Backend>(group: &mut BenchmarkGroup<'_, WallTime>, name: String, be: &Be, f: &mut dyn FnMut() -> ffkern::Result<()>) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let t = be.time_runs(iters as usize, &mut *f).expect("timed run");
            Duration::from_secs_f64(t.iter().sum())
        })
    });
}
