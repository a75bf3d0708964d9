//! `ffkern check`: every op × dtype × registry shape on one backend against the CPU reference,
//! with the SPEC's budgets. The same comparisons the test suite makes, as records.

use crate::ops::gemm::{backward_host, run_host, GemmInputs};
use crate::ops::optim::{self, Clip, ClipOrder, NoiseSchedule, NoisyOptimizer, Rule, TensorList};
use crate::registry::{gemm_backward_cases, gemm_check_cases};
use crate::{Backend, Compare, DType, HostTensor};

/// One checked output.
#[derive(Clone, Debug)]
pub struct CheckRecord {
    pub op: String,
    pub backend: String,
    pub dtype: DType,
    pub shape: String,
    pub rms_ratio: f64,
    pub max_abs: f64,
    pub budget: f64,
    pub pass: bool,
    /// The error, when the op could not run at all (a failure).
    pub error: Option<String>,
}

/// The op names `check` knows.
pub const OPS: &[&str] = &["gemm", "gemm_backward", "philox_normal", "noisy_optimizer"];

fn record(op: &str, be: &str, dtype: DType, shape: String, out: &[f32], reference: &[f64]) -> CheckRecord {
    let c = Compare::new(out, reference, dtype);
    CheckRecord {
        op: op.into(),
        backend: be.into(),
        dtype,
        shape,
        rms_ratio: c.rms_ratio,
        max_abs: c.max_abs,
        budget: dtype.budget(),
        pass: c.passes(dtype.budget()),
        error: None,
    }
}

fn failed(op: &str, be: &str, dtype: DType, shape: String, e: crate::Error) -> CheckRecord {
    CheckRecord {
        op: op.into(),
        backend: be.into(),
        dtype,
        shape,
        rms_ratio: f64::INFINITY,
        max_abs: f64::INFINITY,
        budget: dtype.budget(),
        pass: false,
        error: Some(e.to_string()),
    }
}

/// Checks `op` (one of [`OPS`]) in `dtype` on `be`; `progress` is called once per case.
pub fn check_op<Be: Backend>(be: &Be, op: &str, dtype: DType, progress: &mut dyn FnMut()) -> Vec<CheckRecord> {
    let name = be.name();
    let mut out = Vec::new();
    match op {
        "gemm" => {
            for (i, case) in gemm_check_cases().into_iter().enumerate() {
                let x = GemmInputs::random(&case.desc, dtype, 1000 + i as u64);
                let (c_ref, _) = x.reference(&case.desc);
                match run_host(be, &case.desc, &x, false) {
                    Ok(o) => out.push(record(op, name, dtype, case.name.clone(), &o.c, &c_ref)),
                    Err(e) => out.push(failed(op, name, dtype, case.name.clone(), e)),
                }
                progress();
            }
        }
        "gemm_backward" => {
            for (i, case) in gemm_backward_cases().into_iter().enumerate() {
                let d = &case.desc;
                let x = GemmInputs::random(d, dtype, 2000 + i as u64);
                let dc = HostTensor::random(dtype, vec![d.c().required_len(d.batch)], 3000 + i as u64);
                let (da_ref, db_ref, dbias_ref) = x.reference_backward(d, &dc);
                match backward_host(be, d, &x, &dc) {
                    Ok((da, db, dbias)) => {
                        out.push(record(op, name, dtype, format!("{} dA", case.name), &da, &da_ref));
                        out.push(record(op, name, dtype, format!("{} dB", case.name), &db, &db_ref));
                        if let Some(dbias) = dbias {
                            out.push(record(op, name, dtype, format!("{} dbias", case.name), &dbias, &dbias_ref));
                        }
                    }
                    Err(e) => out.push(failed(op, name, dtype, case.name.clone(), e)),
                }
                progress();
            }
        }
        "philox_normal" => {
            // Normals must agree with the f64 reference to 1e-6 absolute (SPEC §7); the dtype
            // loop does not apply (they are f32), so only the f32 pass records them.
            if dtype == DType::F32 {
                for (n, seed, t) in [(1usize, 1u64, 0u32), (1001, 7, 3), (1 << 20, 0xdead_beef, 1000)] {
                    let shape = format!("n={n} seed={seed} t={t}");
                    let reference = optim::reference_normals(seed, t, n);
                    match optim::philox_normal_host(be, n, seed, t) {
                        Ok(z) => {
                            let mut r = record(op, name, dtype, shape, &z.data, &reference);
                            r.budget = 1e-6;
                            r.pass = r.max_abs <= 1e-6;
                            out.push(r);
                        }
                        Err(e) => out.push(failed(op, name, dtype, shape, e)),
                    }
                }
            }
            progress();
        }
        "noisy_optimizer" => {
            // Gradients in `dtype`, f32 master weights and state, three steps over a list of
            // odd-sized tensors; budget: f32.
            let list = TensorList::new(vec![1, 7, 1000, 4097, 63]);
            for (label, opt) in check_optimizers() {
                let shape = format!("{label}, {} tensors, {} elements", list.lens.len(), list.total());
                let reference = optimizer_run(&crate::Cpu, &opt, &list, dtype);
                let got = optimizer_run(be, &opt, &list, dtype);
                match (reference, got) {
                    (Ok(r), Ok(g)) => {
                        // Outputs are f32 whatever the gradient dtype: compare as f32.
                        let r64: Vec<f64> = r.iter().map(|&x| x as f64).collect();
                        let mut rec = record(op, name, DType::F32, shape, &g, &r64);
                        rec.dtype = dtype;
                        out.push(rec);
                    }
                    (Err(e), _) | (_, Err(e)) => out.push(failed(op, name, dtype, shape, e)),
                }
            }
            progress();
        }
        _ => {}
    }
    out
}

