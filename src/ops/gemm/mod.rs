//! GEMM with fused epilogue (SPEC §1), the base of every FFN kernel:
//! `C[m,n] = epi(α·Σ_k A[m,k]·B[n,k] + bias[n]) + β·R[m,n]`, `epi` applied to columns `n < act_cols`.
//!
//! The descriptor [`Gemm`] names shapes, layouts, strides and options; [`Gemm::validate`] checks it
//! and the operand lengths before anything runs. The CPU reference is in [`cpu`], the device
//! launchers in `wgpu.rs` and `cuda.rs` beside it; the kernels are `kernels/gemm.cu` and
//! `shaders/gemm.wgsl`.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::{Backend, DType, Error, Result};

const OP: &str = "gemm";

/// Activation of the epilogue (and its derivative in the backward helpers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `x`.
    Identity = 0,
    /// `max(x, 0)`.
    Relu = 1,
    /// `x·σ(x)`.
    Silu = 2,
    /// `x·Φ(x)`, the exact GELU (normal CDF through erf).
    GeluErf = 3,
    /// The tanh approximation of GELU.
    GeluTanh = 4,
    /// `max(x, 0.2·x)`: GAT's attention logits.
    LeakyRelu = 5,
}

impl Activation {
    /// Every activation, in discriminant order.
    pub const ALL: [Activation; 6] =
        [Activation::Identity, Activation::Relu, Activation::Silu, Activation::GeluErf, Activation::GeluTanh, Activation::LeakyRelu];

    /// The name that `FromStr`, the CLI's `--act` and the bench records use.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Silu => "silu",
            Activation::GeluErf => "gelu_erf",
            Activation::GeluTanh => "gelu_tanh",
            Activation::LeakyRelu => "leaky_relu",
        }
    }
}

impl std::str::FromStr for Activation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Activation::ALL
            .into_iter()
            .find(|a| a.name() == s || (s == "gelu" && *a == Activation::GeluErf) || (s == "none" && *a == Activation::Identity))
            .ok_or_else(|| Error::Invalid(format!("unknown activation '{s}' (identity, relu, silu, gelu_erf, gelu_tanh, leaky_relu)")))
    }
}

/// How A is stored: `MK` = `[M, K]` row-major (K contiguous), `KM` = `[K, M]` (A transposed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ALayout {
    /// `[M, K]`, K contiguous.
    MK,
    /// `[K, M]`, M contiguous (A transposed).
    KM,
}

/// How B is stored: `NK` = `[N, K]` (the PyTorch weight layout), `KN` = `[K, N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BLayout {
    /// `[N, K]`, K contiguous (the `[out, in]` weight layout).
    NK,
    /// `[K, N]`, N contiguous.
    KN,
}

impl std::str::FromStr for BLayout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "nk" | "NK" => Ok(BLayout::NK),
            "kn" | "KN" => Ok(BLayout::KN),
            _ => Err(Error::Invalid(format!("unknown B layout '{s}' (nk or kn)"))),
        }
    }
}

/// One strided 2-D operand inside a buffer, possibly batched: element `(row, col)` of batch `b`
/// is at `b·batch_stride + row·row_stride + col·col_stride` (one of the two strides is 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    /// Rows of one batch.
    pub rows: usize,
    /// Columns of one batch.
    pub cols: usize,
    /// Elements from one row to the next.
    pub row_stride: usize,
    /// Elements from one column to the next.
    pub col_stride: usize,
    /// Elements from one batch to the next (0 broadcasts one matrix to every batch).
    pub batch_stride: usize,
}

/// A buffer for a gradient written in `op`'s layout over `batch` batches: unset when that layout
/// covers every element, zero-filled when rows or batches leave gaps (which then read as 0).
fn alloc_in_layout<Be: Backend>(be: &Be, dtype: DType, op: &Operand, batch: usize) -> Result<Be::Buf> {
    let len = op.required_len(batch);
    if len == batch * op.rows * op.cols {
        be.alloc_uninit(dtype, len)
    } else {
        be.alloc(dtype, len)
    }
}

impl Operand {
    /// The number of elements a buffer must hold for this operand over `batch` batches.
    pub fn required_len(&self, batch: usize) -> usize {
        if self.rows == 0 || self.cols == 0 || batch == 0 {
            return 0;
        }
        // Saturating: a span past 2^64 reads as usize::MAX, which every length check refuses.
        let span = |n: usize, stride: usize| (n - 1).saturating_mul(stride);
        span(batch, self.batch_stride).saturating_add(span(self.rows, self.row_stride)).saturating_add(span(self.cols, self.col_stride)).saturating_add(1)
    }
    /// The element index of `(row, col)` of batch `b`.
    pub fn index(&self, b: usize, row: usize, col: usize) -> usize {
        b * self.batch_stride + row * self.row_stride + col * self.col_stride
    }
}

