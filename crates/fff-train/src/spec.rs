//! Model descriptions: one spelling of every layer, parsed by [`ModelSpec::from_str`] and
//! written back by its `Display`.
//!
//! A model is a comma-separated list of layers:
//!
//! - `linear:IN-OUT` — a dense layer with bias (PyTorch's default init);
//! - `fff:IN-OUT:dD[:kK][:ACT][:init=INIT][:master=W]` — an FFF layer of K trees (default 1)
//!   of depth D, node activation ACT (default gelu), init `uniform` (default), `normal(STD)` or
//!   `hyperspherical`, plus with `master=W` a dense master leaf of width W that every input
//!   runs;
//! - `orig:IN-OUT:dD:lW[:ACT][:harden=H][:leak=R][:hard]` — the original FFF (Belcak &
//!   Wattenhofer): depth D routing tree over 2^D leaves, each an MLP of width W (leaf
//!   activation ACT, default relu); hardening-loss weight H (default 0), region leak R
//!   (default 0), hard decisions in training with `hard`;
//! - `flat:IN-OUT:dD` — the flat FFF with one hyperplane per level ("precomputed lambdas");
//! - `relu`, `gelu`, `tanh`, `identity` — an activation between layers.

use anyhow::{anyhow, bail, ensure, Context, Result};
use fastfeedforward::{
    Activation, ConditionalLayer, Elementwise, Fff, FffConfig, FlatFff, FlatFffConfig, Init,
    Linear, MasterLeafFff, OriginalFff, OriginalFffConfig,
};
use rand::rngs::StdRng;
use rand::Rng;
use std::fmt;
use std::str::FromStr;

/// One layer of a model description.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerSpec {
    /// `linear:IN-OUT`.
    Linear {
        /// Input width.
        input_width: usize,
        /// Output width.
        output_width: usize,
    },
    /// `fff:IN-OUT:dD[:kK][:ACT][:init=INIT][:master=W]`.
    Fff {
        /// Shape and node activation.
        config: FffConfig,
        /// How the parameters are drawn.
        init: Init,
        /// Hidden width of a dense master leaf every input runs (0: none).
        master: usize,
    },
    /// `orig:IN-OUT:dD:lW[:ACT][:harden=H][:leak=R][:hard]`.
    Original(OriginalFffConfig),
    /// `flat:IN-OUT:dD`.
    Flat(FlatFffConfig),
    /// An element-wise activation.
    Act(Activation),
}

impl LayerSpec {
    /// `(input, output)` widths, or None for an activation (it keeps its input's width).
    pub fn widths(&self) -> Option<(usize, usize)> {
        match self {
            LayerSpec::Linear {
                input_width,
                output_width,
            } => Some((*input_width, *output_width)),
            LayerSpec::Fff { config, .. } => Some((config.input_width, config.output_width)),
            LayerSpec::Original(c) => Some((c.input_width, c.output_width)),
            LayerSpec::Flat(c) => Some((c.input_width, c.output_width)),
            LayerSpec::Act(_) => None,
        }
    }

    /// An upper bound on the layer's parameters, `None` where it overflows `usize`.
    pub fn parameter_bound(&self) -> Option<usize> {
        let nodes = |depth: usize| 1usize.checked_shl(u32::try_from(depth).ok()?.checked_add(1)?);
        let Some((i, o)) = self.widths() else {
            return Some(0); // an activation
        };
        let rows = match self {
            LayerSpec::Linear { .. } => return i.checked_mul(o)?.checked_add(o),
            LayerSpec::Fff { config, master, .. } => {
                let extra = master.checked_mul(i.checked_add(o)?.checked_add(1)?)?;
                return nodes(config.depth)?
                    .checked_mul(config.trees)?
                    .checked_mul(i.checked_add(o)?.checked_add(1)?)?
                    .checked_add(extra);
            }
            LayerSpec::Original(c) => nodes(c.depth)?.checked_mul(c.leaf_width.max(1))?,
            LayerSpec::Flat(c) => nodes(c.depth)?,
            LayerSpec::Act(_) => return Some(0),
        };
        rows.checked_mul(i.checked_add(o)?.checked_add(1)?)
    }

    /// Builds the layer (`width` is the width an activation runs at), drawing from `rng`.
    pub fn build(&self, width: usize, rng: &mut StdRng) -> Result<Box<dyn ConditionalLayer>> {
        Ok(match *self {
            LayerSpec::Linear {
                input_width,
                output_width,
            } => Box::new(Linear::with_rng(input_width, output_width, rng)?),
            LayerSpec::Fff {
                config,
                init,
                master,
            } => {
                let fff = Fff::new(config, init, rng.random())?;
                if master > 0 {
                    Box::new(MasterLeafFff::new(fff, master, rng.random())?)
                } else {
                    Box::new(fff)
                }
            }
            LayerSpec::Original(c) => Box::new(OriginalFff::new(c, rng.random())?),
            LayerSpec::Flat(c) => Box::new(FlatFff::new(c, rng.random())?),
            LayerSpec::Act(activation) => Box::new(Elementwise { activation, width }),
        })
    }
}

