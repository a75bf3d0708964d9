//! Backend runtimes: device setup, kernel/pipeline caches, buffers, launches and timing.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

/// Whether `FFKERN_POISON` is set (non-empty, not `0`): then the buffers of
/// `Backend::alloc_uninit` start as NaN on every backend (every bit set on the GPUs), so that a
/// test run under it fails wherever a launch leaves part of one unwritten.
pub(crate) fn poison() -> bool {
    static POISON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *POISON.get_or_init(|| std::env::var_os("FFKERN_POISON").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// `FFKERN_GRID_LIMIT=<n>` (n ≥ 1, for tests): the most blocks (workgroups) the launchers put in
/// a grid dimension that they fold into the next one or that the kernel walks in a grid-stride
/// loop, so that those folds and loops run on small problems (by default they start past 65,535
/// workgroups or the launchers' block caps). Unset or empty: the backends' own limits. Any other value
/// makes [`grid_limit`] (which the runtimes' constructors call) an error.
fn grid_limit_env() -> &'static Result<Option<usize>, String> {
    static LIMIT: std::sync::OnceLock<Result<Option<usize>, String>> = std::sync::OnceLock::new();
    LIMIT.get_or_init(|| parse_grid_limit(std::env::var("FFKERN_GRID_LIMIT").ok().as_deref()))
}

fn parse_grid_limit(v: Option<&str>) -> Result<Option<usize>, String> {
    match v {
        None | Some("") => Ok(None),
        Some(v) => v.parse::<usize>().ok().filter(|&n| n > 0).map(Some).ok_or_else(|| format!("FFKERN_GRID_LIMIT={v}: expected a block count of at least 1")),
    }
}

/// The `FFKERN_GRID_LIMIT` in effect, checked: at most that many blocks (workgroups) in a grid
/// dimension that a launcher folds into the next or that a kernel walks by grid stride.
pub fn grid_limit() -> crate::Result<Option<usize>> {
    grid_limit_env().clone().map_err(crate::Error::Invalid)
}

/// `cap`, or `FFKERN_GRID_LIMIT` where that is lower: the most blocks (workgroups) of a grid
/// dimension that the launcher folds or the kernel walks by grid stride.
pub(crate) fn grid_cap(cap: usize) -> usize {
    match grid_limit_env() {
        Ok(Some(n)) => cap.min(*n),
        _ => cap,
    }
}

/// A kernel choice made by an environment variable: its name, its values (the first is the
/// default) and what it chooses between. `ffkern info` lists them with the values in effect.
#[derive(Clone, Copy, Debug)]
pub struct KernelChoice {
    /// The environment variable.
    pub var: &'static str,
    /// Its values; the first is the default.
    pub values: &'static [&'static str],
    /// What it chooses between.
    pub what: &'static str,
}

