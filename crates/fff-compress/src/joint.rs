//! Joint distillation: the whole student, every block in sequence, against the teacher's final
//! hidden states and sentence embeddings, with gradients through attention and LayerNorm into
//! every FFF block (the layer-wise stages see one block at a time).
//!
//! The student is written out in candle ops on padded batches: its trunk (attention,
//! LayerNorms) frozen or tuned as the recipe says ([`Tune`]), its FFF blocks on the O(depth)
//! training op. The engine computes the same function on packed batches; a test holds the two
//! together.

use crate::job::Layer;
use crate::recipe::Tune;
use anyhow::{anyhow, ensure, Result};
use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var, D};
use candle_nn::ops::{layer_norm_slow, softmax};
use fff_bert::ops::Dense;
use fff_bert::{HfBertConfig, Weights};
use std::collections::HashMap;
use std::sync::Arc;

/// The trunk of one post-LN BERT block: its attention's projections and its LayerNorms.
struct Block {
    q: Projection,
    k: Projection,
    v: Projection,
    o: Projection,
    norm1: Norm,
    norm2: Norm,
}

/// One trunk tensor under its name in the checkpoint: a candle variable when it is tuned (so
/// backward computes its gradient), a constant otherwise (so backward does not).
struct Param {
    name: String,
    value: Tensor,
}

/// A LayerNorm's scale and shift.
struct Norm {
    weight: Param,
    bias: Param,
}

/// An attention projection: frozen (the engine's packed forward and the input's gradient
/// alone), or tuned (candle's matmul, with the gradients of its weight and bias).
enum Projection {
    Frozen(FrozenLinear),
    Tuned { weight: Param, bias: Param },
}

impl Projection {
    /// `x · Wᵀ + b` for `x` of `[rows, in]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Projection::Frozen(f) => f.forward(x),
            Projection::Tuned { weight, bias } => {
                x.matmul(&weight.value.t()?)?.broadcast_add(&bias.value)
            }
        }
    }
}

/// A linear layer whose weights never train: forward the engine's `x · Wᵀ + b` (weights
/// packed once, bias in the epilogue), backward the input's gradient `g · W` alone. candle's
/// matmul backward also computes the gradient of the weights (and the bias's through its
/// broadcast add), as much work again as the input's, for tensors the joint stage never updates.
#[derive(Clone)]
struct FrozenLinear {
    /// The forward.
    dense: Arc<Dense>,
    /// `W`, `[out, in]` (the checkpoint's layout), for the backward.
    w: Tensor,
}

impl FrozenLinear {
    /// The layer of weight `w` (`[out, in]`) and bias `bias` (`[out]`).
    fn new(w: Tensor, bias: &Tensor) -> Result<FrozenLinear> {
        Ok(FrozenLinear {
            dense: Arc::new(Dense::from_tensors(&w, Some(bias))?),
            w,
        })
    }