impl fmt::Display for LayerSpec {
    /// The shortest spelling that parses back to the same layer (defaults left out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerSpec::Linear {
                input_width,
                output_width,
            } => write!(f, "linear:{input_width}-{output_width}"),
            LayerSpec::Fff {
                config: c,
                init,
                master,
            } => {
                write!(f, "fff:{}-{}:d{}", c.input_width, c.output_width, c.depth)?;
                if c.trees != 1 {
                    write!(f, ":k{}", c.trees)?;
                }
                if c.activation != Activation::Gelu {
                    write!(f, ":{}", c.activation)?;
                }
                if *init != Init::Uniform {
                    write!(f, ":init={init}")?;
                }
                if *master != 0 {
                    write!(f, ":master={master}")?;
                }
                Ok(())
            }
            LayerSpec::Original(c) => {
                write!(
                    f,
                    "orig:{}-{}:d{}:l{}",
                    c.input_width, c.output_width, c.depth, c.leaf_width
                )?;
                if c.activation != Activation::Relu {
                    write!(f, ":{}", c.activation)?;
                }
                if c.hardening != 0.0 {
                    write!(f, ":harden={}", c.hardening)?;
                }
                if c.region_leak != 0.0 {
                    write!(f, ":leak={}", c.region_leak)?;
                }
                if c.train_hardened {
                    f.write_str(":hard")?;
                }
                Ok(())
            }
            LayerSpec::Flat(c) => {
                write!(f, "flat:{}-{}:d{}", c.input_width, c.output_width, c.depth)
            }
            LayerSpec::Act(a) => write!(f, "{a}"),
        }
    }
}

/// A whole model description: its layers in order, the widths checked to chain.
///
/// ```
/// use fff_train::{Model, ModelSpec};
///
/// let spec: ModelSpec = "fff:784-500:d8:k1:identity, relu, linear:500-10".parse()?;
/// assert_eq!(spec.to_string(), "fff:784-500:d8:identity, relu, linear:500-10");
/// let model = Model::from_spec(spec, 0)?;
/// assert_eq!(model.neurons_per_input(), 9 + 10);
/// assert_eq!(model.multiply_adds_per_input(), 9 * (784 + 500) + 500 * 10);
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    layers: Vec<LayerSpec>,
    input_width: usize,
    output_width: usize,
}

impl ModelSpec {
    /// The layers, in order.
    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// Input width of the first layer with weights.
    pub fn input_width(&self) -> usize {
        self.input_width
    }

    /// Output width of the last layer with weights.
    pub fn output_width(&self) -> usize {
        self.output_width
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.layers.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{l}")?;
        }
        Ok(())
    }
}

impl FromStr for ModelSpec {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> Result<Self> {
        let mut layers = Vec::new();
        let mut width: Option<usize> = None;
        let mut input_width = None;
        for (index, raw) in spec.split(',').enumerate() {
            let item = raw.trim();
            ensure!(
                !item.is_empty(),
                "layer {index}: empty item in model description `{spec}`"
            );
            let layer = parse_layer(item).with_context(|| format!("layer {index} `{item}`"))?;
            if let Some((cin, cout)) = layer.widths() {
                if let Some(w) = width {
                    ensure!(
                        w == cin,
                        "layer {index} `{item}`: takes {cin} inputs but the previous layer gives {w}"
                    );
                }
                input_width.get_or_insert(cin);
                width = Some(cout);
            }
            layers.push(layer);
        }
        let (Some(input_width), Some(output_width)) = (input_width, width) else {
            bail!("model `{spec}` has no linear, fff, orig or flat layer");
        };
        Ok(ModelSpec {
            layers,
            input_width,
            output_width,
        })
    }
}

/// `p` as `<prefix><digits>`, e.g. `d8` → 8; an error for a number too large.
fn number_after(p: &str, prefix: char, what: &str) -> Result<Option<usize>> {
    let Some(digits) = p
        .strip_prefix(prefix)
        .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
    else {
        return Ok(None);
    };
    digits
        .parse()
        .map(Some)
        .map_err(|_| anyhow!("{what} `{p}` is too large (at most {})", usize::MAX))
}

fn widths(part: Option<&str>) -> Result<(usize, usize)> {
    let part = part.unwrap_or("");
    let (a, b) = part
        .split_once('-')
        .ok_or_else(|| anyhow!("expected IN-OUT widths, found `{part}`"))?;
    let parse = |s: &str| -> Result<usize> {
        let v: usize = s
            .trim()
            .parse()
            .map_err(|_| anyhow!("width `{s}` is not a number of at most {}", usize::MAX))?;
        ensure!(v > 0, "widths must be at least 1");
        Ok(v)
    };
    Ok((parse(a)?, parse(b)?))
}

