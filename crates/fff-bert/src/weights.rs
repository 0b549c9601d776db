//! Checkpoint tensors by name, from `model.safetensors` or `pytorch_model.bin`, with shape and
//! finiteness checks that name the file and the tensor.

use crate::error::{BertError, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Prefixes that wrappers add to every name: `torch.compile` and `DataParallel`.
const WRAPPER_PREFIXES: [&str; 2] = ["_orig_mod.", "module."];

/// The tensors of one checkpoint file, or random ones made on request (for benchmarks).
#[derive(Debug, Clone)]
pub struct Weights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    /// When set, `get` draws a tensor of the requested shape instead of looking it up.
    random_seed: Option<u64>,
}

impl Weights {
    /// Loads `model.safetensors`, or else `pytorch_model.bin`, from the model folder `dir`.
    pub fn from_dir(dir: &Path) -> Result<Weights> {
        let safetensors = dir.join("model.safetensors");
        let pickle = dir.join("pytorch_model.bin");
        if safetensors.is_file() {
            Weights::from_file(&safetensors)
        } else if pickle.is_file() {
            Weights::from_file(&pickle)
        } else {
            Err(BertError::Io {
                path: dir.to_path_buf(),
                message: "no weights: expected model.safetensors or pytorch_model.bin".into(),
            })
        }
    }

    /// Loads one file; `.safetensors` by its extension, anything else as a PyTorch pickle.
    pub fn from_file(path: &Path) -> Result<Weights> {
        let io = |e: candle_core::Error| BertError::Io {
            path: path.to_path_buf(),
            message: format!("cannot read the checkpoint: {e}"),
        };
        let raw: Vec<(String, Tensor)> = if path.extension().is_some_and(|e| e == "safetensors") {
            candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(io)?
                .into_iter()
                .collect()
        } else {
            candle_core::pickle::read_all(path).map_err(io)?
        };
        Ok(Weights::from_named(path, raw))
    }

    /// Wraps tensors already in memory; `path` names them in errors.
    pub fn from_named(path: &Path, raw: impl IntoIterator<Item = (String, Tensor)>) -> Weights {
        let tensors = raw
            .into_iter()
            .map(|(name, t)| (strip_wrappers(&name).to_string(), t))
            .collect();
        Weights {
            path: path.to_path_buf(),
            tensors,
            random_seed: None,
        }
    }

    /// Random weights in crammedBERT's initialisation (normal, std 0.02; LayerNorm weights one,
    /// biases zero), drawn per tensor from `seed` and the tensor's name. Optional tensors are
    /// absent and scalars take their documented defaults.
    pub fn random(seed: u64) -> Weights {
        Weights {
            path: PathBuf::from("<random weights>"),
            tensors: HashMap::new(),
            random_seed: Some(seed),
        }
    }

    /// The file the tensors came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the checkpoint holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Tensor `name` as f32, checked to have `shape` and finite values.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Some(seed) = self.random_seed {
            return random_tensor(seed, name, shape);
        }
        let t = self.tensors.get(name).ok_or_else(|| self.missing(name))?;
        self.check(name, t, shape)
    }

    /// Like [`Weights::get`], but `None` when absent.
    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        match self.tensors.get(name) {
            None => Ok(None),
            Some(t) => self.check(name, t, shape).map(Some),
        }
    }

    /// A scalar stored as a 0-d or one-element tensor; random weights give `default`.
    pub fn scalar(&self, name: &str, default: f64) -> Result<f64> {
        if self.random_seed.is_some() {
            return Ok(default);
        }
        let t = self.tensors.get(name).ok_or_else(|| self.missing(name))?;
        if t.elem_count() != 1 {
            return Err(BertError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: vec![1],
                found: t.dims().to_vec(),
            });
        }
        let t = self.check(name, t, t.dims())?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?[0] as f64)
    }

    fn check(&self, name: &str, t: &Tensor, shape: &[usize]) -> Result<Tensor> {
        if t.dims() != shape {
            return Err(BertError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        let t = t.to_dtype(DType::F32)?;
        let finite = t
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err(BertError::NonFinite {
                path: self.path.clone(),
                name: name.to_string(),
            });
        }
        Ok(t)
    }

    fn missing(&self, name: &str) -> BertError {
        let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
        let mut near: Vec<&str> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with(stem.rsplit_once('.').map_or(stem, |(s, _)| s)))
            .map(String::as_str)
            .collect();
        near.sort_unstable();
        near.truncate(8);
        let hint = if near.is_empty() {
            format!(
                "the file has {} tensors, none with a similar name",
                self.len()
            )
        } else {
            format!("similar names present: {}", near.join(", "))
        };
        BertError::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
            hint,
        }
    }
}

fn strip_wrappers(mut name: &str) -> &str {
    while let Some(rest) = WRAPPER_PREFIXES.iter().find_map(|p| name.strip_prefix(p)) {
        name = rest;
    }
    name
}

fn random_tensor(seed: u64, name: &str, shape: &[usize]) -> Result<Tensor> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let n: usize = shape.iter().product();
    let is_norm = name.contains("norm") && name.ends_with(".weight");
    let values = if is_norm {
        vec![1f32; n]
    } else if name.ends_with(".bias") {
        vec![0f32; n]
    } else {
        // FNV-1a of the name, so each tensor's values do not depend on the loading order.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ h);
        let normal = rand_distr::Normal::new(0f32, 0.02).expect("valid std");
        (0..n).map(|_| normal.sample(&mut rng)).collect()
    };
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}
