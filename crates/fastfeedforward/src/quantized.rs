//! [`QuantizedFff`]: an FFF layer for inference with its weights stored as f32, bf16 or int8
//! (see [`crate::kernels::format`]), made from a trained [`Fff`] by [`Fff::quantize`].
//!
//! Files keep UltraFastBERT's tensor names and layouts; the stored dtype says the format, and
//! int8 files carry the scales beside the weights:
//!
//! | tensor | dtype | shape | meaning |
//! |---|---|---|---|
//! | `linear_in.weight` | F32, BF16 or I8 | `[K·M, in]` | input rows |
//! | `linear_in.bias` | F32 | `[K·M]` | biases |
//! | `linear_out.weight` | F32, BF16 or I8 | `[out, K·M]` | output rows (columns here) |
//! | `linear_in.weight_scale` | F32 | `[K·M]` | int8 only: row `n` of `linear_in.weight` is `q · scale[n]` |
//! | `linear_out.weight_scale` | F32 | `[K·M]` | int8 only: column `n` of `linear_out.weight` is `q · scale[n]` |
//!
//! The metadata holds the layer's configuration (as [`Fff::save`] writes it) and
//! `fff.weight_format` (`f32`, `bf16` or `int8`).

use crate::checkpoint;
use crate::conditional::{ConditionalLayer, Routing};
use crate::config::FffConfig;
use crate::error::{FffError, Result};
use crate::kernels::format::{to_bf16, to_int8_rows, WeightFormat};
use crate::kernels::{self, FffWeightsView, InferOptions, Workspace};
use crate::layer::{transpose, Fff, B_IN, W_IN, W_OUT};
use candle_core::{Tensor, Var};
use half::bf16;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Name of the per-row scales of `linear_in.weight` in int8 files.
pub const W_IN_SCALE: &str = "linear_in.weight_scale";
/// Name of the per-node (per-column) scales of `linear_out.weight` in int8 files.
pub const W_OUT_SCALE: &str = "linear_out.weight_scale";
/// Metadata key of the weight format.
pub const FORMAT_KEY: &str = "fff.weight_format";

/// The stored weights, node-major as the kernels read them.
#[derive(Debug, Clone)]
enum Packed {
    F32 {
        w_in: Vec<f32>,
        w_out_t: Vec<f32>,
    },
    Bf16 {
        w_in: Vec<bf16>,
        w_out_t: Vec<bf16>,
    },
    Int8 {
        w_in: Vec<i8>,
        w_in_scales: Vec<f32>,
        w_out_t: Vec<i8>,
        w_out_scales: Vec<f32>,
    },
}

/// An inference-only FFF layer with weights in a chosen [`WeightFormat`].
#[derive(Debug, Clone)]
pub struct QuantizedFff {
    config: FffConfig,
    b_in: Vec<f32>,
    packed: Packed,
}

/// Runs `$body` with `$w` bound to the layer's kernel view, whatever its format (each arm is a
/// separate instantiation of the generic kernels).
macro_rules! with_view {
    ($layer:expr, |$w:ident| $body:expr) => {{
        let layer = $layer;
        let (c, b) = (layer.config, &layer.b_in[..]);
        match &layer.packed {
            Packed::F32 { w_in, w_out_t } => {
                let $w = FffWeightsView::with_scales(c, w_in, b, w_out_t, &[], &[])?;
                $body
            }
            Packed::Bf16 { w_in, w_out_t } => {
                let $w = FffWeightsView::with_scales(c, w_in, b, w_out_t, &[], &[])?;
                $body
            }
            Packed::Int8 {
                w_in,
                w_in_scales,
                w_out_t,
                w_out_scales,
            } => {
                let $w =
                    FffWeightsView::with_scales(c, w_in, b, w_out_t, w_in_scales, w_out_scales)?;
                $body
            }
        }
    }};
}

impl Fff {
    /// A copy of this layer for inference with its weights in `format` (a snapshot: later
    /// training of `self` does not change it). int8 needs finite weights.
    pub fn quantize(&self, format: WeightFormat) -> Result<QuantizedFff> {
        let c = *self.config();
        let values = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let (w_in, b_in, w_out_t) = (
            values(self.w_in())?,
            values(self.b_in())?,
            values(self.w_out_t())?,
        );
        QuantizedFff::from_node_major(c, format, w_in, b_in, w_out_t)
    }
}