/// The GEMM descriptor. Build with [`Gemm::new`] and the builder methods, check with
/// [`Gemm::validate`]. Leading dimensions and batch strides default to the compact layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Gemm {
    /// Rows of A, C and R.
    pub m: usize,
    /// Columns of B (as `[N, K]`), C and R.
    pub n: usize,
    /// The reduction length.
    pub k: usize,
    /// Independent products, each operand at its batch stride.
    pub batch: usize,
    /// How A is stored.
    pub a_layout: ALayout,
    /// How B is stored.
    pub b_layout: BLayout,
    /// Row strides (elements) of A, B, C and R as stored; `None` = compact.
    pub lda: Option<usize>,
    /// B's row stride as stored; `None` = compact.
    pub ldb: Option<usize>,
    /// C's (and Z's) row stride; `None` = compact.
    pub ldc: Option<usize>,
    /// R's row stride; `None` = compact (N).
    pub ldr: Option<usize>,
    /// Element strides of the dimension that is contiguous by default (K of A in `MK`, M in `KM`;
    /// likewise for B; N of C and Z). 1 = contiguous. Larger values read and write interleaved
    /// data in place (BlockShuffle's stride-k gather and interleaved store).
    pub inner_a: usize,
    /// B's inner stride (see `inner_a`).
    pub inner_b: usize,
    /// C's and Z's inner stride (see `inner_a`).
    pub inner_c: usize,
    /// Bias element `n` of batch `b` is at `b·bias_batch_stride + n·bias_inner` (defaults 0 and 1:
    /// one `[N]` bias for every batch). An interleaved C takes a bias with the same interleave.
    pub bias_batch_stride: usize,
    /// Bias element stride within one batch's `[N]` (see `bias_batch_stride`).
    pub bias_inner: usize,
    /// Batch strides (elements); `None` = compact. A stride of 0 broadcasts the operand.
    pub stride_a: Option<usize>,
    /// B's batch stride; `None` = compact.
    pub stride_b: Option<usize>,
    /// C's (and Z's) batch stride; `None` = compact.
    pub stride_c: Option<usize>,
    /// R's batch stride; `None` = compact.
    pub stride_r: Option<usize>,
    /// The epilogue activation (on columns `< act_cols`).
    pub act: Activation,
    /// The activation applies to columns `n < act_cols` only; `None` = all columns.
    pub act_cols: Option<usize>,
    /// Scales the product before the bias: `α·A·B + bias`.
    pub alpha: f32,
    /// Scales the residual: `… + β·R`.
    pub beta: f32,
    /// Whether a bias `[N]` is added before the activation.
    pub bias: bool,
    /// Whether `β·R` is added after the activation.
    pub residual: bool,
    /// Element offsets of the operands inside the buffers handed to [`Backend::gemm`] (owned
    /// buffers). The low-level launchers take offsets through `BufferRef` / cudarc views instead.
    pub offsets: GemmOffsets,
}

/// Where each operand starts inside its buffer, in elements (Z shares C's offset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GemmOffsets {
    /// A's offset.
    pub a: usize,
    /// B's offset.
    pub b: usize,
    /// The bias's offset.
    pub bias: usize,
    /// R's offset.
    pub r: usize,
    /// C's (and Z's) offset.
    pub c: usize,
}

impl GemmOffsets {
    /// The lengths left after each offset, or a shape error naming the operand.
    #[allow(clippy::type_complexity)]
    pub(crate) fn remaining(&self, a: usize, b: usize, bias: Option<usize>, r: Option<usize>, c: usize) -> Result<(usize, usize, Option<usize>, Option<usize>, usize)> {
        let rest = |name: &str, len: usize, off: usize| {
            len.checked_sub(off).ok_or_else(|| Error::shape(OP, format!("{name} offset {off} is beyond its buffer of {len} elements")))
        };
        Ok((
            rest("A", a, self.a)?,
            rest("B", b, self.b)?,
            bias.map(|l| rest("bias", l, self.bias)).transpose()?,
            r.map(|l| rest("R", l, self.r)).transpose()?,
            rest("C", c, self.c)?,
        ))
    }
}

