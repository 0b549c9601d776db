//! Models as a comma-separated list of layers:
//!
//! - `linear:IN-OUT` — a dense layer with bias (PyTorch's default init);
//! - `fff:IN-OUT:dD[:kK][:ACT][:init=INIT]` — an FFF layer of K trees (default 1) of depth D,
//!   node activation ACT (default gelu), init `uniform` (default), `normal(STD)` or
//!   `hyperspherical`;
//! - `orig:IN-OUT:dD:lW[:ACT][:harden=H][:leak=R][:hard]` — the original FFF (Belcak &
//!   Wattenhofer): depth D routing tree over 2^D leaves, each an MLP of width W (leaf
//!   activation ACT, default relu); hardening-loss weight H (default 0), region leak R
//!   (default 0), hard decisions in training with `hard`;
//! - `flat:IN-OUT:dD` — the flat FFF with one hyperplane per level ("precomputed lambdas");
//! - `relu`, `gelu`, `tanh`, `identity` — an activation between layers.

use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use fastfeedforward::{
    Activation, Fff, FffConfig, FlatFff, FlatFffConfig, Init, OriginalFff, OriginalFffConfig,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One layer of a model.
#[derive(Debug, Clone)]
pub enum Layer {
    /// `x·Wᵀ + b`, `W` is `[out, in]`.
    Linear {
        /// Weight `[out, in]`.
        weight: Var,
        /// Bias `[out]`.
        bias: Var,
    },
    /// An FFF layer.
    Fff(Fff),
    /// An original FFF layer, with the weight of its hardening loss.
    Original {
        /// The layer.
        layer: OriginalFff,
        /// Hardening-loss weight `h` (the loss is `h` × mean node entropy).
        harden: f64,
    },
    /// A flat FFF layer.
    Flat(FlatFff),
    /// An element-wise activation.
    Act(Activation),
}

/// A stack of layers built from a description.
#[derive(Debug, Clone)]
pub struct Model {
    /// The description it was built from.
    pub spec: String,
    /// The layers, in order.
    pub layers: Vec<Layer>,
    /// Input width.
    pub input_width: usize,
    /// Output width.
    pub output_width: usize,
}

/// `p` as `<c><digits>`, e.g. `d8` → 8.
fn digits_after(p: &str, c: char) -> Option<usize> {
    p.strip_prefix(c)
        .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
}

fn widths(part: &str, what: &str, index: usize) -> Result<(usize, usize)> {
    let (a, b) = part
        .split_once('-')
        .ok_or_else(|| anyhow!("layer {index} `{what}`: expected IN-OUT widths, found `{part}`"))?;
    let parse = |s: &str| -> Result<usize> {
        let v: usize = s
            .trim()
            .parse()
            .map_err(|_| anyhow!("layer {index} `{what}`: width `{s}` is not a number"))?;
        ensure!(v > 0, "layer {index} `{what}`: widths must be at least 1");
        Ok(v)
    };
    Ok((parse(a)?, parse(b)?))
}

impl Model {
    /// Builds the model described by `spec`, parameters drawn from `seed`.
    pub fn new(spec: &str, seed: u64) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut layers = Vec::new();
        let mut width: Option<usize> = None;
        let mut input_width = None;
        for (index, raw) in spec.split(',').enumerate() {
            let item = raw.trim();
            ensure!(
                !item.is_empty(),
                "layer {index}: empty item in model description `{spec}`"
            );
            let mut parts = item.split(':');
            let kind = parts.next().unwrap_or_default().to_ascii_lowercase();
            let (cin, cout, layer) = match kind.as_str() {
                "linear" => {
                    let (cin, cout) = widths(parts.next().unwrap_or(""), item, index)?;
                    if let Some(extra) = parts.next() {
                        bail!("layer {index} `{item}`: unexpected `{extra}` (linear takes only IN-OUT)");
                    }
                    let k = (1.0 / cin as f64).sqrt();
                    let mut draw = |n: usize| -> Vec<f32> {
                        (0..n).map(|_| rng.random_range(-k..k) as f32).collect()
                    };
                    let weight = Var::from_vec(draw(cin * cout), (cout, cin), &Device::Cpu)?;
                    let bias = Var::from_vec(draw(cout), cout, &Device::Cpu)?;
                    (Some(cin), Some(cout), Layer::Linear { weight, bias })
                }
                "fff" => {
                    let (cin, cout) = widths(parts.next().unwrap_or(""), item, index)?;
                    let mut depth = None;
                    let mut trees = 1;
                    let mut activation = Activation::Gelu;
                    let mut init = Init::Uniform;
                    for p in parts {
                        let p = p.trim();
                        if let Some(d) = p
                            .strip_prefix('d')
                            .filter(|d| d.chars().all(|c| c.is_ascii_digit()) && !d.is_empty())
                        {
                            depth = Some(d.parse()?);
                        } else if let Some(k) = p
                            .strip_prefix('k')
                            .filter(|k| k.chars().all(|c| c.is_ascii_digit()) && !k.is_empty())
                        {
                            trees = k.parse()?;
                        } else if let Some(i) = p.strip_prefix("init=") {
                            init = i
                                .parse()
                                .map_err(|e| anyhow!("layer {index} `{item}`: {e}"))?;
                        } else {
                            activation = p.parse().map_err(|_| {
                                anyhow!("layer {index} `{item}`: unknown option `{p}` (expected dD, kK, an activation or init=...)")
                            })?;
                        }
                    }
                    let depth = depth.ok_or_else(|| {
                        anyhow!("layer {index} `{item}`: missing depth, e.g. `d8`")
                    })?;
                    let config = FffConfig {
                        input_width: cin,
                        output_width: cout,
                        depth,
                        trees,
                        activation,
                    };
                    let layer = Fff::new(config, init, rng.random())
                        .with_context(|| format!("layer {index} `{item}`"))?;
                    (Some(cin), Some(cout), Layer::Fff(layer))
                }
                "orig" => {
                    let (cin, cout) = widths(parts.next().unwrap_or(""), item, index)?;
                    let (mut depth, mut leaf) = (None, None);
                    let mut config = OriginalFffConfig::new(cin, 1, cout, 0);
                    let mut harden = 0.0;
                    for p in parts {
                        let p = p.trim();
                        let num = |s: &str| -> Result<f64> {
                            s.parse::<f64>()
                                .ok()
                                .filter(|v| v.is_finite() && *v >= 0.0)
                                .ok_or_else(|| {
                                    anyhow!(
                                        "layer {index} `{item}`: `{p}` needs a non-negative number"
                                    )
                                })
                        };
                        if let Some(d) = digits_after(p, 'd') {
                            depth = Some(d);
                        } else if let Some(w) = digits_after(p, 'l') {
                            leaf = Some(w);
                        } else if let Some(h) = p.strip_prefix("harden=") {
                            harden = num(h)?;
                        } else if let Some(r) = p.strip_prefix("leak=") {
                            config.region_leak = num(r)?;
                        } else if p == "hard" {
                            config.train_hardened = true;
                        } else {
                            config.activation = p.parse().map_err(|_| {
                                anyhow!("layer {index} `{item}`: unknown option `{p}` (expected dD, lW, an activation, harden=H, leak=R or hard)")
                            })?;
                        }
                    }
                    config.depth = depth.ok_or_else(|| {
                        anyhow!("layer {index} `{item}`: missing depth, e.g. `d4`")
                    })?;
                    config.leaf_width = leaf.ok_or_else(|| {
                        anyhow!("layer {index} `{item}`: missing leaf width, e.g. `l32`")
                    })?;
                    let layer = OriginalFff::new(config, rng.random())
                        .with_context(|| format!("layer {index} `{item}`"))?;
                    (Some(cin), Some(cout), Layer::Original { layer, harden })
                }
                "flat" => {
                    let (cin, cout) = widths(parts.next().unwrap_or(""), item, index)?;
                    let mut depth = None;
                    for p in parts {
                        let p = p.trim();
                        depth = Some(digits_after(p, 'd').ok_or_else(|| {
                            anyhow!("layer {index} `{item}`: unknown option `{p}` (flat takes dD)")
                        })?);
                    }
                    let config = FlatFffConfig {
                        input_width: cin,
                        output_width: cout,
                        depth: depth.ok_or_else(|| {
                            anyhow!("layer {index} `{item}`: missing depth, e.g. `d8`")
                        })?,
                    };
                    let layer = FlatFff::new(config, rng.random())
                        .with_context(|| format!("layer {index} `{item}`"))?;
                    (Some(cin), Some(cout), Layer::Flat(layer))
                }
                act => {
                    let a: Activation = act.parse().map_err(|_| {
                        anyhow!("layer {index} `{item}`: unknown layer (expected linear:, fff:, orig:, flat:, relu, gelu, tanh or identity)")
                    })?;
                    (None, None, Layer::Act(a))
                }
            };
            if let Some(cin) = cin {
                if let Some(w) = width {
                    ensure!(w == cin, "layer {index} `{item}`: takes {cin} inputs but the previous layer gives {w}");
                }
                input_width.get_or_insert(cin);
                width = cout;
            }
            layers.push(layer);
        }
        let input_width =
            input_width.ok_or_else(|| anyhow!("model `{spec}` has no linear or fff layer"))?;
        Ok(Model {
            spec: spec.to_string(),
            layers,
            input_width,
            output_width: width.expect("set with input_width"),
        })
    }

    /// Trainable parameters.
    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|l| match l {
                Layer::Linear { weight, bias } => vec![weight.clone(), bias.clone()],
                Layer::Fff(f) => f.vars(),
                Layer::Original { layer, .. } => layer.vars(),
                Layer::Flat(f) => f.vars(),
                Layer::Act(_) => vec![],
            })
            .collect()
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// Neurons evaluated per input: dense layers count all their outputs, FFF layers their
    /// visited nodes, original FFF layers their `D` nodes plus one leaf's hidden and output
    /// units, flat FFF layers their `D` hyperplanes.
    pub fn neurons_per_input(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                Layer::Linear { weight, .. } => weight.dims()[0],
                Layer::Fff(f) => f.config().used_nodes(),
                Layer::Original { layer, .. } => {
                    layer.config().used_neurons() + layer.config().output_width
                }
                Layer::Flat(f) => f.config().depth,
                Layer::Act(_) => 0,
            })
            .sum()
    }

    /// Layer `i` on `h`; with `infer`, FFF layers run their inference kernels. Returns the
    /// output and, for original FFF layers in training with hardening, the hardening loss.
    fn apply_layer(
        &self,
        i: usize,
        h: &Tensor,
        infer: bool,
        leak_seed: Option<u64>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let flat_infer = |b: usize, y: Vec<f32>, out: usize| -> Result<Tensor> {
            Ok(Tensor::from_vec(y, (b, out), h.device())?)
        };
        let out = match &self.layers[i] {
            Layer::Linear { weight, bias } => h
                .matmul(&weight.as_tensor().t()?)?
                .broadcast_add(bias.as_tensor())?,
            Layer::Fff(f) if infer => f.forward_infer(h)?,
            Layer::Fff(f) => f.forward_train(h)?,
            Layer::Original { layer, .. } if infer => {
                let b = h.dim(0)?;
                let y = layer.forward_infer(&h.flatten_all()?.to_vec1::<f32>()?, b)?;
                flat_infer(b, y, layer.config().output_width)?
            }
            Layer::Original { layer, harden } => {
                let seed = leak_seed.map(|s| s ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let out = layer.forward_soft(h, false, seed)?;
                let aux = if *harden > 0.0 && out.node_entropies.elem_count() > 0 {
                    Some((out.node_entropies.mean_all()? * *harden)?)
                } else {
                    None
                };
                return Ok((out.output, aux));
            }
            Layer::Flat(f) if infer => {
                let b = h.dim(0)?;
                let y = f.forward_infer(&h.flatten_all()?.to_vec1::<f32>()?, b)?;
                flat_infer(b, y, f.config().output_width)?
            }
            Layer::Flat(f) => f.forward_train(h)?,
            Layer::Act(a) => a.apply_tensor(h)?,
        };
        Ok((out, None))
    }

    /// Inference forward of layer `i` alone (for routing statistics).
    pub fn forward_layer_infer(&self, i: usize, h: &Tensor) -> Result<Tensor> {
        Ok(self.apply_layer(i, h, true, None)?.0)
    }

    fn forward_with(
        &self,
        x: &Tensor,
        infer: bool,
        leak_seed: Option<u64>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let mut h = x.to_dtype(DType::F32)?;
        let mut aux: Option<Tensor> = None;
        for i in 0..self.layers.len() {
            let (out, term) = self.apply_layer(i, &h, infer, leak_seed)?;
            h = out;
            if let Some(term) = term {
                aux = Some(match aux {
                    Some(a) => (a + term)?,
                    None => term,
                });
            }
        }
        Ok((h, aux))
    }

    /// Differentiable forward (FFF layers on the O(depth) training op, original FFF layers
    /// soft, no region leak): `[B, in] -> [B, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with(x, false, None)?.0)
    }

    /// The training forward of one step: also applies region leaks drawn from `step_seed` and
    /// returns the summed hardening losses of original FFF layers, if any.
    pub fn forward_step(&self, x: &Tensor, step_seed: u64) -> Result<(Tensor, Option<Tensor>)> {
        self.forward_with(x, false, Some(step_seed))
    }

    /// Inference forward (FFF layers on the fast kernel, original FFF layers hard).
    pub fn forward_infer(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with(x, true, None)?.0)
    }
}

