//! Checkpoint tensors by name, from `model.safetensors` or `pytorch_model.bin`, with shape and
//! finiteness checks that name the file and the tensor.
//!
//! A safetensors file is memory-mapped and only its header is read when it is opened; a tensor's
//! bytes are read when the model asks for it, after its shape has been checked, so a huge or
//! corrupt file is refused before anything is allocated for it.

use crate::error::{BertError, Result};
use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Prefixes that wrappers add to every name: `torch.compile` and `DataParallel`.
const WRAPPER_PREFIXES: [&str; 2] = ["_orig_mod.", "module."];

/// The tensors of one checkpoint file, or random ones made on request (for benchmarks).
#[derive(Clone)]
pub struct Weights {
    path: PathBuf,
    store: Store,
}

/// Where tensors come from.
#[derive(Clone)]
enum Store {
    /// Already in memory (a pickle, or tensors handed over).
    Loaded(HashMap<String, Tensor>),
    /// A memory-mapped safetensors file whose header has been validated; `names` maps each name
    /// without wrapper prefixes to the name in the file.
    Mapped {
        file: Arc<MmapedSafetensors>,
        names: HashMap<String, String>,
    },
    /// `get` draws a tensor of the requested shape instead of looking it up.
    Random(u64),
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let store = match &self.store {
            Store::Loaded(t) => format!("{} tensors in memory", t.len()),
            Store::Mapped { names, .. } => format!("{} tensors, memory-mapped", names.len()),
            Store::Random(seed) => format!("random, seed {seed}"),
        };
        f.debug_struct("Weights")
            .field("path", &self.path)
            .field("store", &store)
            .finish()
    }
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

    /// Loads one file; `.safetensors` by its extension (memory-mapped, header checked first),
    /// anything else as a PyTorch pickle.
    pub fn from_file(path: &Path) -> Result<Weights> {
        let io = |e: candle_core::Error| BertError::Io {
            path: path.to_path_buf(),
            message: format!("cannot read the checkpoint: {e}"),
        };
        if path.extension().is_some_and(|e| e == "safetensors") {
            // SAFETY: the mapping is read-only and lives as long as the tensors read from it are
            // being copied out; as with every safetensors loader, the file must not be truncated
            // or rewritten while the model loads.
            let file = unsafe { MmapedSafetensors::new(path) }.map_err(io)?;
            let names = file
                .tensors()
                .into_iter()
                .map(|(name, _)| (strip_wrappers(&name).to_string(), name))
                .collect();
            return Ok(Weights {
                path: path.to_path_buf(),
                store: Store::Mapped {
                    file: Arc::new(file),
                    names,
                },
            });
        }
        check_torch_zip(path)?;
        let raw = candle_core::pickle::read_all(path).map_err(io)?;
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
            store: Store::Loaded(tensors),
        }
    }

    /// Random weights in crammedBERT's initialisation (normal, std 0.02; LayerNorm weights one,
    /// biases zero), drawn per tensor from `seed` and the tensor's name. Optional tensors are
    /// absent and scalars take their documented defaults.
    pub fn random(seed: u64) -> Weights {
        Weights {
            path: PathBuf::from("<random weights>"),
            store: Store::Random(seed),
        }
    }

    /// The file the tensors came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        match &self.store {
            Store::Loaded(t) => t.contains_key(name),
            Store::Mapped { names, .. } => names.contains_key(name),
            Store::Random(_) => false,
        }
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        match &self.store {
            Store::Loaded(t) => t.len(),
            Store::Mapped { names, .. } => names.len(),
            Store::Random(_) => 0,
        }
    }

    /// Whether the checkpoint holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names of the tensors, without wrapper prefixes.
    fn names(&self) -> Vec<&str> {
        match &self.store {
            Store::Loaded(t) => t.keys().map(String::as_str).collect(),
            Store::Mapped { names, .. } => names.keys().map(String::as_str).collect(),
            Store::Random(_) => Vec::new(),
        }
    }

    /// Tensor `name` as f32, checked to have `shape` and finite values.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Store::Random(seed) = self.store {
            return random_tensor(seed, name, shape);
        }
        self.get_opt(name, shape)?.ok_or_else(|| self.missing(name))
    }

    /// Like [`Weights::get`], but `None` when absent.
    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        match self.read(name, Some(shape))? {
            None => Ok(None),
            Some(t) => self.check(name, &t, shape).map(Some),
        }
    }

    /// A scalar stored as a 0-d or one-element tensor; random weights give `default`.
    pub fn scalar(&self, name: &str, default: f64) -> Result<f64> {
        if let Store::Random(_) = self.store {
            return Ok(default);
        }
        let t = self.read(name, None)?.ok_or_else(|| self.missing(name))?;
        if t.elem_count() != 1 {
            return Err(BertError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: vec![1],
                found: t.dims().to_vec(),
            });
        }
        let t = self.check(name, &t, t.dims())?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?[0] as f64)
    }

    /// The stored tensor `name`, `None` when absent. From a mapped file, a tensor whose header
    /// shape is not `shape` (or, for `None`, holds more than one value) is refused before its
    /// bytes are read.
    fn read(&self, name: &str, shape: Option<&[usize]>) -> Result<Option<Tensor>> {
        match &self.store {
            Store::Random(_) => Ok(None),
            Store::Loaded(t) => Ok(t.get(name).cloned()),
            Store::Mapped { file, names } => {
                let Some(stored) = names.get(name) else {
                    return Ok(None);
                };
                let view = file.get(stored)?;
                let found = view.shape();
                let fits = match shape {
                    Some(s) => found == s,
                    None => found.iter().product::<usize>() == 1,
                };
                if !fits {
                    return Err(BertError::Shape {
                        path: self.path.clone(),
                        name: name.to_string(),
                        expected: shape.map_or(vec![1], <[usize]>::to_vec),
                        found: found.to_vec(),
                    });
                }
                let t = view.load(&Device::Cpu).map_err(|e| BertError::Io {
                    path: self.path.clone(),
                    message: format!("cannot read tensor `{name}`: {e}"),
                })?;
                Ok(Some(t))
            }
        }
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
            .names()
            .into_iter()
            .filter(|k| k.starts_with(stem.rsplit_once('.').map_or(stem, |(s, _)| s)))
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

/// The pickle protocol-2 header `torch.save` wrote before PyTorch 1.6: the magic number
/// 0x1950a86a20f9469cfc6c as a pickled long.
const LEGACY_TORCH_MAGIC: [u8; 13] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50,
];

/// Refuses, with what to do instead, files that are not the zip `torch.save` writes since
/// PyTorch 1.6: the legacy pickle stream, and anything else that is no zip at all.
fn check_torch_zip(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = [0u8; 13];
    let n = std::fs::File::open(path)
        .and_then(|f| f.take(13).read(&mut head))
        .map_err(|e| BertError::Io {
            path: path.to_path_buf(),
            message: format!("cannot read the checkpoint: {e}"),
        })?;
    let message = if head[..n] == LEGACY_TORCH_MAGIC[..n] && n == 13 {
        "is in the legacy torch.save format (PyTorch before 1.6), which is not supported; \
         re-save it with PyTorch 1.6 or later (torch.save(torch.load(path), path)) or convert it \
         to model.safetensors"
    } else if !head[..n].starts_with(b"PK") {
        "is neither a PyTorch zip checkpoint (torch.save since PyTorch 1.6) nor a .safetensors \
         file"
    } else {
        return Ok(());
    };
    Err(BertError::Io {
        path: path.to_path_buf(),
        message: message.into(),
    })
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