impl Gemm {
    /// `C [M, N] = A [M, K] · B [N, K]ᵀ`, one batch, compact layouts, identity epilogue, no bias or residual, α = β = 1.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Gemm {
            m,
            n,
            k,
            batch: 1,
            a_layout: ALayout::MK,
            b_layout: BLayout::NK,
            lda: None,
            ldb: None,
            ldc: None,
            ldr: None,
            inner_a: 1,
            inner_b: 1,
            inner_c: 1,
            bias_batch_stride: 0,
            bias_inner: 1,
            stride_a: None,
            stride_b: None,
            stride_c: None,
            stride_r: None,
            act: Activation::Identity,
            act_cols: None,
            alpha: 1.0,
            beta: 1.0,
            bias: false,
            residual: false,
            offsets: GemmOffsets::default(),
        }
    }
    /// Sets where each operand starts inside the buffers of [`Backend::gemm`].
    pub fn offsets(mut self, offsets: GemmOffsets) -> Self {
        self.offsets = offsets;
        self
    }
    /// Sets the batch count (compact batch strides unless [`Gemm::strides`] says otherwise).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }
    /// Sets A's layout.
    pub fn a_layout(mut self, l: ALayout) -> Self {
        self.a_layout = l;
        self
    }
    /// Sets B's layout.
    pub fn b_layout(mut self, l: BLayout) -> Self {
        self.b_layout = l;
        self
    }
    /// Sets the epilogue activation.
    pub fn act(mut self, act: Activation) -> Self {
        self.act = act;
        self
    }
    /// Applies the activation to columns `< cols` only (RePaViT's partial activation).
    pub fn act_cols(mut self, cols: usize) -> Self {
        self.act_cols = Some(cols);
        self
    }
    /// Sets α.
    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }
    /// Sets β (with [`Gemm::residual`]).
    pub fn beta(mut self, beta: f32) -> Self {
        self.beta = beta;
        self
    }
    /// Adds a bias `[N]` before the activation.
    pub fn bias(mut self, on: bool) -> Self {
        self.bias = on;
        self
    }
    /// Adds the residual `β·R`; `ldr` is its row stride (so R can be a column slice of a wider matrix).
    pub fn residual(mut self, ldr: Option<usize>) -> Self {
        self.residual = true;
        self.ldr = ldr;
        self
    }
    /// Sets A's row stride.
    pub fn lda(mut self, ld: usize) -> Self {
        self.lda = Some(ld);
        self
    }
    /// Sets B's row stride.
    pub fn ldb(mut self, ld: usize) -> Self {
        self.ldb = Some(ld);
        self
    }
    /// Sets C's row stride.
    pub fn ldc(mut self, ld: usize) -> Self {
        self.ldc = Some(ld);
        self
    }
    /// Sets the batch strides of A, B and C.
    pub fn strides(mut self, a: usize, b: usize, c: usize) -> Self {
        self.stride_a = Some(a);
        self.stride_b = Some(b);
        self.stride_c = Some(c);
        self
    }
    /// Element strides of the default-contiguous dimension of A, B and C (see the fields).
    pub fn inner_strides(mut self, a: usize, b: usize, c: usize) -> Self {
        self.inner_a = a;
        self.inner_b = b;
        self.inner_c = c;
        self
    }
    /// Bias strides (see the fields).
    pub fn bias_strides(mut self, batch_stride: usize, inner: usize) -> Self {
        self.bias_batch_stride = batch_stride;
        self.bias_inner = inner;
        self
    }
    /// The number of bias elements the descriptor reaches.
    pub fn bias_len(&self) -> usize {
        if self.n == 0 || self.batch == 0 {
            return 0;
        }
        (self.batch - 1).saturating_mul(self.bias_batch_stride).saturating_add((self.n - 1).saturating_mul(self.bias_inner.max(1))).saturating_add(1)
    }
    /// Sets R's batch stride.
    pub fn stride_r(mut self, r: usize) -> Self {
        self.stride_r = Some(r);
        self
    }

    /// The columns the activation applies to (`act_cols`, or N).
    pub fn act_cols_or_n(&self) -> usize {
        self.act_cols.unwrap_or(self.n)
    }

    /// A as an operand indexed `(m, k)`.
    pub fn a(&self) -> Operand {
        let (rows_stored, cols_stored) = match self.a_layout {
            ALayout::MK => (self.m, self.k),
            ALayout::KM => (self.k, self.m),
        };
        let inner = self.inner_a.max(1);
        let ld = self.lda.unwrap_or(cols_stored.saturating_mul(inner));
        let batch_stride = self.stride_a.unwrap_or(rows_stored.saturating_mul(ld));
        match self.a_layout {
            ALayout::MK => Operand { rows: self.m, cols: self.k, row_stride: ld, col_stride: inner, batch_stride },
            ALayout::KM => Operand { rows: self.m, cols: self.k, row_stride: inner, col_stride: ld, batch_stride },
        }
    }
    /// B as an operand indexed `(n, k)`.
    pub fn b(&self) -> Operand {
        let (rows_stored, cols_stored) = match self.b_layout {
            BLayout::NK => (self.n, self.k),
            BLayout::KN => (self.k, self.n),
        };
        let inner = self.inner_b.max(1);
        let ld = self.ldb.unwrap_or(cols_stored.saturating_mul(inner));
        let batch_stride = self.stride_b.unwrap_or(rows_stored.saturating_mul(ld));
        match self.b_layout {
            BLayout::NK => Operand { rows: self.n, cols: self.k, row_stride: ld, col_stride: inner, batch_stride },
            BLayout::KN => Operand { rows: self.n, cols: self.k, row_stride: inner, col_stride: ld, batch_stride },
        }
    }
    /// C (and the saved pre-activation Z, which shares its layout) indexed `(m, n)`.
    pub fn c(&self) -> Operand {
        let inner = self.inner_c.max(1);
        let ld = self.ldc.unwrap_or(self.n.saturating_mul(inner));
        Operand { rows: self.m, cols: self.n, row_stride: ld, col_stride: inner, batch_stride: self.stride_c.unwrap_or(self.m.saturating_mul(ld)) }
    }
    /// R indexed `(m, n)`.
    pub fn r(&self) -> Operand {
        let ld = self.ldr.unwrap_or(self.n);
        Operand { rows: self.m, cols: self.n, row_stride: ld, col_stride: 1, batch_stride: self.stride_r.unwrap_or(self.m.saturating_mul(ld)) }
    }

    /// `2·batch·M·N·K`: the product's floating-point operations.
    pub fn flops(&self) -> f64 {
        2.0 * self.batch as f64 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// Bytes a kernel must move at least: each input read once, C written once.
    pub fn min_bytes(&self, dtype: DType) -> f64 {
        let b_count = if self.stride_b == Some(0) { 1 } else { self.batch };
        let mut elems = self.batch * (self.m * self.k + self.m * self.n) + b_count * self.n * self.k;
        if self.bias {
            elems += self.n;
        }
        if self.residual {
            elems += self.batch * self.m * self.n;
        }
        (elems * dtype.size()) as f64
    }

    /// Checks the descriptor itself (not the buffers).
    pub fn validate(&self) -> Result<()> {
        if !self.alpha.is_finite() || !self.beta.is_finite() {
            return Err(Error::Invalid(format!("gemm: alpha ({}) and beta ({}) must be finite", self.alpha, self.beta)));
        }
        if self.act_cols_or_n() > self.n {
            return Err(Error::shape(OP, format!("act_cols {} > N {}", self.act_cols_or_n(), self.n)));
        }
        if self.inner_a == 0 || self.inner_b == 0 || self.inner_c == 0 {
            return Err(Error::shape(OP, "inner strides must be at least 1"));
        }
        let check_ld = |name: &str, ld: Option<usize>, len: usize, inner: usize| -> Result<()> {
            let min = (len.max(1) - 1).saturating_mul(inner).saturating_add(1);
            match ld {
                Some(ld) if ld < min => Err(Error::shape(OP, format!("{name} = {ld} is less than the row span {min}"))),
                _ => Ok(()),
            }
        };
        let (a_row, b_row) = (
            if self.a_layout == ALayout::MK { self.k } else { self.m },
            if self.b_layout == BLayout::NK { self.k } else { self.n },
        );
        check_ld("lda", self.lda, a_row, self.inner_a)?;
        check_ld("ldb", self.ldb, b_row, self.inner_b)?;
        // C with an inner stride may also be stored transposed (ldc below the column stride, e.g.
        // rows 1 apart): the overlap test below is what must hold then.
        if self.inner_c == 1 {
            check_ld("ldc", self.ldc, self.n, 1)?;
        }
        check_ld("ldr", self.ldr, self.n, 1)?;
        // Every element of C must be its own (no two (batch, row, column) share an address).
        let c = self.c();
        let mut dims: Vec<(usize, usize)> =
            [(c.batch_stride, self.batch), (c.row_stride, self.m), (c.col_stride, self.n)].into_iter().filter(|d| d.1 > 1).collect();
        dims.sort();
        let mut span = 0usize;
        for (stride, extent) in dims {
            if stride <= span {
                return Err(Error::shape(OP, format!("the strides of C ({}, {}, {}) make elements overlap", c.batch_stride, c.row_stride, c.col_stride)));
            }
            span = span.saturating_add(stride.saturating_mul(extent - 1));
        }
        let max = u32::MAX as usize;
        for (name, op) in [("A", self.a()), ("B", self.b()), ("C", self.c()), ("R", self.r())] {
            if op.required_len(self.batch) > max {
                return Err(Error::Limit(format!("gemm: operand {name} spans more than 2^32 elements")));
            }
        }
        if self.m > 65535 * 128 || self.n > 65535 * 128 || self.batch > 65535 || self.k > max {
            return Err(Error::Limit("gemm: M, N over 8M, K over 2^32 or batch over 65535".into()));
        }
        Ok(())
    }

    /// Checks the descriptor and the lengths (in elements) of the operands a call gets.
    pub fn validate_lens(&self, a: usize, b: usize, bias: Option<usize>, r: Option<usize>, c: usize, z: Option<usize>) -> Result<()> {
        self.validate()?;
        let need = |name: &str, have: usize, op: Operand| -> Result<()> {
            let n = op.required_len(self.batch);
            if have < n {
                Err(Error::shape(OP, format!("{name} holds {have} elements, the descriptor needs {n}")))
            } else {
                Ok(())
            }
        };
        need("A", a, self.a())?;
        need("B", b, self.b())?;
        need("C", c, self.c())?;
        match (self.bias, bias) {
            (true, Some(len)) if len < self.bias_len() => {
                return Err(Error::shape(OP, format!("bias holds {len} elements, the descriptor reaches {}", self.bias_len())))
            }
            (true, None) => return Err(Error::shape(OP, "the descriptor has a bias but none was given")),
            (false, Some(_)) => return Err(Error::shape(OP, "a bias was given but the descriptor has none (set .bias(true))")),
            _ => {}
        }
        match (self.residual, r) {
            (true, Some(len)) => need("R", len, self.r())?,
            (true, None) => return Err(Error::shape(OP, "the descriptor has a residual but none was given")),
            (false, Some(_)) => return Err(Error::shape(OP, "a residual was given but the descriptor has none")),
            _ => {}
        }
        if let Some(z) = z {
            need("Z (saved pre-activation)", z, self.c())?;
        }
        Ok(())
    }

    /// The kernel parameter block shared by the CUDA and WGSL kernels (offsets are added by the
    /// launcher where the backend needs them).
    pub fn params(&self) -> GemmParams {
        let (a, b, c, r) = (self.a(), self.b(), self.c(), self.r());
        let lda = if self.a_layout == ALayout::MK { a.row_stride } else { a.col_stride };
        let ldb = if self.b_layout == BLayout::NK { b.row_stride } else { b.col_stride };
        GemmParams {
            m: self.m as u32,
            n: self.n as u32,
            k: self.k as u32,
            batch: self.batch as u32,
            lda: lda as u32,
            ldb: ldb as u32,
            ldc: c.row_stride as u32,
            ldr: r.row_stride as u32,
            sa: a.batch_stride as u32,
            sb: b.batch_stride as u32,
            sc: c.batch_stride as u32,
            sr: r.batch_stride as u32,
            a_km: (self.a_layout == ALayout::KM) as u32,
            b_kn: (self.b_layout == BLayout::KN) as u32,
            act: self.act as u32,
            act_cols: self.act_cols_or_n() as u32,
            has_bias: self.bias as u32,
            has_r: self.residual as u32,
            has_z: 0,
            alpha: self.alpha,
            beta: self.beta,
            off_a: 0,
            off_b: 0,
            off_bias: 0,
            off_r: 0,
            off_c: 0,
            off_z: 0,
            a_cs: self.inner_a as u32,
            b_cs: self.inner_b as u32,
            c_cs: self.inner_c as u32,
            bias_bs: self.bias_batch_stride as u32,
            bias_cs: self.bias_inner as u32,
            kc: 0,
            splits: 0,
            vec_a: 0,
            vec_b: 0,
        }
    }
}