fn parse_layer(item: &str) -> Result<LayerSpec> {
    let mut parts = item.split(':');
    let kind = parts.next().unwrap_or_default().to_ascii_lowercase();
    Ok(match kind.as_str() {
        "linear" => {
            let (input_width, output_width) = widths(parts.next())?;
            if let Some(extra) = parts.next() {
                bail!("unexpected `{extra}` (linear takes only IN-OUT)");
            }
            LayerSpec::Linear {
                input_width,
                output_width,
            }
        }
        "fff" => {
            let (cin, cout) = widths(parts.next())?;
            let mut config = FffConfig::new(cin, cout, usize::MAX, 1);
            let mut init = Init::Uniform;
            let mut master = 0;
            for p in parts.map(str::trim) {
                if let Some(w) = p.strip_prefix("master=") {
                    master = w.parse().ok().filter(|&w| w > 0).ok_or_else(|| {
                        anyhow!("`{p}`: the master leaf's width must be a count of at least 1")
                    })?;
                } else if let Some(d) = number_after(p, 'd', "depth")? {
                    config.depth = d;
                } else if let Some(k) = number_after(p, 'k', "tree count")? {
                    config.trees = k;
                } else if let Some(i) = p.strip_prefix("init=") {
                    init = i.parse()?;
                } else {
                    config.activation = p.parse().map_err(|_| {
                        anyhow!("unknown option `{p}` (expected dD, kK, an activation, init=... or master=W)")
                    })?;
                }
            }
            ensure!(config.depth != usize::MAX, "missing depth, e.g. `d8`");
            config.validate()?;
            LayerSpec::Fff {
                config,
                init,
                master,
            }
        }
        "orig" => {
            let (cin, cout) = widths(parts.next())?;
            let (mut depth, mut leaf) = (None, None);
            let mut config = OriginalFffConfig::new(cin, 1, cout, 0);
            for p in parts.map(str::trim) {
                let num = |s: &str| -> Result<f64> {
                    s.parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite() && *v >= 0.0)
                        .ok_or_else(|| anyhow!("`{p}` needs a non-negative number"))
                };
                if let Some(d) = number_after(p, 'd', "depth")? {
                    depth = Some(d);
                } else if let Some(w) = number_after(p, 'l', "leaf width")? {
                    leaf = Some(w);
                } else if let Some(h) = p.strip_prefix("harden=") {
                    config.hardening = num(h)?;
                } else if let Some(r) = p.strip_prefix("leak=") {
                    config.region_leak = num(r)?;
                } else if p == "hard" {
                    config.train_hardened = true;
                } else {
                    config.activation = p.parse().map_err(|_| {
                        anyhow!("unknown option `{p}` (expected dD, lW, an activation, harden=H, leak=R or hard)")
                    })?;
                }
            }
            config.depth = depth.ok_or_else(|| anyhow!("missing depth, e.g. `d4`"))?;
            config.leaf_width = leaf.ok_or_else(|| anyhow!("missing leaf width, e.g. `l32`"))?;
            config.validate()?;
            LayerSpec::Original(config)
        }
        "flat" => {
            let (input_width, output_width) = widths(parts.next())?;
            let mut depth = None;
            for p in parts.map(str::trim) {
                depth = Some(
                    number_after(p, 'd', "depth")?
                        .ok_or_else(|| anyhow!("unknown option `{p}` (flat takes dD)"))?,
                );
            }
            let config = FlatFffConfig {
                input_width,
                output_width,
                depth: depth.ok_or_else(|| anyhow!("missing depth, e.g. `d8`"))?,
            };
            config.validate()?;
            LayerSpec::Flat(config)
        }
        act => LayerSpec::Act(act.parse().map_err(|_| {
            anyhow!("unknown layer (expected linear:, fff:, orig:, flat:, relu, gelu, tanh or identity)")
        })?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parses_back_to_the_same_spec() {
        for s in [
            "linear:784-500, relu, linear:500-10",
            "fff:784-500:d8:identity, relu, fff:500-10:d8:k4:tanh:init=hyperspherical",
            "fff:8-4:d2:init=normal(0.05)",
            "fff:784-64:d8:k5:identity:master=16, relu, linear:64-10",
            "orig:784-500:d3:l36:harden=1:leak=0.1:hard, relu, flat:500-10:d4",
            "orig:2-3:d2:l4:gelu",
        ] {
            let spec: ModelSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
            assert_eq!(spec.to_string().parse::<ModelSpec>().unwrap(), spec);
        }
        // Defaults are left out of the canonical spelling.
        let spec: ModelSpec = "fff:8-4:d2:k1:gelu:init=uniform".parse().unwrap();
        assert_eq!(spec.to_string(), "fff:8-4:d2");
    }

    #[test]
    fn too_large_numbers_are_named() {
        let e = "fff:8-4:d99999999999999999999999"
            .parse::<ModelSpec>()
            .unwrap_err();
        assert!(format!("{e:#}").contains("depth"), "{e:#}");
    }
}
