//! The CPU backend: the reference implementations behind the [`Backend`] trait, so every
//! composition can also run (slowly) without a GPU.

use crate::device::{same_dtype, Backend};
use crate::ops::gemm::{self, ActGrad, Gemm};
use crate::ops::ffn::{self, BatchNorm, BatchNormDesc, BnParams};
use crate::ops::graph::{self, DeviceGraph, GraphArgs, GraphKernel, GraphParams};
use crate::ops::linattn::{self, LinAttnParams};
use crate::ops::optim::{self, OptimParams};
use crate::{DType, Error, HostTensor, Result};

/// The CPU reference backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

fn f64s(t: &HostTensor) -> Vec<f64> {
    t.data.iter().map(|&v| v as f64).collect()
}

impl Backend for Cpu {
    type Buf = HostTensor;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn upload(&self, t: &HostTensor) -> Result<HostTensor> {
        Ok(HostTensor { dtype: t.dtype, shape: vec![t.len()], data: t.data.clone() })
    }
    fn alloc(&self, dtype: DType, len: usize) -> Result<HostTensor> {
        Ok(HostTensor { dtype, shape: vec![len], data: crate::error::filled(len, 0.0)? })
    }
    /// Zeros, or NaN under `FFKERN_POISON` (see `runtime::poison`).
    fn alloc_uninit(&self, dtype: DType, len: usize) -> Result<HostTensor> {
        Ok(HostTensor { dtype, shape: vec![len], data: crate::error::filled(len, if super::poison() { f32::NAN } else { 0.0 })? })
    }
    fn download(&self, buf: &HostTensor) -> Result<HostTensor> {
        self.upload(buf)
    }
    fn dtype_of(&self, buf: &HostTensor) -> DType {
        buf.dtype
    }
    fn len_of(&self, buf: &HostTensor) -> usize {
        buf.len()
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn copy(&self, src: &HostTensor, dst: &mut HostTensor) -> Result<()> {
        let n = src.len().min(dst.len());
        dst.data[..n].copy_from_slice(&src.data[..n]);
        Ok(())
    }
    fn time_runs(&self, reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<Vec<f64>> {
        f()?;
        (0..reps)
            .map(|_| {
                let t = std::time::Instant::now();
                f().map(|_| t.elapsed().as_secs_f64())
            })
            .collect()
    }

    fn gemm(
        &self,
        desc: &Gemm,
        a: &HostTensor,
        b: &HostTensor,
        bias: Option<&HostTensor>,
        r: Option<&HostTensor>,
        c: &mut HostTensor,
        z: Option<&mut HostTensor>,
    ) -> Result<()> {
        let mut dts = vec![("A", a.dtype), ("B", b.dtype), ("C", c.dtype)];
        bias.iter().for_each(|t| dts.push(("bias", t.dtype)));
        r.iter().for_each(|t| dts.push(("R", t.dtype)));
        let dtype = same_dtype("gemm", &dts)?;
        let o = desc.offsets;
        let (la, lb, lbias, lr, lc) = o.remaining(a.len(), b.len(), bias.map(|t| t.len()), r.map(|t| t.len()), c.len())?;
        let lz = z.as_ref().map(|t| t.len().saturating_sub(o.c));
        desc.validate_lens(la, lb, lbias, lr, lc, lz)?;
        let (cv, zv) =
            gemm::cpu::forward(desc, &a.data[o.a..], &b.data[o.b..], bias.map(|t| &t.data[o.bias..]), r.map(|t| &t.data[o.r..]));
        let co = desc.c();
        let mut z = z;
        for bt in 0..desc.batch {
            for i in 0..desc.m {
                for j in 0..desc.n {
                    let k = (bt * desc.m + i) * desc.n + j;
                    let idx = o.c + co.index(bt, i, j);
                    c.data[idx] = dtype.round(cv[k] as f32);
                    if let Some(z) = z.as_deref_mut() {
                        z.data[idx] = dtype.round(zv[k] as f32);
                    }
                }
            }
        }
        Ok(())
    }

    fn act_grad(&self, d: &ActGrad, dc: &HostTensor, z: &HostTensor, out: &mut HostTensor) -> Result<()> {
        let dtype = same_dtype("act_grad", &[("dC", dc.dtype), ("Z", z.dtype), ("out", out.dtype)])?;
        let n = d.check_lens(dc.len(), z.len(), out.len())?;
        let g = gemm::cpu::act_grad(d, &f64s(dc)[..n], &f64s(z)[..n]);
        for (o, v) in out.data.iter_mut().zip(g) {
            *o = dtype.round(v as f32);
        }
        Ok(())
    }

    fn col_sum(&self, rows: usize, cols: usize, x: &HostTensor, out: &mut HostTensor) -> Result<()> {
        let dtype = same_dtype("col_sum", &[("x", x.dtype), ("out", out.dtype)])?;
        gemm::check_col_sum(rows, cols, x.len(), out.len())?;
        for j in 0..cols {
            let s: f64 = (0..rows).map(|i| x.data[i * cols + j] as f64).sum();
            out.data[j] = dtype.round(s as f32);
        }
        Ok(())
    }

    fn optim_step(&self, p: &OptimParams, param: &mut HostTensor, grad: &HostTensor, state: &mut [HostTensor]) -> Result<()> {
        let n = p.n as usize;
        let st: Vec<Vec<f32>> = state.iter().map(|s| s.data[..n].to_vec()).collect();
        let (w, new_state) = optim::cpu::step(p, &param.data, &grad.data, &st);
        for (d, v) in param.data.iter_mut().zip(w) {
            *d = v as f32;
        }
        for (s, ns) in state.iter_mut().zip(new_state) {
            for (d, v) in s.data.iter_mut().zip(ns) {
                *d = v as f32;
            }
        }
        Ok(())
    }

    fn philox_normal(&self, n: usize, seed: u64, t: u32, out: &mut HostTensor) -> Result<()> {
        if out.len() < n || out.dtype != DType::F32 {
            return Err(Error::shape("philox_normal", format!("output must be f32 with {n} elements")));
        }
        for (d, z) in out.data.iter_mut().zip(optim::reference_normals(seed, t, n)) {
            *d = z as f32;
        }
        Ok(())
    }

    fn philox_words(&self, blocks: usize, seed: u64, t: u32, out: &mut HostTensor) -> Result<()> {
        if out.len() < 4 * blocks || out.dtype != DType::F32 {
            return Err(Error::shape("philox_words", format!("output must be f32 with {} elements", 4 * blocks)));
        }
        for j in 0..blocks {
            for (w, x) in optim::noise_words(seed, t, j as u64).into_iter().enumerate() {
                out.data[4 * j + w] = f32::from_bits(x);
            }
        }
        Ok(())
    }

    fn batchnorm(&self, p: &BnParams, x: &HostTensor, affine: &HostTensor, running_mean: &mut HostTensor, running_var: &mut HostTensor, stats: &mut HostTensor, y: &mut HostTensor) -> Result<()> {
        let (d, bn) = bn_host(p, affine, &running_mean.data, &running_var.data);
        let c = d.channels;
        let (out, mean, var, rm, rv) = ffn::cpu::batchnorm_forward(&d, p.train != 0, &x.data, &bn);
        for (o, v) in y.data.iter_mut().zip(out) {
            *o = x.dtype.round(v as f32);
        }
        if p.train != 0 {
            for ch in 0..c {
                running_mean.data[ch] = rm[ch] as f32;
                running_var.data[ch] = rv[ch] as f32;
            }
        }
        for ch in 0..c {
            let rstd = 1.0 / (var[ch] + d.eps as f64).sqrt();
            let scale = bn.gamma[ch] as f64 * rstd;
            stats.data[ch] = mean[ch] as f32;
            stats.data[c + ch] = rstd as f32;
            stats.data[2 * c + ch] = scale as f32;
            stats.data[3 * c + ch] = (bn.beta[ch] as f64 - mean[ch] * scale) as f32;
            stats.data[6 * c + ch] = (mean[ch] - mean[ch] as f32 as f64) as f32;
        }
        Ok(())
    }

    fn linattn_backward(&self, p: &LinAttnParams, starts: &[u32], x: [&HostTensor; 5], s0: &HostTensor, z0: &HostTensor, d_final: [Option<&HostTensor>; 2], out: [&mut HostTensor; 5]) -> Result<()> {
        let d = p.descriptor();
        let n = p.batch as usize;
        let all: Vec<usize> = starts.iter().map(|&s| s as usize).collect();
        let offsets = (p.varlen == 2).then(|| &all[n + 1..2 * n + 1]);
        let [q, k, v, o, d_o] = x;
        let d_final = d_final.map(|t| t.map(|t| &t.data[..]));
        // The stored o, as the device passes read it.
        let g = linattn::cpu::backward_varlen(&d, &all[..=n], offsets, &q.data, &k.data, &v.data, Some(&s0.data), Some(&z0.data), Some(&o.data), &d_o.data, d_final, p.count0 as usize);
        let [dq, dk, dv, ds0, dz0] = out;
        for (t, g) in [dq, dk, dv, ds0, dz0].into_iter().zip([g.dq, g.dk, g.dv, g.ds0, g.dz0]) {
            for (dst, x) in t.data.iter_mut().zip(g) {
                *dst = t.dtype.round(x as f32);
            }
        }
        Ok(())
    }

    fn linattn_chunk_dstate(&self, p: &LinAttnParams, bounds: &[u32], x: [&HostTensor; 5], start: [&HostTensor; 2], _scratch: &mut HostTensor, own: Option<[&mut HostTensor; 2]>) -> Result<()> {
        // The reference backward over the chunks with zero end gradients: its dS0, dz0 are each
        // chunk's own sums (dq, dk, dv are not needed: empty outputs take none of them). The
        // reference needs no den, dd table.
        let Some([g, gz]) = own else { return Ok(()) };
        let [mut a, mut b, mut c] = [(); 3].map(|_| HostTensor { dtype: DType::F32, shape: vec![0], data: Vec::new() });
        self.linattn_backward(p, bounds, x, start[0], start[1], [None, None], [&mut a, &mut b, &mut c, g, gz])
    }

    fn linattn_chunk_grads(&self, p: &LinAttnParams, bounds: &[u32], x: [&HostTensor; 5], start: [&HostTensor; 2], end: [&HostTensor; 2], _scratch: &mut HostTensor, out: [&mut HostTensor; 3]) -> Result<()> {
        let [dq, dk, dv] = out;
        let [mut ds, mut dz] = [(); 2].map(|_| HostTensor { dtype: DType::F32, shape: vec![0], data: Vec::new() });
        self.linattn_backward(p, bounds, x, start[0], start[1], [Some(end[0]), Some(end[1])], [dq, dk, dv, &mut ds, &mut dz])
    }

    fn linattn_chunk_states(&self, p: &LinAttnParams, table: &[u32], k: &HostTensor, v: &HostTensor, state: &mut HostTensor, z: &mut HostTensor, hs: &mut HostTensor, zs: &mut HostTensor) -> Result<()> {
        // The reference's two passes: each chunk's own sums (added to its slot, which starts at 0:
        // the caller's buffer may be unset), then the scan.
        let (pc, bounds, seq_chunk0) = chunk_table(p, table);
        hs.data.fill(0.0);
        zs.data.fill(0.0);
        let mut o = HostTensor { dtype: k.dtype, shape: vec![0], data: Vec::new() };
        self.linattn_recurrent(&LinAttnParams { aux: 1, ..pc }, k, k, v, bounds, hs, zs, &mut o)?;
        self.linattn_chunk_scan(&LinAttnParams { aux: 0, count0: pc.batch, ..*p }, seq_chunk0, state, z, hs, zs)
    }

    fn linattn_chunk_grad_states(&self, p: &LinAttnParams, table: &[u32], x: [&HostTensor; 5], start: [&HostTensor; 2], scratch: &HostTensor, d: [&mut HostTensor; 2], g: [&mut HostTensor; 2]) -> Result<()> {
        // The reference's two passes: each chunk's own sums (into slots that start at 0: the
        // caller's buffer may be unset), then the reverse scan.
        let (pc, bounds, seq_chunk0) = chunk_table(p, table);
        let [gs, gzs] = g;
        gs.data.fill(0.0);
        gzs.data.fill(0.0);
        let mut scratch = scratch.clone();
        self.linattn_chunk_dstate(&pc, bounds, x, start, &mut scratch, Some([&mut *gs, &mut *gzs]))?;
        let [ds, dz] = d;
        self.linattn_chunk_scan(&LinAttnParams { aux: 1, count0: pc.batch, ..*p }, seq_chunk0, ds, dz, gs, gzs)
    }

    fn linattn_chunk_scan(&self, p: &LinAttnParams, seq_chunk0: &[u32], state: &mut HostTensor, z: &mut HostTensor, hs: &mut HostTensor, zs: &mut HostTensor) -> Result<()> {
        let (heads, kv, k) = (p.heads as usize, (p.k * p.v) as usize, p.k as usize);
        for n in 0..p.batch as usize {
            for h in 0..heads {
                let nh = n * heads + h;
                for (own, chunks, width) in [(&mut state.data, &mut hs.data, kv), (&mut z.data, &mut zs.data, k)] {
                    for e in 0..width {
                        let mut acc = own[nh * width + e];
                        let range = seq_chunk0[n] as usize..seq_chunk0[n + 1] as usize;
                        // aux 1: from the last chunk back (the backward's gradients).
                        let order: Vec<usize> = if p.aux == 1 { range.rev().collect() } else { range.collect() };
                        for c in order {
                            let slot = &mut chunks[(c * heads + h) * width + e];
                            (acc, *slot) = (acc + *slot, acc);
                        }
                        own[nh * width + e] = acc;
                    }
                }
            }
        }
        Ok(())
    }

    fn linattn_recurrent(&self, p: &LinAttnParams, q: &HostTensor, k: &HostTensor, v: &HostTensor, starts: &[u32], state: &mut HostTensor, z: &mut HostTensor, o: &mut HostTensor) -> Result<()> {
        let d = p.descriptor();
        let n = p.batch as usize;
        let all: Vec<usize> = starts.iter().map(|&s| s as usize).collect();
        // Chunks (varlen 2) count their positions from their sequence's start.
        let offsets = (p.varlen == 2).then(|| &all[n + 1..2 * n + 1]);
        let (out, s, zf) = linattn::cpu::forward_varlen(&d, &all[..=n], offsets, &q.data, &k.data, &v.data, Some(&state.data), Some(&z.data), p.count0 as usize);
        if p.aux != 1 {
            for (dst, x) in o.data.iter_mut().zip(out) {
                *dst = o.dtype.round(x as f32);
            }
        }
        for (dst, x) in state.data.iter_mut().zip(s) {
            *dst = x as f32;
        }
        for (dst, x) in z.data.iter_mut().zip(zf) {
            *dst = x as f32;
        }
        Ok(())
    }

    fn graph_op(&self, kind: GraphKernel, p: &GraphParams, g: Option<&DeviceGraph<HostTensor>>, a: &GraphArgs<HostTensor>, out: &mut HostTensor, arg: Option<&mut HostTensor>) -> Result<()> {
        let host = || -> Result<graph::Graph> {
            let g = g.ok_or_else(|| Error::Invalid(format!("graph {kind:?}: the graph is missing")))?;
            Ok(graph::Graph::from_words(p.num_nodes as usize, &g.words.data))
        };
        let (d, heads) = (p.dim as usize, p.heads.max(1) as usize);
        fn data(t: Option<&HostTensor>) -> Result<&[f32]> {
            t.map(|t| &t.data[..]).ok_or_else(|| Error::Invalid("graph: an operand is missing".into()))
        }
        let y = match kind {
            GraphKernel::Gather => match a.w {
                Some(w) if p.has_weight != 0 => graph::cpu::gather_weighted(&host()?, data(a.x)?, &w.data, heads, d),
                _ => graph::cpu::gather_rows(&host()?, data(a.x)?, d),
            },
            GraphKernel::EdgeDot => graph::cpu::edge_dot(data(a.x)?, data(a.y)?, p.num_edges as usize, heads, d),
            GraphKernel::Spmm => graph::cpu::spmm(&host()?, data(a.x)?, a.w.map(|w| &w.data[..]), heads, d),
            GraphKernel::Sddmm => graph::cpu::sddmm(&host()?, data(a.x)?, data(a.y)?, heads, d),
            GraphKernel::EdgeCombine => {
                let act = crate::Activation::ALL.get(p.reduce as usize).copied().ok_or_else(|| Error::Invalid(format!("edge_mlp: activation code {}", p.reduce)))?;
                graph::cpu::edge_combine(&host()?, data(a.x)?, data(a.y)?, d, act)
            }
            GraphKernel::Softmax => graph::cpu::segment_softmax(&host()?, data(a.w)?, heads),
            GraphKernel::SoftmaxBackward => graph::cpu::segment_softmax_backward(&host()?, data(a.w)?, data(a.v)?, heads),
            GraphKernel::LayerNorm | GraphKernel::LayerNormBackward | GraphKernel::LayerNormParams => Cpu::layer_norm_op(kind, p, a, arg)?,
            GraphKernel::ScaleAdd => {
                let act = crate::Activation::ALL.get(p.reduce as usize).copied().ok_or_else(|| Error::Invalid(format!("scale_add: activation code {}", p.reduce)))?;
                let scale = if p.has_weight != 0 { Some(data(a.w)?) } else { None };
                let y = if p.has_y != 0 { Some(data(a.y)?) } else { None };
                // A bias [dim] is the addend broadcast over the rows.
                let add = y.map(|y| if p.has_y == 2 { y[..d].repeat(p.num_nodes as usize) } else { y.to_vec() });
                graph::cpu::scale_add(data(a.x)?, scale, add.as_deref(), p.num_nodes as usize, d, act)
            }
            GraphKernel::GateMean => graph::cpu::gate_mean(data(a.x)?, p.num_nodes as usize, d),
            GraphKernel::GateMeanBackward => graph::cpu::gate_mean_backward(data(a.x)?, data(a.w)?, p.num_nodes as usize, d),
            GraphKernel::ToF32 => data(a.x)?[..p.num_nodes as usize * d].iter().map(|&v| v as f64).collect(),
            GraphKernel::FromF32 => data(a.v)?[..p.num_nodes as usize * d].iter().map(|&v| v as f64).collect(),
            GraphKernel::SegmentReduce => match a.w {
                Some(w) if p.reduce == 0 && p.has_weight != 0 => graph::cpu::segment_sum_weighted(&host()?, data(a.x)?, &w.data, heads, d),
                _ => {
                    let reduce = [graph::Reduce::Sum, graph::Reduce::Mean, graph::Reduce::Max, graph::Reduce::Min][p.reduce as usize & 3];
                    let (y, args) = graph::cpu::segment_reduce(&host()?, data(a.x)?, d, reduce);
                    if let Some(arg) = arg {
                        for (dst, v) in arg.data.iter_mut().zip(args) {
                            *dst = f32::from_bits(v);
                        }
                    }
                    y
                }
            },
        };
        write_rounded(out, y)
    }

    fn batchnorm_backward(&self, p: &BnParams, x: &HostTensor, dy: &HostTensor, affine: &HostTensor, stats: &mut HostTensor, extra: Option<&HostTensor>, dx: &mut HostTensor) -> Result<()> {
        let c = p.channels as usize;
        let (d, bn) = bn_host(p, affine, &vec![0.0; c], &vec![1.0; c]);
        let (g, dg, db) = ffn::cpu::batchnorm_backward(&d, &x.data, &dy.data, &bn);
        for (k, (o, v)) in dx.data.iter_mut().zip(g).enumerate() {
            let e = extra.map_or(0.0, |t| t.data[k] as f64);
            *o = x.dtype.round((v + e) as f32);
        }
        for ch in 0..c {
            stats.data[4 * c + ch] = dg[ch] as f32;
            stats.data[5 * c + ch] = db[ch] as f32;
        }
        Ok(())
    }
}

impl Cpu {
    /// The LayerNorm kernels of `graph_op`: `y`, `dx` or `[dγ | dβ]`; the forward's
    /// `[mean | rstd]` into `arg`.
    fn layer_norm_op(kind: GraphKernel, p: &GraphParams, a: &GraphArgs<HostTensor>, arg: Option<&mut HostTensor>) -> Result<Vec<f64>> {
        let missing = || Error::Invalid("layer_norm: an operand is missing".into());
        let (x, affine) = (a.x.ok_or_else(missing)?, a.w.ok_or_else(missing)?);
        let (rows, c) = (p.num_nodes as usize, p.dim as usize);
        let (x, gamma) = (&x.data[..rows * c], &affine.data[..c]);
        Ok(match kind {
            GraphKernel::LayerNorm => {
                let (y, mean, rstd) = graph::cpu::layer_norm(x, gamma, &affine.data[c..2 * c], c, p.eps);
                if let Some(stats) = arg {
                    for (r, (m, s)) in mean.iter().zip(&rstd).enumerate() {
                        (stats.data[r], stats.data[rows + r]) = (*m as f32, *s as f32);
                    }
                }
                y
            }
            _ => {
                let dy = a.y.ok_or_else(missing)?;
                let (dx, dg, db) = graph::cpu::layer_norm_backward(x, &dy.data[..rows * c], gamma, c, p.eps);
                if kind == GraphKernel::LayerNormBackward { dx } else { dg.into_iter().chain(db).collect() }
            }
        })
    }

}

/// The host view of a BatchNorm launch (the reference takes `BatchNorm` values).
fn bn_host(p: &BnParams, affine: &HostTensor, mean: &[f32], var: &[f32]) -> (BatchNormDesc, BatchNorm) {
    let c = p.channels as usize;
    (
        BatchNormDesc { rows: p.rows as usize, channels: c, eps: p.eps, momentum: p.momentum },
        BatchNorm { gamma: affine.data[..c].to_vec(), beta: affine.data[c..2 * c].to_vec(), mean: mean[..c].to_vec(), var: var[..c].to_vec(), eps: p.eps },
    )
}

/// Stores an f64 result into `out`, rounded to its dtype.
fn write_rounded(out: &mut HostTensor, y: Vec<f64>) -> Result<()> {
    for (dst, v) in out.data.iter_mut().zip(y) {
        *dst = out.dtype.round(v as f32);
    }
    Ok(())
}

/// A chunk table `[C | chunk bounds (C + 1) | positions (C) | each sequence's first chunk]` split:
/// the chunks' parameters (varlen 2), the bounds with positions, and the sequences' chunk ranges.
fn chunk_table<'a>(p: &LinAttnParams, table: &'a [u32]) -> (LinAttnParams, &'a [u32], &'a [u32]) {
    let c = table[0] as usize;
    (LinAttnParams { batch: c as u32, varlen: 2, ..*p }, &table[1..2 * c + 2], &table[2 * c + 2..])
}