/// Rows per chunk of the column sums' first pass (both backends pass it to their kernels): a long
/// column (a bias gradient over tens of thousands of rows) spreads over many workgroups, whose
/// f32 partials a second pass adds in order.
pub const COL_SUM_ROWS: usize = 1024;

/// Split-K for a single product whose output tiles (`tile`×`tile`) would be under a quarter of
/// `target` workgroups while K is long (weight gradients summed over many rows): slices of K
/// (multiples of 32, at least 512 long) spread over about `target` workgroups, then one pass adds
/// the slices in order and applies the epilogue. Returns the slice length and the slice count
/// (1: no split).
pub fn split_k(desc: &Gemm, tile: usize, target: usize) -> (usize, usize) {
    let tiles = desc.m.div_ceil(tile) * desc.n.div_ceil(tile);
    if desc.batch != 1 || tiles * 4 > target || desc.k < 2048 {
        return (desc.k, 1);
    }
    let want = (target / tiles).min(desc.k / 512).max(1);
    let kc = desc.k.div_ceil(want).next_multiple_of(32);
    (kc, desc.k.div_ceil(kc))
}

/// The parameter block of the GEMM kernels (same field order in `kernels/gemm.cu` and
/// `shaders/gemm.wgsl`). Strides and offsets are in elements.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GemmParams {
    /// M.
    pub m: u32,
    /// N.
    pub n: u32,
    /// K.
    pub k: u32,
    /// The batch count.
    pub batch: u32,
    /// A's row stride.
    pub lda: u32,
    /// B's row stride.
    pub ldb: u32,
    /// C's and Z's row stride.
    pub ldc: u32,
    /// R's row stride.
    pub ldr: u32,
    /// A's batch stride.
    pub sa: u32,
    /// B's batch stride.
    pub sb: u32,
    /// C's and Z's batch stride.
    pub sc: u32,
    /// R's batch stride.
    pub sr: u32,
    /// 1 when A is stored `[K, M]`.
    pub a_km: u32,
    /// 1 when B is stored `[K, N]`.
    pub b_kn: u32,
    /// The activation's discriminant.
    pub act: u32,
    /// The activation applies to columns `< act_cols`.
    pub act_cols: u32,
    /// 1 with a bias.
    pub has_bias: u32,
    /// 1 with a residual.
    pub has_r: u32,
    /// 1 when the pre-activation Z is written.
    pub has_z: u32,
    /// α.
    pub alpha: f32,
    /// β.
    pub beta: f32,
    /// A's offset.
    pub off_a: u32,
    /// B's offset.
    pub off_b: u32,
    /// The bias's offset.
    pub off_bias: u32,
    /// R's offset.
    pub off_r: u32,
    /// C's offset.
    pub off_c: u32,
    /// Z's offset.
    pub off_z: u32,
    /// Inner (default-contiguous dimension) element strides of A, B and C.
    pub a_cs: u32,
    /// B's inner stride.
    pub b_cs: u32,
    /// C's and Z's inner stride.
    pub c_cs: u32,
    /// Bias batch stride and inner stride.
    pub bias_bs: u32,
    /// The bias's inner stride.
    pub bias_cs: u32,
    /// Split-K (WGSL; CUDA passes them as kernel arguments): the K slice length and the slice
    /// count, 0 without a split.
    pub kc: u32,
    /// The split-K slice count.
    pub splits: u32,
    /// WGSL: 1 when A's K slabs take 16-byte loads (set by the wgpu launcher; see
    /// `stage_slab` in `shaders/gemm.wgsl`). Unused by CUDA.
    pub vec_a: u32,
    /// The same for B.
    pub vec_b: u32,
}