impl QuantizedFff {
    /// A layer from f32 buffers in the kernels' layout, stored in `format`.
    pub fn from_node_major(
        config: FffConfig,
        format: WeightFormat,
        w_in: Vec<f32>,
        b_in: Vec<f32>,
        w_out_t: Vec<f32>,
    ) -> Result<Self> {
        FffWeightsView::new(config, &w_in, &b_in, &w_out_t)?;
        let packed = match format {
            WeightFormat::F32 => Packed::F32 { w_in, w_out_t },
            WeightFormat::Bf16 => Packed::Bf16 {
                w_in: to_bf16(&w_in),
                w_out_t: to_bf16(&w_out_t),
            },
            WeightFormat::Int8 => {
                for (name, v) in [(W_IN, &w_in), (W_OUT, &w_out_t)] {
                    if let Some(index) = v.iter().position(|v| !v.is_finite()) {
                        return Err(FffError::NonFinite {
                            name: format!("{name} (int8 needs finite weights to scale)"),
                            index,
                        });
                    }
                }
                let (w_in, w_in_scales) = to_int8_rows(&w_in, config.input_width);
                let (w_out_t, w_out_scales) = to_int8_rows(&w_out_t, config.output_width);
                let rows = config.total_nodes();
                // A zero-width side has no rows to scale; its scales are all 1.
                let fill = |s: Vec<f32>| if s.len() == rows { s } else { vec![1.0; rows] };
                Packed::Int8 {
                    w_in,
                    w_in_scales: fill(w_in_scales),
                    w_out_t,
                    w_out_scales: fill(w_out_scales),
                }
            }
        };
        let layer = QuantizedFff {
            config,
            b_in,
            packed,
        };
        layer.check()?;
        Ok(layer)
    }

    /// Checks every buffer's length against the configuration.
    fn check(&self) -> Result<()> {
        with_view!(self, |w| {
            let _ = w;
            Ok(())
        })
    }

    /// The layer's configuration.
    pub fn config(&self) -> &FffConfig {
        &self.config
    }

    /// The format the weights are stored in.
    pub fn format(&self) -> WeightFormat {
        match self.packed {
            Packed::F32 { .. } => WeightFormat::F32,
            Packed::Bf16 { .. } => WeightFormat::Bf16,
            Packed::Int8 { .. } => WeightFormat::Int8,
        }
    }

    /// Bytes of stored weights, biases and scales.
    pub fn weight_bytes(&self) -> usize {
        let c = &self.config;
        let f = self.format();
        c.total_nodes() * (f.row_bytes(c.input_width) + f.row_bytes(c.output_width) + 4)
    }

    /// The weights widened back to f32, node-major: `(w_in, b_in, w_out_t)`, each weight
    /// exactly as the kernels see it (scale applied).
    pub fn dequantized(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let c = &self.config;
        let widen = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
        let scaled = |q: &[i8], s: &[f32], width: usize| -> Vec<f32> {
            if width == 0 {
                return Vec::new();
            }
            q.chunks_exact(width)
                .zip(s)
                .flat_map(|(row, &s)| row.iter().map(move |&v| v as f32 * s))
                .collect()
        };
        let (w_in, w_out_t) = match &self.packed {
            Packed::F32 { w_in, w_out_t } => (w_in.clone(), w_out_t.clone()),
            Packed::Bf16 { w_in, w_out_t } => (widen(w_in), widen(w_out_t)),
            Packed::Int8 {
                w_in,
                w_in_scales,
                w_out_t,
                w_out_scales,
            } => (
                scaled(w_in, w_in_scales, c.input_width),
                scaled(w_out_t, w_out_scales, c.output_width),
            ),
        };
        (w_in, self.b_in.clone(), w_out_t)
    }

    /// Inference into caller-owned buffers (`x` is `[batch, in]`, `y` is `[batch, out]`).
    pub fn forward_infer_with(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        ws: &mut Workspace,
        opts: InferOptions,
    ) -> Result<()> {
        with_view!(self, |w| kernels::forward(&w, x, batch, y, ws, opts))
    }

    /// [`QuantizedFff::forward_infer_with`], returning the nodes each input visited in the
    /// kernel's walk, laid out as [`Fff::forward_infer_routed`] lays them out.
    pub fn forward_infer_routed(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        ws: &mut Workspace,
        opts: InferOptions,
    ) -> Result<Vec<u32>> {
        let mut routes = vec![0; batch * self.config.used_nodes()];
        with_view!(self, |w| kernels::forward_with_routes(
            &w,
            x,
            batch,
            y,
            ws,
            opts,
            &mut routes
        ))?;
        Ok(routes)
    }

    /// The plain reference of this format (stored weights widened exactly, f64 sums).
    pub fn forward_reference(&self, x: &[f32], batch: usize, y: &mut [f32]) -> Result<()> {
        with_view!(self, |w| kernels::reference::forward(&w, x, batch, y))
    }

    /// The nodes input `x` visits by the reference descent of this format.
    pub fn route(&self, x: &[f32]) -> Result<Vec<u32>> {
        if x.len() != self.config.input_width {
            return Err(FffError::shape(
                "input",
                &[self.config.input_width],
                &[x.len()],
            ));
        }
        with_view!(self, |w| Ok(kernels::reference::route(&w, x)))
    }

