//! A 20-layer fully connected ReLU network (widths 64 to 256) on a synthetic regression task,
//! trained twice from the same poor initialisation with ffkern's fused GEMM (forward and
//! backward) and noisy SGD: once without gradient noise, once with the annealed noise of
//! Neelakantan et al. (η = 0.01, γ = 0.55). Prints both loss curves.
//!
//! `cargo run --release --example deep_mlp_noise` (best backend present; lavapipe works).

use ffkern::ops::gemm::gemm_backward;
use ffkern::ops::optim::{NoiseSchedule, NoisyOptimizer};
use ffkern::{with_backend, Activation, Backend, DType, Device, Gemm, HostTensor, Result, SplitMix64};

const DEPTH: usize = 20;
const INPUT: usize = 32;
const BATCH: usize = 64;
const SAMPLES: usize = 1024;
const STEPS: usize = 150;

fn width(layer: usize) -> usize {
    if layer == DEPTH {
        1
    } else {
        64 << (layer % 3)
    }
}

/// The data set: x uniform in [-1, 1)^32, y = mean of sin(3·⟨x, u_k⟩) over four fixed directions.
fn data() -> (Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix64::new(7);
    let dirs: Vec<f32> = (0..4 * INPUT).map(|_| rng.uniform() * 2.0 - 1.0).collect();
    let x: Vec<f32> = (0..SAMPLES * INPUT).map(|_| rng.uniform() * 2.0 - 1.0).collect();
    let y = (0..SAMPLES)
        .map(|s| {
            (0..4)
                .map(|k| (3.0 * (0..INPUT).map(|i| x[s * INPUT + i] * dirs[k * INPUT + i]).sum::<f32>() / (INPUT as f32).sqrt()).sin())
                .sum::<f32>()
                / 4.0
        })
        .collect();
    (x, y)
}

/// Trains from the poor initialisation (weights uniform in ±0.1/√fan_in: the signal shrinks
/// through the depth and the first layers barely get a gradient); returns the loss per step.
fn train<Be: Backend>(be: &Be, noise: bool) -> Result<Vec<f32>> {
    let (x, y) = data();
    let mut rng = SplitMix64::new(1);
    let mut weights = Vec::new();
    let mut biases = Vec::new();
    for l in 0..DEPTH + 1 {
        let (fan_in, fan_out) = (if l == 0 { INPUT } else { width(l - 1) }, width(l));
        let s = 0.1 / (fan_in as f32).sqrt();
        let w: Vec<f32> = (0..fan_in * fan_out).map(|_| (rng.uniform() * 2.0 - 1.0) * s).collect();
        weights.push(be.upload(&HostTensor::new(DType::F32, vec![fan_out * fan_in], w)?)?);
        biases.push(be.upload(&HostTensor::new(DType::F32, vec![fan_out], vec![0.0; fan_out])?)?);
    }
    let mut momentum: Vec<Vec<Be::Buf>> = Vec::new();
    for l in 0..DEPTH + 1 {
        let fan_in = if l == 0 { INPUT } else { width(l - 1) };
        momentum.push(vec![be.alloc(DType::F32, width(l) * fan_in)?]);
        momentum.push(vec![be.alloc(DType::F32, width(l))?]);
    }
    let mut opt = NoisyOptimizer::sgd(0.02, 0.9, 2024);
    opt.noise = if noise { NoiseSchedule { eta: 0.01, gamma: 0.55 } } else { NoiseSchedule { eta: 0.0, gamma: 0.55 } };
    let mut losses = Vec::with_capacity(STEPS);
    for step in 0..STEPS {
        let first = (step * BATCH) % SAMPLES;
        let xb = HostTensor::new(DType::F32, vec![BATCH * INPUT], x[first * INPUT..(first + BATCH) * INPUT].to_vec())?;
        let yb = &y[first..first + BATCH];
        // Forward, saving every layer's input and pre-activation.
        let mut inputs = vec![be.upload(&xb)?];
        let mut preacts = Vec::new();
        let mut descs = Vec::new();
        for l in 0..DEPTH + 1 {
            let (fan_in, fan_out) = (if l == 0 { INPUT } else { width(l - 1) }, width(l));
            let act = if l == DEPTH { Activation::Identity } else { Activation::Relu };
            let desc = Gemm::new(BATCH, fan_out, fan_in).bias(true).act(act);
            let mut out = be.alloc(DType::F32, BATCH * fan_out)?;
            let mut z = be.alloc(DType::F32, BATCH * fan_out)?;
            be.gemm(&desc, &inputs[l], &weights[l], Some(&biases[l]), None, &mut out, Some(&mut z))?;
            inputs.push(out);
            preacts.push(z);
            descs.push(desc);
        }
        let pred = be.download(&inputs[DEPTH + 1])?.data;
        let loss = pred.iter().zip(yb).map(|(p, t)| (p - t) * (p - t)).sum::<f32>() / BATCH as f32;
        losses.push(loss);
        // Backward: dL/dpred = 2(pred − y)/B, then each layer's fused GEMM backward.
        let grad_out: Vec<f32> = pred.iter().zip(yb).map(|(p, t)| 2.0 * (p - t) / BATCH as f32).collect();
        let mut dc = be.upload(&HostTensor::new(DType::F32, vec![BATCH], grad_out)?)?;
        let mut base = 0;
        let mut grads = Vec::new();
        for l in (0..DEPTH + 1).rev() {
            let g = gemm_backward(be, &descs[l], &inputs[l], &weights[l], Some(&preacts[l]), &dc)?;
            dc = g.da;
            grads.push((l, g.db, g.dbias));
        }
        // Noisy SGD, one tensor at a time at its offset in the parameter list (W0, b0, W1, ...).
        grads.reverse();
        for (l, dw, db) in grads {
            let dbias = db.ok_or_else(|| ffkern::Error::Invalid("missing bias gradient".into()))?;
            opt.step_tensor(be, base, &mut weights[l], &dw, &mut momentum[2 * l])?;
            base += be.len_of(&weights[l]);
            opt.step_tensor(be, base, &mut biases[l], &dbias, &mut momentum[2 * l + 1])?;
            base += be.len_of(&biases[l]);
        }
        opt.advance();
    }
    Ok(losses)
}

fn main() -> Result<()> {
    let dev = Device::best()?;
    println!("deep MLP ({DEPTH} hidden ReLU layers, widths 64..256) on {}: {}", dev.name(), dev.describe());
    let plain = with_backend!(&dev, be => train(be, false))?;
    let noisy = with_backend!(&dev, be => train(be, true))?;
    let avg = |v: &[f32], i: usize| {
        let lo = i.saturating_sub(4);
        v[lo..=i].iter().sum::<f32>() / (i - lo + 1) as f32
    };
    println!("{:>5} {:>14} {:>14}", "step", "loss (no noise)", "loss (noise)");
    for i in (0..STEPS).step_by(10).chain([STEPS - 1]) {
        println!("{:>5} {:>14.5} {:>14.5}", i, avg(&plain, i), avg(&noisy, i));
    }
    Ok(())
}