impl GemmParams {
    /// Whether every row of operand A (`b` false) or B starts a 16-byte word, given that the
    /// operand itself does: the dimension stored contiguously by default (K for `[M, K]` /
    /// `[N, K]`, M or N for `[K, M]` / `[K, N]`) has stride 1, and the row stride and, with more
    /// than one batch, the batch stride are multiples of the elements in 16 bytes. Both backends'
    /// 16-byte operand loads take this rule (CUDA's copies, wgpu's slab loads).
    pub fn rows_16b(&self, b: bool, dtype: DType) -> bool {
        let per16 = (16 / dtype.size()) as u32;
        let (inner, ld, stride) = if b { (self.b_cs, self.ldb, self.sb) } else { (self.a_cs, self.lda, self.sa) };
        inner == 1 && ld % per16 == 0 && (self.batch == 1 || stride % per16 == 0)
    }
}

/// Gradients from [`gemm_backward`]. `da` and `db` have exactly the layouts of A and B (their
/// strides, inner strides and batch strides, at offset 0; elements outside the operand are zero);
/// `dbias` is `[N]` summed over batches and rows; `dr = β·dC` is left to the caller.
pub struct GemmGrads<T> {
    /// dA, in A's layout.
    pub da: T,
    /// dB, in B's layout.
    pub db: T,
    /// dbias `[N]`, where the forward had a bias.
    pub dbias: Option<T>,
}

/// The descriptor of the element-wise `dC' = dC ⊙ act'(Z)` pass on columns `< act_cols`.
#[derive(Clone, Copy, Debug)]
pub struct ActGrad {
    /// Rows of dC and Z.
    pub rows: usize,
    /// Columns of dC and Z.
    pub cols: usize,
    /// The forward's activation.
    pub act: Activation,
    /// Columns `< act_cols` take the derivative; the rest pass dC through.
    pub act_cols: usize,
}

impl ActGrad {
    /// Checks the lengths of dC, Z and the output (each compact `[rows, cols]`, within 32-bit
    /// indexing); returns the element count.
    pub fn check_lens(&self, dc: usize, z: usize, out: usize) -> Result<usize> {
        let n = crate::error::elems("act_grad", &[self.rows, self.cols])?;
        if dc < n || z < n || out < n {
            return Err(Error::shape("act_grad", format!("buffers must hold {n} elements")));
        }
        Ok(n)
    }
}

/// Checks the lengths of a column sum's `x` (compact `[rows, cols]`, within 32-bit indexing) and
/// `out` (`[cols]`).
pub fn check_col_sum(rows: usize, cols: usize, x: usize, out: usize) -> Result<()> {
    let n = crate::error::elems("col_sum", &[rows, cols])?;
    if x < n || out < cols {
        return Err(Error::shape("col_sum", format!("x must hold {n} elements and out {cols}")));
    }
    Ok(())
}

