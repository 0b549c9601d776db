//! The fast inference kernel: batched conditional matrix multiplication on the CPU.
//!
//! Three walks over the trees, chosen per call (see each module for the design):
//! - [`Strategy::PerToken`] ([`super::tile`]): tiles of inputs descend independently, interleaved
//!   level by level so each input's next rows are prefetched behind the others' work. Best for
//!   small batches and latency.
//! - [`Strategy::Bucketed`] ([`super::bucketed`]): top half of each tree per input, then inputs
//!   bucketed by bottom subtree so each subtree's rows are fetched once per bucket. Best for
//!   large batches, where weight traffic would otherwise dominate.
//! - [`Strategy::Gemm`] ([`super::shallow`]): the top levels of every tree for a whole chunk of
//!   inputs on two SGEMMs, the rest per input. Best for shallow, wide trees (depth 0 is a
//!   dense layer), where computing every node of a level costs little more than the visited
//!   one.
//! - [`Strategy::Grouped`] (in `dev/`, kept for comparison): depth-first walk with the inputs on each node
//!   grouped (the "level-2" formulation), kept for comparison.

use super::bucketed::{bucketed, split_level};
use super::dev::grouped::grouped;
use super::shallow::{
    gathers_trees, gemm_levels, gemm_plan, gemm_walk, per_token_gathered, GEMM_MIN_BATCH,
};
use super::tile::{per_token, RouteSink};
use super::{check_io, FffWeightsView, SimdLevel, WeightElem, WeightFormat};
use crate::config::FffConfig;
use crate::error::{check_rows, Result};

/// How the kernel walks the trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Strategy {
    /// Pick per call from the batch size and depth.
    #[default]
    Auto,
    /// Inputs descend independently, interleaved in tiles (best at small batches).
    PerToken,
    /// Top half per input, then inputs bucketed by bottom subtree (best at large batches).
    Bucketed,
    /// Depth-first walk with inputs grouped by node (for comparison).
    Grouped,
    /// Top levels on SGEMMs for the whole batch, the rest per input (shallow, wide trees; bf16
    /// and int8 top rows are widened to f32 for the SGEMMs, once per call).
    Gemm,
}

impl Strategy {
    /// Every strategy, `Auto` first.
    pub const ALL: [Strategy; 5] = [
        Strategy::Auto,
        Strategy::PerToken,
        Strategy::Bucketed,
        Strategy::Grouped,
        Strategy::Gemm,
    ];

    /// Name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::PerToken => "per-token",
            Strategy::Bucketed => "bucketed",
            Strategy::Grouped => "grouped",
            Strategy::Gemm => "gemm",
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Strategy::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("`{s}`: expected auto, per-token, bucketed, grouped or gemm"))
    }
}

/// Options of the inference kernel.
#[derive(Clone, Copy, Debug)]
pub struct InferOptions {
    /// Walk strategy.
    pub strategy: Strategy,
    /// Instruction set; a level the CPU lacks falls back to portable code.
    pub simd: SimdLevel,
}

impl Default for InferOptions {
    fn default() -> Self {
        InferOptions {
            strategy: Strategy::Auto,
            simd: SimdLevel::detect(),
        }
    }
}

/// Reusable scratch buffers, so that calls after the first allocate nothing.
#[derive(Debug, Default)]
pub struct Workspace {
    pub(super) tokens: Vec<u32>,
    pub(super) scratch: Vec<u32>,
    pub(super) z: Vec<f32>,
    pub(super) z_child: Vec<f32>,
    pub(super) z_spare: Vec<f32>,
    pub(super) top_rows: Vec<u32>,
    pub(super) top_acts: Vec<f32>,
    pub(super) reached: Vec<u32>,
    pub(super) order: Vec<u32>,
    pub(super) bucket_start: Vec<usize>,
    pub(super) bucket_fill: Vec<usize>,
    pub(super) bottom_rows: Vec<u32>,
    pub(super) bottom_acts: Vec<f32>,
    pub(super) logits: Vec<f32>,
    pub(super) top_w_in: Vec<f32>,
    pub(super) top_w_out: Vec<f32>,
}

fn grow<T: Clone + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

impl Workspace {
    /// An empty workspace; it grows to the largest batch seen.
    pub fn new() -> Self {
        Self::default()
    }

    pub(super) fn ensure_grouped(&mut self, batch: usize) {
        grow(&mut self.tokens, batch);
        grow(&mut self.scratch, batch);
        grow(&mut self.z, batch);
    }