    /// Saves to a safetensors file (names and layout in the module docs), atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let c = &self.config;
        let rows = c.total_nodes();
        let mut metadata = checkpoint::config_metadata(c);
        metadata.insert(FORMAT_KEY.into(), self.format().name().into());
        metadata.insert("format".into(), "pt".into());
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
            vec![(B_IN.into(), Dtype::F32, vec![rows], f32_bytes(&self.b_in))];
        let (cin, cout) = (c.input_width, c.output_width);
        match &self.packed {
            Packed::F32 { w_in, w_out_t } => {
                owned.push((W_IN.into(), Dtype::F32, vec![rows, cin], f32_bytes(w_in)));
                let w_out = transpose(w_out_t, rows, cout);
                owned.push((
                    W_OUT.into(),
                    Dtype::F32,
                    vec![cout, rows],
                    f32_bytes(&w_out),
                ));
            }
            Packed::Bf16 { w_in, w_out_t } => {
                let bytes =
                    |v: &[bf16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
                owned.push((W_IN.into(), Dtype::BF16, vec![rows, cin], bytes(w_in)));
                let w_out = transpose(w_out_t, rows, cout);
                owned.push((W_OUT.into(), Dtype::BF16, vec![cout, rows], bytes(&w_out)));
            }
            Packed::Int8 {
                w_in,
                w_in_scales,
                w_out_t,
                w_out_scales,
            } => {
                let bytes = |v: &[i8]| v.iter().map(|&x| x as u8).collect::<Vec<u8>>();
                owned.push((W_IN.into(), Dtype::I8, vec![rows, cin], bytes(w_in)));
                let w_out = transpose(w_out_t, rows, cout);
                owned.push((W_OUT.into(), Dtype::I8, vec![cout, rows], bytes(&w_out)));
                owned.push((
                    W_IN_SCALE.into(),
                    Dtype::F32,
                    vec![rows],
                    f32_bytes(w_in_scales),
                ));
                owned.push((
                    W_OUT_SCALE.into(),
                    Dtype::F32,
                    vec![rows],
                    f32_bytes(w_out_scales),
                ));
            }
        }
        let mut views = Vec::with_capacity(owned.len());
        for (name, dtype, shape, data) in &owned {
            let view =
                TensorView::new(*dtype, shape.clone(), data).map_err(|e| FffError::Checkpoint {
                    path: path.to_path_buf(),
                    message: format!("cannot write `{name}`: {e}"),
                })?;
            views.push((name.as_str(), view));
        }
        fff_util::fs::write_with(path, |tmp| {
            safetensors::serialize_to_file(views, Some(metadata), tmp)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .map_err(|e| FffError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("cannot write: {e}"),
        })
    }

    /// Loads a file written by [`QuantizedFff::save`] (or an f32 file of [`Fff::save`], which
    /// loads as f32). With `config` None, the configuration comes from the metadata.
    pub fn load(path: impl AsRef<Path>, config: Option<FffConfig>) -> Result<Self> {
        let path = path.as_ref();
        let err = |message: String| FffError::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
        // SAFETY: a read-only mapping, dropped before this returns; the file must not be
        // truncated or rewritten while it is being read (as with every safetensors loader).
        let bytes =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(format!("cannot read: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let config = match config {
            Some(c) => {
                c.validate()?;
                c
            }
            None => checkpoint::config_from_metadata(path, &metadata)?,
        };
        let rows = config.total_nodes();
        let (cin, cout) = (config.input_width, config.output_width);
        let names = || {
            let mut n: Vec<&str> = st.names();
            n.sort_unstable();
            n.join(", ")
        };
        let tensor = |name: &str, shape: &[usize]| -> Result<TensorView<'_>> {
            let t = st.tensor(name).map_err(|_| FffError::MissingTensor {
                path: path.to_path_buf(),
                name: name.into(),
                found: names(),
            })?;
            if t.shape() != shape {
                return Err(FffError::shape(
                    format!("{}: {name}", path.display()),
                    shape,
                    t.shape(),
                ));
            }
            Ok(t)
        };
        let f32s = |t: &TensorView<'_>, name: &str| -> Result<Vec<f32>> {
            if t.dtype() != Dtype::F32 {
                return Err(err(format!("`{name}` is {:?}, expected F32", t.dtype())));
            }
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if let Some(index) = v.iter().position(|v| !v.is_finite()) {
                return Err(FffError::NonFinite {
                    name: format!("{}: {name}", path.display()),
                    index,
                });
            }
            Ok(v)
        };
        let b_in = f32s(&tensor(B_IN, &[rows])?, B_IN)?;
        let t_in = tensor(W_IN, &[rows, cin])?;
        let t_out = tensor(W_OUT, &[cout, rows])?;
        if t_in.dtype() != t_out.dtype() {
            return Err(err(format!(
                "`{W_IN}` is {:?} but `{W_OUT}` is {:?}; both must have one format",
                t_in.dtype(),
                t_out.dtype()
            )));
        }
        let stated = metadata.get(FORMAT_KEY).map(String::as_str);
        let format = match t_in.dtype() {
            Dtype::F32 => WeightFormat::F32,
            Dtype::BF16 => WeightFormat::Bf16,
            Dtype::I8 => WeightFormat::Int8,
            other => {
                return Err(err(format!(
                    "`{W_IN}` is {other:?}; expected F32, BF16 or I8 weights"
                )))
            }
        };
        if let Some(s) = stated {
            if s != format.name() {
                return Err(err(format!(
                    "metadata `{FORMAT_KEY}` says `{s}` but the weights are {:?}",
                    t_in.dtype()
                )));
            }
        }
        let packed = match format {
            WeightFormat::F32 => Packed::F32 {
                w_in: f32s(&t_in, W_IN)?,
                w_out_t: transpose(&f32s(&t_out, W_OUT)?, cout, rows),
            },
            WeightFormat::Bf16 => {
                let read = |t: &TensorView<'_>| -> Vec<bf16> {
                    t.data()
                        .chunks_exact(2)
                        .map(|b| bf16::from_le_bytes([b[0], b[1]]))
                        .collect()
                };
                Packed::Bf16 {
                    w_in: read(&t_in),
                    w_out_t: transpose(&read(&t_out), cout, rows),
                }
            }
            WeightFormat::Int8 => {
                let read =
                    |t: &TensorView<'_>| -> Vec<i8> { t.data().iter().map(|&b| b as i8).collect() };
                Packed::Int8 {
                    w_in: read(&t_in),
                    w_in_scales: f32s(&tensor(W_IN_SCALE, &[rows])?, W_IN_SCALE)?,
                    w_out_t: transpose(&read(&t_out), cout, rows),
                    w_out_scales: f32s(&tensor(W_OUT_SCALE, &[rows])?, W_OUT_SCALE)?,
                }
            }
        };
        let layer = QuantizedFff {
            config,
            b_in,
            packed,
        };
        layer.check()?;
        Ok(layer)
    }
}