/// Backward of [`Gemm`] (SPEC §1 backward helpers): `dC' = dC ⊙ act'(Z)`, then
/// `dA = α·dC'·B`, `dB = α·dC'ᵀ·A`, `dbias = Σ dC'`. `z` is the pre-activation saved by the
/// forward (needed unless the activation is identity); `dc` has C's layout (compact `[batch, M, N]`
/// required when there is an activation or a bias).
/// The same composition runs on every backend: one element-wise pass, one column sum and two
/// GEMMs with the layouts flipped (no transposes are materialised).
pub fn gemm_backward<Be: Backend>(
    be: &Be,
    desc: &Gemm,
    a: &Be::Buf,
    b: &Be::Buf,
    z: Option<&Be::Buf>,
    dc: &Be::Buf,
) -> Result<GemmGrads<Be::Buf>> {
    gemm_backward_plus(be, desc, a, b, z, dc, None)
}

/// [`gemm_backward`] with a gradient that reaches A another way added into dA by the dA GEMM's
/// epilogue (`dA = α·dC'·B + extra`, e.g. a residual connection's `dY`): `extra` has A's layout
/// (A stored `[M, K]` with contiguous rows).
pub fn gemm_backward_plus<Be: Backend>(
    be: &Be,
    desc: &Gemm,
    a: &Be::Buf,
    b: &Be::Buf,
    z: Option<&Be::Buf>,
    dc: &Be::Buf,
    extra_da: Option<&Be::Buf>,
) -> Result<GemmGrads<Be::Buf>> {
    gemm_backward_da_in(be, desc, desc, a, b, z, dc, extra_da)
}