/// The CUDA f16/bf16 GEMM kernel (see `ops::gemm::cuda`).
pub const GEMM_KERNEL: KernelChoice = KernelChoice {
    var: "FFKERN_GEMM_KERNEL",
    values: &["auto", "mma", "pingpong", "kgen", "epiwarp"],
    what: "CUDA f16/bf16 GEMM: wgmma on Hopper else mma.sync, K-major operands on 16-byte copies; mma.sync everywhere; wgmma ping-pong schedule; auto with element loads for K-major operands; wgmma with epilogue warps",
};
/// The wgpu GEMM's tile form (see `ops::gemm::wgpu`).
pub const WGPU_GEMM: KernelChoice = KernelChoice {
    var: "FFKERN_WGPU_GEMM",
    values: &["auto", "wide", "tall", "skinny", "narrow"],
    what: "wgpu GEMM tiles: by shape; 128×128; 128×64; 128×32; 64×64",
};
/// The linear-attention chunk kernels (see `ops::linattn::kernel_choice`).
pub const LINATTN_KERNEL: KernelChoice = KernelChoice {
    var: "FFKERN_LINATTN_KERNEL",
    values: &["auto", "mma", "simt", "fused", "twopass"],
    what: "CUDA linear-attention chunk kernels: 16-bit tensor cores where the inputs allow, else TF32, with the chunked forward and backward of many sequences·heads in one pass per output where they fit; TF32 tensor cores; f32 FMA; auto (on wgpu too: the WGSL one-pass kernels); auto with per-chunk states and a scan instead of the one-pass kernels",
};
/// The CUDA graph row kernels (see `ops::graph::cuda`).
pub const GRAPH_KERNEL: KernelChoice = KernelChoice {
    var: "FFKERN_GRAPH_KERNEL",
    values: &["auto", "thread", "warp"],
    what: "CUDA spmm and sum/mean reductions: warps over a row's 16-byte pieces where the widths allow; four columns a thread; the same as auto",
};
/// BlockShuffle's middle activation (see `ops::structured`).
pub const SHUFFLE_FORM: KernelChoice = KernelChoice {
    var: "FFKERN_SHUFFLE",
    values: &["auto", "gathered", "strided"],
    what: "BlockShuffle's middle activation: gathered (blocks z_l side by side, written by one launch per input block) where the backend's GEMM prefers contiguous rows, k divides the inner width and each z_l is at least 64 wide, else in h's order; gathered (where k does not divide the inner width, up to 64 blocks: k² launches); always in h's order (the second product gathers at stride k)",
};
/// wgpu's subgroup operations (see `runtime::wgpu`).
pub const WGPU_SUBGROUPS: KernelChoice = KernelChoice {
    var: "FFKERN_WGPU_SUBGROUPS",
    values: &["auto", "off"],
    what: "wgpu subgroup operations (the graph family's per-edge dot products and LayerNorm row statistics, one subgroup per edge and head or per row): where the adapter has them; never",
};
/// Every kernel choice, in the order `ffkern info` lists them.
pub const KERNEL_CHOICES: [KernelChoice; 6] = [GEMM_KERNEL, WGPU_GEMM, WGPU_SUBGROUPS, LINATTN_KERNEL, GRAPH_KERNEL, SHUFFLE_FORM];

impl KernelChoice {
    /// The value in effect: the environment's, checked, or the default when unset; any other value
    /// is an error that names the choices (a typo must not silently run the default).
    pub fn current(&self) -> crate::Result<&'static str> {
        self.parse(std::env::var(self.var).ok().as_deref())
    }

    fn parse(&self, v: Option<&str>) -> crate::Result<&'static str> {
        match v {
            None => Ok(self.values[0]),
            Some(v) => self.values.iter().copied().find(|a| *a == v).ok_or_else(|| crate::Error::Invalid(format!("{}={v}: expected one of {}", self.var, self.values.join(", ")))),
        }
    }
}

/// A kernel choice read once into `cell` (see [`KernelChoice::current`]).
pub(crate) fn kernel_env(cell: &'static std::sync::OnceLock<Option<String>>, choice: &KernelChoice) -> crate::Result<&'static str> {
    choice.parse(cell.get_or_init(|| std::env::var(choice.var).ok()).as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_choice_defaults_to_its_first_value_and_names_the_choices_on_a_typo() {
        assert_eq!(WGPU_GEMM.parse(None).ok(), Some("auto"));
        assert_eq!(WGPU_GEMM.parse(Some("tall")).ok(), Some("tall"));
        let e = WGPU_GEMM.parse(Some("wider")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("FFKERN_WGPU_GEMM=wider") && e.contains("auto, wide, tall, skinny, narrow"), "{e}");
        for c in KERNEL_CHOICES {
            assert!(!c.values.is_empty() && c.var.starts_with("FFKERN_"), "{c:?}");
        }
    }

    #[test]
    fn grid_limit_takes_a_positive_count_and_names_anything_else() {
        assert_eq!(parse_grid_limit(None), Ok(None));
        assert_eq!(parse_grid_limit(Some("")), Ok(None));
        assert_eq!(parse_grid_limit(Some("3")), Ok(Some(3)));
        for bad in ["0", "-1", "3x", "many"] {
            let e = parse_grid_limit(Some(bad)).err().unwrap_or_default();
            assert!(e.contains(&format!("FFKERN_GRID_LIMIT={bad}")), "{bad}: {e}");
        }
    }
}
