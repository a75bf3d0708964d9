//! The one error type of ffkern. Every fallible call returns `ffkern::Result`.

use std::fmt;

/// Everything that can go wrong in ffkern. Bad user input is always one of these, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes, strides or buffer lengths that do not fit the op's descriptor.
    #[error("{op}: shape error: {msg}")]
    Shape {
        /// The op.
        op: &'static str,
        /// What does not fit.
        msg: String,
    },
    /// A dtype that does not match the descriptor or the other operands.
    #[error("{op}: dtype error: {msg}")]
    Dtype {
        /// The op.
        op: &'static str,
        /// Which dtypes disagree.
        msg: String,
    },
    /// The backend or device lacks something this call needs (named in the message).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A device limit (buffer size, grid size, ...) would be exceeded.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// An index in user data is out of range.
    #[error("index out of range: {0}")]
    Index(String),
    /// The backend is not present on this machine (no adapter, no driver, feature off).
    #[error("backend {backend} unavailable: {reason}")]
    BackendUnavailable {
        /// `cuda` or `wgpu`.
        backend: &'static str,
        /// Why it could not open.
        reason: String,
    },
    /// An error reported by the driver or the GPU API, with what ffkern was doing.
    #[error("{context}: {message}")]
    Driver {
        /// What ffkern was doing.
        context: String,
        /// The driver's or API's message.
        message: String,
    },
    /// Bad argument values (NaN scalars, unknown names, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// File input/output (safetensors files of `ffkern run`).
    #[error("{context}: {source}")]
    Io {
        /// The file and what was done with it.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// `Result` with ffkern's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
    pub(crate) fn dtype(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Dtype { op, msg: msg.into() }
    }
    /// Wraps a driver/API error with what was being done.
    pub fn driver(context: impl Into<String>, err: impl fmt::Display) -> Self {
        Error::Driver { context: context.into(), message: err.to_string() }
    }
}

/// The elements of a tensor of `dims`, or a limit error where they (or any one dimension, as an
/// empty tensor's other dimensions still reach the kernels) pass 2^32 − 1: the kernels index
/// with 32 bits.
pub(crate) fn elems(op: &str, dims: &[usize]) -> Result<usize> {
    let within = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d.max(1))).is_some_and(|n| n <= u32::MAX as usize);
    if !within {
        return Err(Error::Limit(format!("{op}: a tensor of {dims:?} holds more than 2^32 − 1 elements")));
    }
    Ok(dims.iter().product())
}

/// `len` copies of `value` on the host, or a limit error where the host cannot hold them
/// (instead of the allocator's abort).
pub(crate) fn filled<T: Clone>(len: usize, value: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|e| Error::Limit(format!("{len} host values: {e}")))?;
    v.resize(len, value);
    Ok(v)
}