/// [`gemm_backward_plus`] for a product whose A the forward read in one layout (`desc`'s, which
/// the dB product reads `a` in) while dA is wanted in another: `da_layout`'s A (same M, K, batch
/// and A layout, other strides). BlockShuffle's second product reads the middle activation
/// gathered per output block, and the first product's backward wants its gradient in the order
/// the first product's blocks produce it.
#[allow(clippy::too_many_arguments)]
pub fn gemm_backward_da_in<Be: Backend>(
    be: &Be,
    desc: &Gemm,
    da_layout: &Gemm,
    a: &Be::Buf,
    b: &Be::Buf,
    z: Option<&Be::Buf>,
    dc: &Be::Buf,
    extra_da: Option<&Be::Buf>,
) -> Result<GemmGrads<Be::Buf>> {
    desc.validate()?;
    da_layout.validate()?;
    if (da_layout.m, da_layout.k, da_layout.batch, da_layout.a_layout) != (desc.m, desc.k, desc.batch, desc.a_layout) {
        return Err(Error::shape(OP, "gemm backward: dA's layout must describe an A of the same shape"));
    }
    if extra_da.is_some() && desc.a_layout != ALayout::MK {
        return Err(Error::Unsupported("gemm backward: an extra dA term needs A stored [M, K]".into()));
    }
    let dtype = be.dtype_of(dc);
    let (m, n, k, batch) = (desc.m, desc.n, desc.k, desc.batch);
    let c_op = desc.c();
    let act_cols = desc.act_cols_or_n();
    let needs_act = desc.act != Activation::Identity && act_cols > 0;
    let shared_bias = desc.bias_batch_stride == 0 && desc.bias_inner == 1;
    // The element-wise and column passes see dC as a compact matrix: either [batch·M, N]
    // (batches stacked), or [M, batch·N] when every row of C holds all batches side by side
    // (BlockShuffle's interleaved store) and the bias is laid out like such a row.
    let stacked = c_op.row_stride == n && c_op.col_stride == 1 && (batch == 1 || c_op.batch_stride == m * n) && shared_bias;
    let side_by_side = c_op.row_stride == batch * n
        && ((c_op.batch_stride == 1 && c_op.col_stride == batch) || (c_op.batch_stride == n && c_op.col_stride == 1))
        && (!desc.bias || (desc.bias_batch_stride == c_op.batch_stride && desc.bias_inner == c_op.col_stride))
        && (!needs_act || act_cols == n);
    let (rows_v, cols_v) = if stacked { (batch * m, n) } else { (m, batch * n) };
    if desc.offsets.c != 0 || ((needs_act || desc.bias) && !stacked && !side_by_side) {
        return Err(Error::Unsupported(
            "gemm backward: dC (and Z) must be at offset 0 and, with an activation or a bias, form one compact matrix \
             (batches stacked, or side by side in each row with a matching bias)"
                .into(),
        ));
    }
    if batch > 1 && (desc.stride_b == Some(0) || desc.stride_a == Some(0)) {
        return Err(Error::Unsupported("gemm backward: a broadcast (stride 0) operand needs a batch reduction of its gradient".into()));
    }
    if be.len_of(dc) < c_op.required_len(batch) {
        return Err(Error::shape(OP, format!("dC holds {} elements, needs {}", be.len_of(dc), c_op.required_len(batch))));
    }
    let dcp_owned;
    // dC' is read with C's layout (row stride, inner stride, batch stride).
    let (dc_ld, dc_inner, dc_bs) = (c_op.row_stride, c_op.col_stride, c_op.batch_stride);
    let dcp = if !needs_act {
        dc
    } else {
        let z = z.ok_or_else(|| Error::shape(OP, "backward with an activation needs the saved pre-activation Z"))?;
        if be.len_of(z) < desc.c().required_len(batch) {
            return Err(Error::shape(OP, "Z is shorter than C"));
        }
        let mut out = be.alloc_uninit(dtype, batch * m * n)?;
        let act_cols_v = if stacked { act_cols } else { cols_v };
        be.act_grad(&ActGrad { rows: rows_v, cols: cols_v, act: desc.act, act_cols: act_cols_v }, dc, z, &mut out)?;
        dcp_owned = out;
        &dcp_owned
    };
    let dbias = if desc.bias {
        let mut out = be.alloc_uninit(dtype, cols_v)?;
        be.col_sum(rows_v, cols_v, dcp, &mut out)?;
        Some(out)
    } else {
        None
    };
    // dA and dB are written in exactly the layouts of A and B (strides, inner strides, batches),
    // so a layer whose operands are slices of larger tensors gets its gradients in place.
    let (a_op, b_op, da_op) = (desc.a(), desc.b(), da_layout.a());
    let a_ld = if desc.a_layout == ALayout::MK { a_op.row_stride } else { a_op.col_stride };
    let da_ld = if desc.a_layout == ALayout::MK { da_op.row_stride } else { da_op.col_stride };
    let b_ld = if desc.b_layout == BLayout::NK { b_op.row_stride } else { b_op.col_stride };
    let mut da = alloc_in_layout(be, dtype, &da_op, batch)?;
    if desc.a_layout == ALayout::KM {
        // dA stored [K, M]: compute dAᵀ[k,m] = α Σ_n B[n,k]·dC'[m,n].
        let mut d = Gemm::new(k, m, n).batch(batch).alpha(desc.alpha).beta(0.0).b_layout(BLayout::NK);
        d.a_layout = if desc.b_layout == BLayout::NK { ALayout::KM } else { ALayout::MK };
        d.lda = Some(b_ld);
        d.inner_a = desc.inner_b;
        d.stride_a = Some(b_op.batch_stride);
        d.offsets.a = desc.offsets.b;
        (d.ldb, d.inner_b, d.stride_b) = (Some(dc_ld), dc_inner, Some(dc_bs));
        (d.ldc, d.inner_c, d.stride_c) = (Some(da_ld), da_layout.inner_a, Some(da_op.batch_stride));
        be.gemm(&d, b, dcp, None, None, &mut da, None)?;
    } else {
        // dA[m,k] = α Σ_n dC'[m,n]·B[n,k]: B read with its layout flipped (its N is the reduction).
        let mut d = Gemm::new(m, k, n).batch(batch).alpha(desc.alpha).beta(0.0);
        d.b_layout = if desc.b_layout == BLayout::NK { BLayout::KN } else { BLayout::NK };
        d.ldb = Some(b_ld);
        d.inner_b = desc.inner_b;
        d.stride_b = Some(b_op.batch_stride);
        d.offsets.b = desc.offsets.b;
        (d.lda, d.inner_a, d.stride_a) = (Some(dc_ld), dc_inner, Some(dc_bs));
        (d.ldc, d.inner_c, d.stride_c) = (Some(da_ld), da_layout.inner_a, Some(da_op.batch_stride));
        if extra_da.is_some() {
            if da_layout.inner_a != 1 {
                return Err(Error::Unsupported("gemm backward: an extra dA term needs A's rows contiguous".into()));
            }
            d = d.residual(Some(da_ld)).stride_r(da_op.batch_stride).beta(1.0);
        }
        be.gemm(&d, dcp, b, None, extra_da, &mut da, None)?;
    }
    // dB: reduction over M; dC' read as KM (its M is the reduction), A read with its own strides.
    let mut db = alloc_in_layout(be, dtype, &b_op, batch)?;
    if desc.b_layout == BLayout::NK {
        // dB[n,k] = α Σ_m dC'[m,n]·A[m,k]
        let a_as_b = if desc.a_layout == ALayout::MK { BLayout::KN } else { BLayout::NK };
        let mut d = Gemm::new(n, k, m).batch(batch).alpha(desc.alpha).beta(0.0).a_layout(ALayout::KM).b_layout(a_as_b);
        d.ldb = Some(a_ld);
        d.inner_b = desc.inner_a;
        d.stride_b = Some(a_op.batch_stride);
        d.offsets.b = desc.offsets.a;
        (d.lda, d.inner_a, d.stride_a) = (Some(dc_ld), dc_inner, Some(dc_bs));
        (d.ldc, d.inner_c, d.stride_c) = (Some(b_ld), desc.inner_b, Some(b_op.batch_stride));
        be.gemm(&d, dcp, a, None, None, &mut db, None)?;
    } else {
        // dB[k,n] = α Σ_m A[m,k]·dC'[m,n]
        let a_as_a = if desc.a_layout == ALayout::MK { ALayout::KM } else { ALayout::MK };
        let mut d = Gemm::new(k, n, m).batch(batch).alpha(desc.alpha).beta(0.0).a_layout(a_as_a).b_layout(BLayout::KN);
        d.lda = Some(a_ld);
        d.inner_a = desc.inner_a;
        d.stride_a = Some(a_op.batch_stride);
        d.offsets.a = desc.offsets.a;
        (d.ldb, d.inner_b, d.stride_b) = (Some(dc_ld), dc_inner, Some(dc_bs));
        (d.ldc, d.inner_c, d.stride_c) = (Some(b_ld), desc.inner_b, Some(b_op.batch_stride));
        be.gemm(&d, a, dcp, None, None, &mut db, None)?;
    }
    Ok(GemmGrads { da, db, dbias })
}

/// Host-side inputs of one GEMM call (what tests, `ffkern check` and `ffkern run` use).
#[derive(Clone, Debug)]
pub struct GemmInputs {
    /// A in its layout.
    pub a: crate::HostTensor,
    /// B in its layout.
    pub b: crate::HostTensor,
    /// The bias, where the descriptor has one.
    pub bias: Option<crate::HostTensor>,
    /// R, where the descriptor has a residual.
    pub r: Option<crate::HostTensor>,
}