    /// `x · Wᵀ + b` for `x` of `[rows, in]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.apply_op1(self.clone())
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, inp) = layout.shape().dims2()?;
        let (d_in, d_out) = (self.dense.inp, self.dense.out);
        if inp != d_in {
            bail!("frozen-linear: input of width {inp}, weights of width {d_in}");
        }
        let x = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(x), Some((a, b))) => &x[a..b],
            _ => bail!("frozen-linear: expected a contiguous f32 input"),
        };
        let y = self.dense.apply(x, rows);
        Ok((CpuStorage::F32(y), Shape::from((rows, d_out))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// The student's trunk: every block's attention and LayerNorms, frozen or tuned.
pub struct Trunk {
    blocks: Vec<Block>,
    heads: usize,
    hidden: usize,
    eps: f32,
}

impl Trunk {
    /// The trunk of the checkpoint `w` of config `c`, its tensors under `prefix`, with the
    /// parts `tune` names trainable.
    pub fn load(c: &HfBertConfig, w: &Weights, prefix: &str, tune: Tune) -> Result<Trunk> {
        let h = c.hidden;
        let param = |name: String, shape: &[usize], tuned: bool| -> Result<Param> {
            let t = w.get(&name, shape)?;
            let value = if tuned {
                Var::from_tensor(&t)?.as_tensor().clone()
            } else {
                t
            };
            Ok(Param { name, value })
        };
        let linear = |name: &str| -> Result<Projection> {
            let (weight, bias) = (format!("{name}.weight"), format!("{name}.bias"));
            Ok(match tune {
                Tune::All => Projection::Tuned {
                    weight: param(weight, &[h, h], true)?,
                    bias: param(bias, &[h], true)?,
                },
                Tune::Ffn | Tune::Norms => Projection::Frozen(FrozenLinear::new(
                    w.get(&weight, &[h, h])?,
                    &w.get(&bias, &[h])?,
                )?),
            })
        };
        let norm = |name: &str| -> Result<Norm> {
            let (g, b) = if w.contains(&format!("{name}.weight")) {
                ("weight", "bias")
            } else {
                ("gamma", "beta")
            };
            let tuned = tune != Tune::Ffn;
            Ok(Norm {
                weight: param(format!("{name}.{g}"), &[h], tuned)?,
                bias: param(format!("{name}.{b}"), &[h], tuned)?,
            })
        };
        let blocks = (0..c.layers)
            .map(|i| {
                let l = format!("{prefix}encoder.layer.{i}");
                Ok(Block {
                    q: linear(&format!("{l}.attention.self.query"))?,
                    k: linear(&format!("{l}.attention.self.key"))?,
                    v: linear(&format!("{l}.attention.self.value"))?,
                    o: linear(&format!("{l}.attention.output.dense"))?,
                    norm1: norm(&format!("{l}.attention.output.LayerNorm"))?,
                    norm2: norm(&format!("{l}.output.LayerNorm"))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Trunk {
            blocks,
            heads: c.heads,
            hidden: h,
            eps: c.norm_eps as f32,
        })
    }

    /// The tuned tensors in a fixed order: for each block its projections', then its
    /// LayerNorms'.
    fn trained(&self) -> Vec<&Param> {
        let mut out = Vec::new();
        for b in &self.blocks {
            for p in [&b.q, &b.k, &b.v, &b.o] {
                if let Projection::Tuned { weight, bias } = p {
                    out.extend([weight, bias]);
                }
            }
            out.extend([
                &b.norm1.weight,
                &b.norm1.bias,
                &b.norm2.weight,
                &b.norm2.bias,
            ]);
        }
        out.retain(|p| p.value.is_variable());
        out
    }

    /// The variables the joint stage trains besides the FFN blocks.
    pub fn vars(&self) -> Vec<Var> {
        self.trained()
            .into_iter()
            .map(|p| Var::from_tensor(&p.value).expect("a tuned tensor is a variable"))
            .collect()
    }

    /// The tensors tuned, by their names in the checkpoint (empty when the trunk is frozen).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.trained()
            .into_iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect()
    }

    /// Sets the tuned tensors to `values` (a checkpoint's), each of which must be there.
    pub fn set(&self, values: &HashMap<String, Tensor>) -> Result<()> {
        let trained = self.trained();
        ensure!(
            trained.len() == values.len(),
            "a checkpoint of {} tuned trunk tensors, expected {}",
            values.len(),
            trained.len()
        );
        for p in trained {
            let name = &p.name;
            let t = values
                .get(name)
                .ok_or_else(|| anyhow!("the checkpoint has no tuned tensor `{name}`"))?;
            ensure!(
                t.dims() == p.value.dims(),
                "tuned tensor `{name}`: shape {:?}, expected {:?}",
                t.dims(),
                p.value.dims()
            );
            Var::from_tensor(&p.value)?.set(t)?;
        }
        Ok(())
    }

    /// The final hidden states `[batch·seq, hidden]` of the student whose FFN blocks are
    /// `layers`, from the embedding output `x0 [batch, seq, hidden]` and the key mask
    /// `mask [batch, seq]` (1 for tokens, 0 for padding).
    pub(crate) fn forward(&self, x0: &Tensor, mask: &Tensor, layers: &[Layer]) -> Result<Tensor> {
        let (b, s, h) = x0.dims3()?;
        let (heads, d) = (self.heads, self.hidden / self.heads);
        // Padding keys get a large negative score; their softmax weight underflows to 0.
        let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, s))?;
        let scale = 1.0 / (d as f64).sqrt();
        let mut x = x0.reshape((b * s, h))?;
        for (block, layer) in self.blocks.iter().zip(layers) {
            let split = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous()
            };
            let q = split(block.q.forward(&x)?)?;
            let k = split(block.k.forward(&x)?)?;
            let v = split(block.v.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&bias)?;
            let ctx = softmax(&scores, D::Minus1)?
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * s, h))?;
            let a = block.o.forward(&ctx)?;
            let norm =
                |x: &Tensor, n: &Norm| layer_norm_slow(x, &n.weight.value, &n.bias.value, self.eps);
            let h1 = norm(&(a + &x)?, &block.norm1)?;
            let f = layer.forward(&h1)?;
            x = norm(&(f + h1)?, &block.norm2)?;
        }
        Ok(x)
    }
}