impl ConditionalLayer for QuantizedFff {
    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "fff {}-{} d{} k{} {}",
            c.input_width,
            c.output_width,
            c.depth,
            c.trees,
            self.format()
        )
    }

    fn input_width(&self) -> usize {
        self.config.input_width
    }

    fn output_width(&self) -> usize {
        self.config.output_width
    }

    /// Not available: a quantized layer is for inference; train the f32 [`Fff`] it came from.
    fn forward_train(&self, _x: &Tensor) -> Result<Tensor> {
        Err(FffError::Unsupported(format!(
            "a {} FFF layer is for inference only; train the f32 layer and quantize it again",
            self.format()
        )))
    }

    fn forward_infer_into(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        ws: &mut Workspace,
    ) -> Result<()> {
        self.forward_infer_with(x, batch, y, ws, InferOptions::default())
    }

    fn route_batch(&self, _x: &[f32], _batch: usize) -> Result<Option<Routing>> {
        Ok(None)
    }

    /// None: nothing in a quantized layer trains.
    fn vars(&self) -> Vec<Var> {
        Vec::new()
    }

    /// The weights widened to f32 (scales applied), under PyTorch's names and layouts.
    fn named_tensors(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        let c = &self.config;
        let rows = c.total_nodes();
        let (w_in, b_in, w_out_t) = self.dequantized();
        let dev = &candle_core::Device::Cpu;
        Ok(vec![
            (
                format!("{prefix}{W_IN}"),
                Tensor::from_vec(w_in, (rows, c.input_width), dev)?,
            ),
            (
                format!("{prefix}{B_IN}"),
                Tensor::from_vec(b_in, rows, dev)?,
            ),
            (
                format!("{prefix}{W_OUT}"),
                Tensor::from_vec(
                    transpose(&w_out_t, rows, c.output_width),
                    (c.output_width, rows),
                    dev,
                )?,
            ),
        ])
    }

    /// Loads f32 tensors (as a trained model's checkpoint holds them) and stores them in this
    /// layer's format.
    fn load_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        source: &Path,
    ) -> Result<()> {
        *self = Fff::from_tensors(self.config, tensors, prefix, source)?.quantize(self.format())?;
        Ok(())
    }

    fn multiply_adds_per_input(&self) -> usize {
        let c = &self.config;
        c.used_nodes() * (c.input_width + c.output_width)
    }

    fn neurons_per_input(&self) -> usize {
        self.config.used_nodes()
    }
}