impl GemmInputs {
    /// Seeded random inputs (never zeros) of exactly the lengths the descriptor needs.
    pub fn random(desc: &Gemm, dtype: DType, seed: u64) -> Self {
        let t = |len: usize, s: u64| crate::HostTensor::random(dtype, vec![len.max(1)], seed.wrapping_mul(31).wrapping_add(s));
        GemmInputs {
            a: t(desc.a().required_len(desc.batch), 1),
            b: t(desc.b().required_len(desc.batch), 2),
            bias: desc.bias.then(|| t(desc.bias_len(), 3)),
            r: desc.residual.then(|| t(desc.r().required_len(desc.batch), 4)),
        }
    }

    /// The CPU reference `(C, Z)`, compact `[batch, M, N]`.
    pub fn reference(&self, desc: &Gemm) -> (Vec<f64>, Vec<f64>) {
        cpu::forward(desc, &self.a.data, &self.b.data, self.bias.as_ref().map(|t| &t.data[..]), self.r.as_ref().map(|t| &t.data[..]))
    }

    /// The CPU reference backward `(dA, dB, dbias)` from `dc` (in C's layout), starting from the
    /// pre-activation rounded to the storage dtype (what a device saves and reads back).
    pub fn reference_backward(&self, desc: &Gemm, dc: &crate::HostTensor) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let dtype = self.a.dtype;
        let (_, z) = self.reference(desc);
        let z: Vec<f64> = z.iter().map(|&v| dtype.round(v as f32) as f64).collect();
        let co = desc.c();
        let mut compact = Vec::with_capacity(desc.batch * desc.m * desc.n);
        for bt in 0..desc.batch {
            for i in 0..desc.m {
                for j in 0..desc.n {
                    compact.push(dc.data[co.index(bt, i, j)] as f64);
                }
            }
        }
        cpu::backward(desc, &self.a.data, &self.b.data, &z, &compact)
    }
}

/// What [`run_host`] returns: C and Z compact `[batch, M, N]`, and the whole C buffer as left by
/// the kernel (its gaps, if `ldc > N`, must still hold the NaN poison).
pub struct GemmOutputs {
    /// C, compact `[batch, M, N]`.
    pub c: Vec<f32>,
    /// Z, compact, when it was requested.
    pub z: Option<Vec<f32>>,
    /// The whole C buffer as the kernel left it.
    pub c_buffer: Vec<f32>,
}

/// Uploads, runs the forward on `be` with NaN-poisoned outputs, downloads.
pub fn run_host<Be: Backend>(be: &Be, desc: &Gemm, x: &GemmInputs, save_z: bool) -> Result<GemmOutputs> {
    let dtype = x.a.dtype;
    let c_len = desc.c().required_len(desc.batch).max(1);
    let poison = crate::HostTensor { dtype, shape: vec![c_len], data: vec![f32::NAN; c_len] };
    let (a, b) = (be.upload(&x.a)?, be.upload(&x.b)?);
    let bias = x.bias.as_ref().map(|t| be.upload(t)).transpose()?;
    let r = x.r.as_ref().map(|t| be.upload(t)).transpose()?;
    let mut c = be.upload(&poison)?;
    let mut z = if save_z { Some(be.upload(&poison)?) } else { None };
    be.gemm(desc, &a, &b, bias.as_ref(), r.as_ref(), &mut c, z.as_mut())?;
    let c_buffer = be.download(&c)?.data;
    let co = desc.c();
    let compact = |buf: &[f32]| {
        let mut out = Vec::with_capacity(desc.batch * desc.m * desc.n);
        for bt in 0..desc.batch {
            for i in 0..desc.m {
                for j in 0..desc.n {
                    out.push(buf[co.index(bt, i, j)]);
                }
            }
        }
        out
    };
    let z = match z {
        Some(z) => Some(compact(&be.download(&z)?.data)),
        None => None,
    };
    Ok(GemmOutputs { c: compact(&c_buffer), z, c_buffer })
}

/// Runs forward (saving Z) then [`gemm_backward`] on `be`; returns `(dA, dB, dbias)` as host values.
#[allow(clippy::type_complexity)]
pub fn backward_host<Be: Backend>(
    be: &Be,
    desc: &Gemm,
    x: &GemmInputs,
    dc: &crate::HostTensor,
) -> Result<(Vec<f32>, Vec<f32>, Option<Vec<f32>>)> {
    let (a, b) = (be.upload(&x.a)?, be.upload(&x.b)?);
    let bias = x.bias.as_ref().map(|t| be.upload(t)).transpose()?;
    let r = x.r.as_ref().map(|t| be.upload(t)).transpose()?;
    let c_len = desc.c().required_len(desc.batch).max(1);
    let mut c = be.alloc(x.a.dtype, c_len)?;
    let mut z = be.alloc(x.a.dtype, c_len)?;
    be.gemm(desc, &a, &b, bias.as_ref(), r.as_ref(), &mut c, Some(&mut z))?;
    let dc = be.upload(dc)?;
    let g = gemm_backward(be, desc, &a, &b, Some(&z), &dc)?;
    let dbias = match &g.dbias {
        Some(t) => Some(be.download(t)?.data),
        None => None,
    };
    Ok((be.download(&g.da)?.data, be.download(&g.db)?.data, dbias))
}

// SAFETY: GemmParams is repr(C) plain old data (u32 and f32 fields), laid out like the CUDA struct.
#[cfg(feature = "cuda")]
unsafe impl cudarc::driver::DeviceRepr for GemmParams {}