/// Rows of packed `[tokens, hidden]` states for the passages `which` (by `offsets`), padded to
/// `[which.len(), longest, hidden]`, with the mask `[which.len(), longest]`.
pub fn pad(
    packed: &[f32],
    hidden: usize,
    offsets: &[usize],
    which: &[usize],
) -> Result<(Tensor, Tensor)> {
    let longest = which
        .iter()
        .map(|&i| offsets[i + 1] - offsets[i])
        .max()
        .unwrap_or(0);
    let mut x = vec![0f32; which.len() * longest * hidden];
    let mut m = vec![0f32; which.len() * longest];
    for (row, &i) in which.iter().enumerate() {
        let (a, b) = (offsets[i], offsets[i + 1]);
        let dst = row * longest * hidden;
        x[dst..dst + (b - a) * hidden].copy_from_slice(&packed[a * hidden..b * hidden]);
        m[row * longest..row * longest + (b - a)].fill(1.0);
    }
    let dev = &Device::Cpu;
    Ok((
        Tensor::from_vec(x, (which.len(), longest, hidden), dev)?,
        Tensor::from_vec(m, (which.len(), longest), dev)?,
    ))
}

/// The joint loss: squared error of the final hidden states over the real tokens relative to
/// the target's power, plus the mean of `1 − cosine` of the mean-pooled embeddings.
pub fn loss(student: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, s, h) = target.dims3()?;
    let student = student.reshape((b, s, h))?;
    let m = mask.reshape((b, s, 1))?;
    let tokens = mask.sum_all()?.to_scalar::<f32>()? as f64;
    let power = (target
        .sqr()?
        .broadcast_mul(&m)?
        .sum_all()?
        .to_scalar::<f32>()? as f64
        / (tokens * h as f64))
        .max(1e-12);
    let diff = (&student - target)?.broadcast_mul(&m)?;
    let mse = (diff.sqr()?.sum_all()? / (tokens * h as f64 * power))?;
    let counts = mask.sum_keepdim(1)?;
    let pool = |t: &Tensor| -> candle_core::Result<Tensor> {
        t.broadcast_mul(&m)?.sum(1)?.broadcast_div(&counts)
    };
    let (ps, pt) = (pool(&student)?, pool(target)?);
    let dot = (&ps * &pt)?.sum(1)?;
    let norms = (ps.sqr()?.sum(1)?.sqrt()? * pt.sqr()?.sum(1)?.sqrt()?)?;
    let cos = (dot / (norms + 1e-12)?)?;
    let cos_loss = (1.0 - cos)?.mean_all()?;
    Ok((mse + cos_loss)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fff_bert::{BertTokenizer, ModelConfig, Pipeline};
    use std::path::Path;

    /// The frozen linear computes what candle's `x · Wᵀ + b` computes, and the same gradient
    /// for its input, on random shapes (a non-contiguous gradient included: it meets a
    /// transpose in the attention).
    #[test]
    fn frozen_linear_matches_candle_forward_and_input_gradient() {
        use candle_core::Var;
        let dev = &Device::Cpu;
        for (rows, inp, out) in [(1, 1, 1), (5, 7, 3), (33, 16, 40), (64, 24, 24)] {
            let w = Tensor::randn(0f32, 1.0, (out, inp), dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, out, dev).unwrap();
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, inp), dev).unwrap()).unwrap();
            let target = Tensor::randn(0f32, 1.0, (out, rows), dev)
                .unwrap()
                .t()
                .unwrap();
            let frozen = FrozenLinear::new(w.clone(), &b).unwrap();
            let ours = frozen.forward(x.as_tensor()).unwrap();
            let plain = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let grad = |y: &Tensor| {
                let loss = (y * &target).unwrap().sum_all().unwrap();
                loss.backward().unwrap().get(x.as_tensor()).unwrap().clone()
            };
            let gap = |a: &Tensor, b: &Tensor| {
                (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            assert!(gap(&ours, &plain) < 1e-4, "{rows}x{inp}x{out} forward");
            assert!(
                gap(&grad(&ours), &grad(&plain)) < 1e-4,
                "{rows}x{inp}x{out} gradient"
            );
        }
    }

    /// The candle student and the engine run the same compressed models (FFF blocks, and FFF
    /// blocks beside a dense branch) on the same texts: the final hidden states of every real
    /// token agree.
    #[test]
    fn the_candle_student_computes_what_the_engine_computes() {
        for name in ["tiny-st-fff", "tiny-st-fff-branch"] {
            the_candle_student_computes_what_the_engine_computes_on(name);
        }
    }

    fn the_candle_student_computes_what_the_engine_computes_on(name: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fff-bert/tests/fixtures/hf")
            .join(name);
        let p = Pipeline::load(&dir).unwrap();
        assert_eq!(
            p.model.fff_branch(0).is_some(),
            name.ends_with("branch"),
            "{name}"
        );
        let ModelConfig::Bert(c) = ModelConfig::from_file(&dir.join("config.json")).unwrap() else {
            panic!("a BERT config")
        };
        let w = Weights::from_dir(&dir).unwrap();
        // Frozen projections (the packed forward) and tuned ones (candle's matmul) alike.
        let trunks =
            [Tune::Ffn, Tune::Norms, Tune::All].map(|t| (t, Trunk::load(&c, &w, "", t).unwrap()));
        let layers: Vec<Layer> = (0..c.layers)
            .map(|i| {
                let bias = w
                    .get(&format!("encoder.layer.{i}.output.dense.bias"), &[c.hidden])
                    .unwrap();
                Layer {
                    fff: p.model.fff_layer(i).unwrap().clone(),
                    branch: p.model.fff_branch(i).cloned(),
                    bias: candle_core::Var::from_tensor(&bias).unwrap(),
                }
            })
            .collect();
        let texts = [
            "the quick brown fox",
            "a",
            "hello world, this is a longer test of it",
        ];
        let encs: Vec<_> = texts
            .iter()
            .map(|t| p.tokenizer.encode_text(t).unwrap())
            .collect();
        let packed = BertTokenizer::pack(&encs);
        let mut embedded = Vec::new();
        let out = p
            .model
            .encode_packed_with(&packed, |name, states| {
                if name == "embedding" {
                    embedded = states.to_vec();
                }
                Ok(())
            })
            .unwrap();
        let engine = out.hidden.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let which: Vec<usize> = (0..texts.len()).collect();
        let (x0, mask) = pad(&embedded, c.hidden, &out.offsets, &which).unwrap();
        let (padded, _) = pad(&engine, c.hidden, &out.offsets, &which).unwrap();
        let m = mask
            .unsqueeze(2)
            .unwrap()
            .broadcast_as(padded.shape())
            .unwrap();
        for (tune, trunk) in &trunks {
            let h = trunk.forward(&x0, &mask, &layers).unwrap();
            let gap = ((h.reshape(padded.shape()).unwrap() - &padded)
                .unwrap()
                .abs()
                .unwrap()
                * &m)
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                gap < 1e-4,
                "{name}, {}: candle student vs engine: {gap}",
                tune.name()
            );
        }
        assert_eq!(trunks[0].1.vars().len(), 0);
        // Two LayerNorms per block, and with them four projections: weights and biases.
        assert_eq!(trunks[1].1.vars().len(), 4 * c.layers);
        assert_eq!(trunks[2].1.vars().len(), 12 * c.layers);
        // The loss of the student against itself is zero.
        let l = loss(&padded, &padded, &mask)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(l.abs() < 1e-5, "{l}");
    }
}