    pub(super) fn ensure_bucketed(
        &mut self,
        batch: usize,
        split: usize,
        bottom: usize,
        buckets: usize,
    ) {
        grow(&mut self.z, batch);
        grow(&mut self.z_child, batch);
        grow(&mut self.z_spare, batch);
        grow(&mut self.scratch, batch);
        grow(&mut self.bottom_rows, batch * bottom);
        grow(&mut self.bottom_acts, batch * bottom);
        grow(&mut self.top_rows, batch * split);
        grow(&mut self.top_acts, batch * split);
        grow(&mut self.reached, batch);
        grow(&mut self.order, batch);
        grow(&mut self.bucket_start, buckets + 1);
        grow(&mut self.bucket_fill, buckets);
    }
}

/// Which walk `strategy` means for a call of `batch` inputs through a layer of `config` with
/// weights in `format` (resolves `Auto`, and what a format or shape cannot run).
pub fn resolve_strategy(
    strategy: Strategy,
    config: &FffConfig,
    batch: usize,
    format: WeightFormat,
) -> Strategy {
    let depth = config.depth;
    let buckets = 1usize << split_level(depth + 1);
    let widen = format != WeightFormat::F32;
    match strategy {
        // The SGEMMs pay when they cut the walk's cost by a fifth at least (see
        // `shallow::gemm_plan`): shallow, wide trees, never deep ones.
        Strategy::Auto if gemm_plan(config.trees, depth, batch, widen).is_some() => Strategy::Gemm,
        // Bucketing pays once the average bucket holds a few inputs to share its rows.
        Strategy::Auto if depth >= 3 && batch >= 4 * buckets => Strategy::Bucketed,
        Strategy::Auto => Strategy::PerToken,
        // A tree too shallow to split has nothing to bucket.
        Strategy::Bucketed if split_level(depth + 1) == 0 => Strategy::PerToken,
        s => s,
    }
}

/// Computes `y = FFF(x)` for `batch` rows of `x` (`[batch, in]`) into `y` (`[batch, out]`),
/// with the weights stored as `E` (f32, bf16 or int8; accumulation is f32 for all).
pub fn forward<E: WeightElem>(
    w: &FffWeightsView<'_, E>,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    ws: &mut Workspace,
    opts: InferOptions,
) -> Result<()> {
    check_io(&w.config, x, y, batch)?;
    run(w, x, batch, y, ws, opts, None);
    Ok(())
}

/// [`forward`], also writing into `routes` (`[batch, K·(D+1)]`) the nodes each input visited,
/// laid out per input as [`super::reference::route`] gives them: local node indices, tree by
/// tree, root first. They are the nodes whose output rows the walk summed into `y`, so tests can
/// hold the kernel's own routing to the reference, not only its outputs (a NaN sent right shows
/// here even when every output it touches is NaN anyway).
pub fn forward_with_routes<E: WeightElem>(
    w: &FffWeightsView<'_, E>,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    ws: &mut Workspace,
    opts: InferOptions,
    routes: &mut [u32],
) -> Result<()> {
    check_io(&w.config, x, y, batch)?;
    check_rows("routes", routes.len(), batch, w.config.used_nodes())?;
    let sink = RouteSink::new(routes, &w.config);
    run(w, x, batch, y, ws, opts, Some(sink));
    Ok(())
}

fn run<E: WeightElem>(
    w: &FffWeightsView<'_, E>,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    ws: &mut Workspace,
    opts: InferOptions,
    routes: Option<RouteSink>,
) {
    if batch == 0 {
        return;
    }
    match resolve_strategy(opts.strategy, &w.config, batch, E::FORMAT) {
        Strategy::Gemm => {
            let (k, d, widen) = (
                w.config.trees,
                w.config.depth,
                E::FORMAT != WeightFormat::F32,
            );
            let g = gemm_plan(k, d, batch, widen)
                .unwrap_or_else(|| gemm_levels(k, d, batch.max(GEMM_MIN_BATCH), widen));
            gemm_walk(w, g.max(1), x, batch, y, ws, opts.simd, routes)
        }
        Strategy::Grouped => grouped(w, x, batch, y, ws, opts.simd, routes),
        Strategy::Bucketed => bucketed(w, x, batch, y, ws, opts.simd, routes),
        _ if gathers_trees(w.config.trees, w.config.depth) => {
            per_token_gathered(w, x, batch, y, ws, opts.simd, routes)
        }
        _ => per_token(w, x, batch, y, opts.simd, routes),
    }
}