impl Model {
    /// Parameters with PyTorch-style names: `layers.{i}.linear_in.weight` etc. for FFF layers,
    /// `layers.{i}.weight` and `layers.{i}.bias` for linear layers.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            match l {
                Layer::Linear { weight, bias } => {
                    out.push((format!("layers.{i}.weight"), weight.as_tensor().clone()));
                    out.push((format!("layers.{i}.bias"), bias.as_tensor().clone()));
                }
                Layer::Fff(f) => out.extend(f.named_tensors(&format!("layers.{i}."))?),
                Layer::Original { layer, .. } => {
                    out.extend(layer.named_tensors(&format!("layers.{i}.")))
                }
                Layer::Flat(f) => out.extend(f.named_tensors(&format!("layers.{i}."))),
                Layer::Act(_) => {}
            }
        }
        Ok(out)
    }

    /// Replaces the parameters with those in `tensors` (names as in [`Model::named_tensors`]);
    /// `source` names the file in errors. Call before creating an optimizer.
    pub fn load_tensors(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        source: &std::path::Path,
    ) -> Result<()> {
        for (i, l) in self.layers.iter_mut().enumerate() {
            match l {
                Layer::Linear { weight, bias } => {
                    for (name, var) in [("weight", &*weight), ("bias", &*bias)] {
                        let key = format!("layers.{i}.{name}");
                        let t = tensors.get(&key).with_context(|| {
                            format!("{}: tensor `{key}` is missing", source.display())
                        })?;
                        ensure!(
                            t.dims() == var.dims(),
                            "{}: `{key}` has shape {:?}, expected {:?}",
                            source.display(),
                            t.dims(),
                            var.dims()
                        );
                        var.set(&t.to_dtype(DType::F32)?)?;
                    }
                }
                Layer::Fff(f) => {
                    *f = Fff::from_tensors(*f.config(), tensors, &format!("layers.{i}."), source)?;
                }
                Layer::Original { layer, .. } => {
                    *layer = OriginalFff::from_tensors(
                        *layer.config(),
                        tensors,
                        &format!("layers.{i}."),
                        source,
                    )?;
                }
                Layer::Flat(f) => {
                    *f = FlatFff::from_tensors(
                        *f.config(),
                        tensors,
                        &format!("layers.{i}."),
                        source,
                    )?;
                }
                Layer::Act(_) => {}
            }
        }
        Ok(())
    }
}
