//! The layer's configuration: widths, tree shape and node activation.

use crate::error::{FffError, Result};
use std::fmt;
use std::str::FromStr;

/// The largest supported depth: 2^21 - 1 nodes per tree.
pub const MAX_DEPTH: usize = 20;

/// The activation applied to each visited node's pre-activation `z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Activation {
    /// GELU, exact erf form (UltraFastBERT's default).
    #[default]
    Gelu,
    /// Identity: a left turn still carries its `z` (the community's "basis pair" form).
    #[cfg_attr(feature = "clap", value(alias = "linear", alias = "none"))]
    Identity,
    /// max(z, 0).
    Relu,
    /// tanh(z).
    Tanh,
}

impl Activation {
    /// All activations, in a fixed order.
    pub const ALL: [Activation; 4] = [
        Activation::Gelu,
        Activation::Identity,
        Activation::Relu,
        Activation::Tanh,
    ];

    /// The activation of one scalar, exactly as candle computes it on the CPU.
    #[inline]
    pub fn apply(self, z: f32) -> f32 {
        match self {
            Activation::Gelu => {
                (candle_core::cpu::erf::erf_f32(z * std::f32::consts::FRAC_1_SQRT_2) + 1.0)
                    * 0.5
                    * z
            }
            Activation::Identity => z,
            Activation::Relu => z.max(0.0),
            Activation::Tanh => z.tanh(),
        }
    }

    /// [`Activation::apply`] with GELU through [`crate::math::gelu`] (within 5e-6 relative of
    /// the erf form; branch- and call-free, so loops over it vectorize). The inference kernels
    /// and the dense baselines use it; the references and training use [`Activation::apply`].
    #[inline(always)]
    pub fn apply_fast(self, z: f32) -> f32 {
        match self {
            Activation::Gelu => crate::math::gelu(z),
            other => other.apply(z),
        }
    }

    /// The activation's derivative at `z` (used by the training op's backward pass).
    #[inline]
    pub fn derivative(self, z: f32) -> f32 {
        match self {
            Activation::Gelu => {
                let cdf = 0.5
                    * (1.0 + candle_core::cpu::erf::erf_f32(z * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = (-0.5 * z * z).exp() * 0.398_942_3;
                cdf + z * pdf
            }
            Activation::Identity => 1.0,
            Activation::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Tanh => 1.0 - z.tanh().powi(2),
        }
    }

    /// The activation applied to a candle tensor, differentiable by candle's autodiff.
    pub fn apply_tensor(self, z: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::Gelu => z.gelu_erf(),
            Activation::Identity => Ok(z.clone()),
            Activation::Relu => z.relu(),
            Activation::Tanh => z.tanh(),
        }
    }

    /// The activation's name as used in configuration strings.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Activation {
    type Err = FffError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "gelu" => Ok(Activation::Gelu),
            "identity" | "linear" | "none" => Ok(Activation::Identity),
            "relu" => Ok(Activation::Relu),
            "tanh" => Ok(Activation::Tanh),
            other => Err(FffError::InvalidConfig {
                field: "activation",
                message: format!("is `{other}`; expected one of gelu, identity, relu, tanh"),
            }),
        }
    }
}

/// How a new layer's parameters are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Every weight ~ N(0, std²), biases zero (what the released UltraFastBERT effectively used).
    Normal {
        /// Standard deviation of the weights.
        std: f64,
    },
    /// UltraFastBERT module's own init: w_in, b_in ~ U(±1/√in); w_out ~ U(±1/√((D+1)·K)).
    Uniform,
    /// Rows of w_in and w_out drawn N(0, I) and scaled to unit length; biases zero.
    Hyperspherical,
}

impl Default for Init {
    fn default() -> Self {
        Init::Normal { std: 0.02 }
    }
}

impl fmt::Display for Init {
    /// The spelling [`Init::from_str`] reads: `normal(STD)`, `uniform`, `hyperspherical`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Init::Normal { std } => write!(f, "normal({std})"),
            Init::Uniform => f.write_str("uniform"),
            Init::Hyperspherical => f.write_str("hyperspherical"),
        }
    }
}

impl FromStr for Init {
    type Err = FffError;
    /// Parses `normal`, `normal(0.05)`, `uniform` or `hyperspherical`.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        let bad = || FffError::InvalidConfig {
            field: "init",
            message: format!("is `{s}`; expected normal, normal(STD), uniform or hyperspherical"),
        };
        if s == "normal" {
            return Ok(Init::default());
        }
        if let Some(arg) = s.strip_prefix("normal(").and_then(|r| r.strip_suffix(')')) {
            let std: f64 = arg.trim().parse().map_err(|_| bad())?;
            if !(std.is_finite() && std > 0.0) {
                return Err(bad());
            }
            return Ok(Init::Normal { std });
        }
        match s.as_str() {
            "uniform" => Ok(Init::Uniform),
            "hyperspherical" => Ok(Init::Hyperspherical),
            _ => Err(bad()),
        }
    }
}

/// Shape and activation of one FFF layer of `trees` trees of depth `depth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FffConfig {
    /// Width of each input row.
    pub input_width: usize,
    /// Width of each output row.
    pub output_width: usize,
    /// Depth D of each tree: D+1 nodes are visited per tree.
    pub depth: usize,
    /// Number of trees K (UltraFastBERT's `parallel_size`).
    pub trees: usize,
    /// Node activation.
    pub activation: Activation,
}

impl FffConfig {
    /// A config with the default activation (GELU).
    pub fn new(input_width: usize, output_width: usize, depth: usize, trees: usize) -> Self {
        FffConfig {
            input_width,
            output_width,
            depth,
            trees,
            activation: Activation::Gelu,
        }
    }

    /// The same config with another activation.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, message: String| Err(FffError::InvalidConfig { field, message });
        if self.input_width == 0 {
            return bad("input_width", "is 0; expected at least 1".into());
        }
        if self.output_width == 0 {
            return bad("output_width", "is 0; expected at least 1".into());
        }
        if self.depth > MAX_DEPTH {
            return bad(
                "depth",
                format!("is {}; expected 0..={MAX_DEPTH}", self.depth),
            );
        }
        if self.trees == 0 {
            return bad("trees", "is 0; expected at least 1".into());
        }
        // Checked products: `total_nodes` itself may wrap for a huge `trees` (to as little as
        // 2 nodes for 6148914691236517206 trees of depth 1), so it cannot be trusted here.
        let nodes = self.trees.checked_mul(self.nodes_per_tree());
        if nodes
            .and_then(|n| n.checked_mul(self.input_width.max(self.output_width)))
            .is_none()
            || nodes.is_none_or(|n| n > u32::MAX as usize)
        {
            return bad(
                "trees",
                format!("{} trees of depth {} is too large", self.trees, self.depth),
            );
        }
        Ok(())
    }

    /// Nodes per tree, M = 2^(D+1) - 1.
    pub fn nodes_per_tree(&self) -> usize {
        (1usize << (self.depth + 1)) - 1
    }

    /// Neurons in the layer, K·M.
    pub fn total_nodes(&self) -> usize {
        self.trees * self.nodes_per_tree()
    }

    /// Neurons evaluated per input, K·(D+1).
    pub fn used_nodes(&self) -> usize {
        self.trees * (self.depth + 1)
    }

    /// The model name in UltraFastBERT's K×D style, e.g. `1x11`.
    pub fn name(&self) -> String {
        format!("{}x{}", self.trees, self.depth)
    }
}
