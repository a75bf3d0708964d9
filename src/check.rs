//! `ffkern check`: every op × dtype × registry shape on one backend against the CPU reference,
//! with the SPEC's budgets. The same comparisons the test suite makes, as records.

use crate::ops::gemm::{backward_host, cpu, run_host, GemmInputs};
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
pub const OPS: &[&str] = &["gemm", "gemm_backward"];

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
                let dc = HostTensor::random(dtype, vec![d.batch * d.m * d.n], 3000 + i as u64);
                let (_, z) = x.reference(d);
                let z: Vec<f64> = z.iter().map(|&v| dtype.round(v as f32) as f64).collect();
                let dc64: Vec<f64> = dc.data.iter().map(|&v| v as f64).collect();
                let (da_ref, db_ref, dbias_ref) = cpu::backward(d, &x.a.data, &x.b.data, &z, &dc64);
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
        _ => {}
    }
    out
}

/// How many progress steps [`check_op`] takes for `op`.
pub fn case_count(op: &str) -> usize {
    match op {
        "gemm" => gemm_check_cases().len(),
        "gemm_backward" => gemm_backward_cases().len(),
        _ => 0,
    }
}
