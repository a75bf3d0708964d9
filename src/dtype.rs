//! Storage dtypes and the host tensor that tests, the CLI and the CPU reference use.

use crate::{Error, Result};
use half::{bf16, f16};

/// A storage dtype. Arithmetic always accumulates in f32 on devices and f64 in the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16 (f32's exponent, 8 significand bits).
    BF16,
}

impl DType {
    /// Every dtype.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// The bytes of `len` elements, or a limit error where that passes 2^64.
    pub fn bytes(self, len: usize) -> Result<usize> {
        len.checked_mul(self.size()).ok_or_else(|| Error::Limit(format!("{len} elements of {self} pass 2^64 bytes")))
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// `f32`, `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// The SPEC's budget on `rms_ratio` for outputs of this dtype.
    pub fn budget(self) -> f64 {
        match self {
            DType::F32 => 1e-5,
            DType::F16 => 2e-3,
            DType::BF16 => 1e-2,
        }
    }

    /// Rounds an f32 value to the nearest value of this dtype (returned as f32).
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::F16 => f16::from_f32(x).to_f32(),
            DType::BF16 => bf16::from_f32(x).to_f32(),
        }
    }

    /// Encodes values into little-endian storage bytes of this dtype.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => bytemuck::cast_slice(values).to_vec(),
            DType::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
            DType::BF16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        }
    }

    /// Decodes little-endian storage bytes of this dtype into f32 values.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        }
    }
}

impl std::str::FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            other => Err(Error::Invalid(format!("unknown dtype '{other}' (expected f32, f16 or bf16)"))),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A tensor on the host: values held as f32 but always exactly representable in `dtype`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// The storage dtype (values are held as f32, rounded to it).
    pub dtype: DType,
    /// The shape (its product is `data.len()`).
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Builds a tensor, rounding every value to `dtype`.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            let holds = n.map_or("more than 2^64".to_string(), |n| n.to_string());
            return Err(Error::shape("tensor", format!("shape {shape:?} holds {holds} values, got {}", data.len())));
        }
        let data = data.into_iter().map(|v| dtype.round(v)).collect();
        Ok(HostTensor { dtype, shape, data })
    }

    /// Seeded uniform values in [-1, 1) (never zeros), rounded to `dtype`.
    pub fn random(dtype: DType, shape: Vec<usize>, seed: u64) -> Self {
        let n: usize = shape.iter().product();
        let mut rng = SplitMix64::new(seed);
        let data = (0..n).map(|_| dtype.round(rng.uniform() * 2.0 - 1.0)).collect();
        HostTensor { dtype, shape, data }
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The values encoded in the dtype, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.dtype.encode(&self.data)
    }
}

/// SplitMix64: the seeded generator for test and benchmark inputs.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    /// The next 64-bit word.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }
}

/// The SPEC's comparison: `rms_ratio = ‖out − ref‖₂ / ‖ref‖₂` and `max_abs`, with the reference
/// first rounded to the output dtype. A non-finite output where the reference is finite makes
/// `rms_ratio` infinite.
#[derive(Clone, Copy, Debug)]
pub struct Compare {
    /// RMS error over the reference's RMS.
    pub rms_ratio: f64,
    /// The largest absolute error.
    pub max_abs: f64,
}

impl Compare {
    /// Compares `out` with the f64 `reference` (rounded to a 16-bit `dtype` first); different lengths, or a non-finite output where the reference is finite, give infinity.
    pub fn new(out: &[f32], reference: &[f64], dtype: DType) -> Compare {
        let mut num = 0.0f64;
        let mut den = 0.0f64;
        let mut max_abs = 0.0f64;
        let mut bad = out.len() != reference.len();
        for (&o, &r) in out.iter().zip(reference) {
            let r = if dtype == DType::F32 { r } else { dtype.round(r as f32) as f64 };
            if !o.is_finite() && r.is_finite() {
                bad = true;
                continue;
            }
            let d = o as f64 - r;
            num += d * d;
            den += r * r;
            max_abs = max_abs.max(d.abs());
        }
        let rms_ratio = if bad {
            f64::INFINITY
        } else if den == 0.0 {
            if num == 0.0 { 0.0 } else { f64::INFINITY }
        } else {
            (num / den).sqrt()
        };
        Compare { rms_ratio, max_abs: if bad { f64::INFINITY } else { max_abs } }
    }

    /// Whether `rms_ratio` is within `budget`.
    pub fn passes(&self, budget: f64) -> bool {
        self.rms_ratio <= budget
    }
}