/// The optimizer configurations `check` runs.
pub fn check_optimizers() -> Vec<(&'static str, NoisyOptimizer)> {
    let noise = NoiseSchedule { eta: 0.3, gamma: 0.55 };
    let mut sgd = NoisyOptimizer::sgd(0.05, 0.9, 11);
    sgd.noise = noise;
    sgd.weight_decay = 0.01;
    let mut nesterov = sgd.clone();
    nesterov.rule = Rule::Sgd { momentum: 0.9, nesterov: true };
    nesterov.clip = Some(Clip { max_norm: 1.0, order: ClipOrder::NoiseThenClip });
    let mut adamw = NoisyOptimizer::adam(1e-3, 11);
    adamw.noise = noise;
    adamw.weight_decay = 0.1;
    adamw.clip = Some(Clip { max_norm: 1.0, order: ClipOrder::ClipThenNoise });
    vec![("sgd momentum", sgd), ("sgd nesterov noise-then-clip", nesterov), ("adamw clip-then-noise", adamw)]
}

/// Three steps of `opt` from seeded arenas; the final parameters followed by the state.
fn optimizer_run<Be: Backend>(be: &Be, opt: &NoisyOptimizer, list: &TensorList, grad_dtype: DType) -> crate::Result<Vec<f32>> {
    let n = list.total();
    let mut opt = opt.clone();
    let mut param = be.upload(&HostTensor::random(DType::F32, vec![n], 1))?;
    let mut state = Vec::new();
    for k in 0..opt.state_count() {
        let init = HostTensor::random(DType::F32, vec![n], 10 + k as u64);
        // Adam's second moment is non-negative.
        let init = if k == 1 { HostTensor::new(DType::F32, vec![n], init.data.iter().map(|x| x.abs()).collect())? } else { init };
        state.push(be.upload(&init)?);
    }
    for s in 0..3 {
        let grad = be.upload(&HostTensor::random(grad_dtype, vec![n], 100 + s))?;
        opt.step(be, list, &mut param, &grad, &mut state)?;
    }
    let mut out = be.download(&param)?.data;
    for st in &state {
        out.extend(be.download(st)?.data);
    }
    Ok(out)
}

/// How many progress steps [`check_op`] takes for `op`.
pub fn case_count(op: &str) -> usize {
    match op {
        "gemm" => gemm_check_cases().len(),
        "gemm_backward" => gemm_backward_cases().len(),
        "philox_normal" | "noisy_optimizer" => 1,
        _ => 0,
    }
}
