//! Checkpoint tensors by name, from `model.safetensors` or `pytorch_model.bin`, with shape and
//! finiteness checks that name the file and the tensor.
//!
//! A safetensors file is memory-mapped and only its header is read when it is opened; a tensor's
//! bytes are read when the model asks for it, after its shape has been checked, so a huge or
//! corrupt file is refused before anything is allocated for it.

use crate::error::{BertError, Result};
use candle_core::pickle::PthTensors;
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
    /// A memory-mapped safetensors file whose header has been validated; `names` maps each name
    /// without wrapper prefixes to the name in the file.
    Mapped {
        file: Arc<MmapedSafetensors>,
        names: HashMap<String, String>,
    },
    /// A torch zip whose pickle has been read into tensor descriptions (name, shape, dtype,
    /// where the bytes are); `names` as for `Mapped`; `entry_bytes` the size of each zip entry,
    /// read once from the zip's directory.
    Torch {
        file: Arc<PthTensors>,
        names: HashMap<String, String>,
        entry_bytes: HashMap<String, u64>,
    },
    /// `get` draws a tensor of the requested shape instead of looking it up.
    Random(u64),
    /// Another store with some of its tensors given new values (of the same shapes), e.g.
    /// tuned while a model is compressed; the names stay the base's.
    Replaced {
        base: Box<Weights>,
        tensors: HashMap<String, Tensor>,
    },
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let store = match &self.store {
            Store::Mapped { names, .. } => format!("{} tensors, memory-mapped", names.len()),
            Store::Torch { names, .. } => format!("{} tensors in a torch zip", names.len()),
            Store::Random(seed) => format!("random, seed {seed}"),
            Store::Replaced { base, tensors } => {
                format!("{} tensors, {} replaced", base.len(), tensors.len())
            }
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
        let (file, entry_bytes) = open_torch_zip(path)?;
        let names = file
            .tensor_infos()
            .keys()
            .map(|name| (strip_wrappers(name).to_string(), name.clone()))
            .collect();
        Ok(Weights {
            path: path.to_path_buf(),
            store: Store::Torch {
                file: Arc::new(file),
                names,
                entry_bytes,
            },
        })
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

    /// These weights with the tensors of `tensors` (by name) given new values: each must be
    /// a tensor of these weights, of the shape it has here.
    pub fn with_replaced(self, tensors: HashMap<String, Tensor>) -> Result<Weights> {
        for (name, t) in &tensors {
            let stored = self.stored_shape(name)?.ok_or_else(|| self.missing(name))?;
            if stored != t.dims() {
                return Err(BertError::Shape {
                    path: self.path.clone(),
                    name: name.clone(),
                    expected: stored,
                    found: t.dims().to_vec(),
                });
            }
        }
        let tensors = tensors
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(candle_core::DType::F32)?)))
            .collect::<Result<_>>()?;
        Ok(Weights {
            path: self.path.clone(),
            store: Store::Replaced {
                base: Box::new(self),
                tensors,
            },
        })
    }

    /// The file the tensors came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        match &self.store {
            Store::Mapped { names, .. } | Store::Torch { names, .. } => names.contains_key(name),
            Store::Random(_) => false,
            Store::Replaced { base, .. } => base.contains(name),
        }
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        match &self.store {
            Store::Mapped { names, .. } | Store::Torch { names, .. } => names.len(),
            Store::Random(_) => 0,
            Store::Replaced { base, .. } => base.len(),
        }
    }

    /// Whether the checkpoint holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names of the tensors, without wrapper prefixes.
    pub fn names(&self) -> Vec<&str> {
        match &self.store {
            Store::Mapped { names, .. } | Store::Torch { names, .. } => {
                names.keys().map(String::as_str).collect()
            }
            Store::Random(_) => Vec::new(),
            Store::Replaced { base, .. } => base.names(),
        }
    }

    /// Tensor `name` as f32, checked to have `shape` and finite values.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Store::Random(seed) = self.store {
            return random_tensor(seed, name, shape);
        }
        self.get_opt(name, shape)?.ok_or_else(|| self.missing(name))
    }

    /// Tensor `name` with the shape it is stored with, as f32 (checked like [`Weights::get`]).
    pub fn get_stored(&self, name: &str) -> Result<Tensor> {
        match self.stored_shape(name)? {
            Some(shape) => self.get(name, &shape),
            None => Err(self.missing(name)),
        }
    }

    /// The shape tensor `name` is stored with, from the file's header (no data is read);
    /// `None` when absent.
    fn stored_shape(&self, name: &str) -> Result<Option<Vec<usize>>> {
        Ok(match &self.store {
            Store::Mapped { file, names } => match names.get(name) {
                Some(stored) => Some(file.get(stored)?.shape().to_vec()),
                None => None,
            },
            Store::Torch { file, names, .. } => names
                .get(name)
                .and_then(|stored| file.tensor_infos().get(stored))
                .map(|info| info.layout.dims().to_vec()),
            Store::Random(_) => None,
            Store::Replaced { base, .. } => base.stored_shape(name)?,
        })
    }

    /// Tensor `name` exactly as stored, any dtype and unchecked: for copying it into another
    /// checkpoint (integer buffers such as `position_ids` included).
    pub fn get_as_stored(&self, name: &str) -> Result<Tensor> {
        self.read(name, None, false)?
            .ok_or_else(|| self.missing(name))
    }

    /// Like [`Weights::get`], but `None` when absent.
    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        match self.read(name, Some(shape), true)? {
            None => Ok(None),
            Some(t) => self.check(name, &t, shape).map(Some),
        }
    }

    /// A scalar stored as a 0-d or one-element tensor; random weights give `default`.
    pub fn scalar(&self, name: &str, default: f64) -> Result<f64> {
        if let Store::Random(_) = self.store {
            return Ok(default);
        }
        let t = self
            .read(name, None, true)?
            .ok_or_else(|| self.missing(name))?;
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
    fn read(&self, name: &str, shape: Option<&[usize]>, checked: bool) -> Result<Option<Tensor>> {
        match &self.store {
            Store::Random(_) => Ok(None),
            Store::Replaced { base, tensors } => match tensors.get(name) {
                Some(t) => Ok(Some(t.clone())),
                None => base.read(name, shape, checked),
            },
            Store::Mapped { file, names } => {
                let Some(stored) = names.get(name) else {
                    return Ok(None);
                };
                let view = file.get(stored)?;
                if checked {
                    self.check_stored_shape(name, view.shape(), shape)?;
                }
                use safetensors::Dtype;
                let float = matches!(
                    view.dtype(),
                    Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64
                );
                if checked {
                    self.check_float(name, float, &format!("{:?}", view.dtype()))?;
                }
                let t = view.load(&Device::Cpu).map_err(|e| BertError::Io {
                    path: self.path.clone(),
                    message: format!("cannot read tensor `{name}`: {e}"),
                })?;
                Ok(Some(t))
            }
            Store::Torch {
                file,
                names,
                entry_bytes,
            } => {
                let Some(stored) = names.get(name) else {
                    return Ok(None);
                };
                let Some(info) = file.tensor_infos().get(stored) else {
                    return Ok(None);
                };
                if checked {
                    self.check_stored_shape(name, info.layout.dims(), shape)?;
                }
                let float = info.dtype.is_float();
                if checked {
                    self.check_float(name, float, info.dtype.as_str())?;
                }
                self.check_torch_entry(name, info, entry_bytes.get(&info.path).copied())?;
                let t = file
                    .get(stored)
                    .map_err(|e| BertError::Io {
                        path: self.path.clone(),
                        message: format!("cannot read tensor `{name}`: {e}"),
                    })?
                    .ok_or_else(|| self.missing(name))?;
                Ok(Some(t))
            }
        }
    }

    /// Refuses a stored tensor whose header shape is not `shape` (or, for `None`, holds more
    /// than one value), before its bytes are read.
    fn check_stored_shape(
        &self,
        name: &str,
        found: &[usize],
        shape: Option<&[usize]>,
    ) -> Result<()> {
        let fits = match shape {
            Some(s) => found == s,
            None => found.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) == Some(1),
        };
        if fits {
            return Ok(());
        }
        Err(BertError::Shape {
            path: self.path.clone(),
            name: name.to_string(),
            expected: shape.map_or(vec![1], <[usize]>::to_vec),
            found: found.to_vec(),
        })
    }

    /// Refuses a stored tensor of integer or boolean values where weights are expected: cast
    /// to float they would load without complaint and compute nonsense.
    fn check_float(&self, name: &str, float: bool, dtype: &str) -> Result<()> {
        if float {
            return Ok(());
        }
        Err(BertError::Io {
            path: self.path.clone(),
            message: format!(
                "tensor `{name}` is stored as {dtype}; weights must be floating point (F16, \
                 BF16, F32 or F64)"
            ),
        })
    }

    /// Refuses a torch tensor whose storage entry in the zip (`stored` bytes, `None` when the
    /// entry is missing) is too short for it, or whose layout candle cannot read, before
    /// anything is allocated for it.
    fn check_torch_entry(
        &self,
        name: &str,
        info: &candle_core::pickle::TensorInfo,
        stored: Option<u64>,
    ) -> Result<()> {
        let bad = |message: String| BertError::Io {
            path: self.path.clone(),
            message: format!("tensor `{name}`: {message}"),
        };
        // Shapes were checked against the config, so these products are small.
        let elems: usize = info.layout.dims().iter().product();
        let needed = elems
            .checked_mul(info.dtype.size_in_bytes())
            .and_then(|n| n.checked_add(info.layout.start_offset()))
            .ok_or_else(|| bad("its offset overflows".into()))?;
        if !info.layout.is_contiguous() && !info.layout.is_fortran_contiguous() {
            return Err(bad("its storage is not contiguous".into()));
        }
        let stored =
            stored.ok_or_else(|| bad(format!("its storage `{}` is missing", info.path)))?;
        if stored < needed as u64 {
            return Err(bad(format!(
                "its storage `{}` holds {stored} bytes; the tensor needs {needed}",
                info.path
            )));
        }
        Ok(())
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

/// Most bytes a `data.pkl` may hold: a state dict's pickle describes tensors, not their values,
/// and is tens of kilobytes for the released models.
const MAX_PICKLE_BYTES: u64 = 16 << 20;

/// Reads the tensor descriptions of a torch zip through candle's pickle reader, after checking
/// each `data.pkl` with [`check_pickle`]: candle's reader allocates the length a string claims
/// before reading it, and indexes the arguments of a tensor without checking their count, so a
/// hostile file could make it allocate gigabytes or panic. A panic that still escapes it is
/// caught and reported as a malformed file.
/// Also returns the size of every zip entry, so tensors can be checked against their storage
/// without reopening the zip.
fn open_torch_zip(path: &Path) -> Result<(PthTensors, HashMap<String, u64>)> {
    use std::io::Read;
    check_torch_zip(path)?;
    let bad = |message: String| BertError::Io {
        path: path.to_path_buf(),
        message,
    };
    let file =
        std::fs::File::open(path).map_err(|e| bad(format!("cannot read the checkpoint: {e}")))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("cannot read the checkpoint: not a valid zip: {e}")))?;
    let pickles: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok())
        .filter(|n| n.ends_with("data.pkl"))
        .map(|n| n.into_owned())
        .collect();
    if pickles.is_empty() {
        return Err(bad(
            "cannot read the checkpoint: the zip holds no data.pkl; is it a torch.save file?"
                .into(),
        ));
    }
    let mut entry_bytes = HashMap::new();
    for i in 0..zip.len() {
        if let Ok(entry) = zip.by_index_raw(i) {
            entry_bytes.insert(entry.name().unwrap_or_default().to_string(), entry.size());
        }
    }
    for name in &pickles {
        let entry = zip
            .by_name(name)
            .map_err(|e| bad(format!("cannot read the checkpoint: {name}: {e}")))?;
        let mut bytes = Vec::new();
        entry
            .take(MAX_PICKLE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("cannot read the checkpoint: {name}: {e}")))?;
        if bytes.len() as u64 > MAX_PICKLE_BYTES {
            return Err(bad(format!(
                "cannot read the checkpoint: {name} is larger than {MAX_PICKLE_BYTES} bytes"
            )));
        }
        check_pickle(&bytes)
            .map_err(|e| bad(format!("cannot read the checkpoint: {name}: {e}")))?;
    }
    let read = || PthTensors::new(path, None);
    let outcome = {
        // The default hook would print the escaped panic as if the program had crashed.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let outcome = std::panic::catch_unwind(read);
        std::panic::set_hook(hook);
        outcome
    };
    match outcome {
        Ok(Ok(file)) => Ok((file, entry_bytes)),
        Ok(Err(e)) => Err(bad(format!("cannot read the checkpoint: {e}"))),
        Err(_) => Err(bad(
            "cannot read the checkpoint: its pickle is malformed (a tensor with too few \
             arguments, or values out of range)"
                .into(),
        )),
    }
}

/// Walks a pickle's opcodes (the protocol-2 subset candle reads) without running anything:
/// every argument must lie within the bytes, a string's claimed length included, and a long
/// must fit in 8 bytes. The first problem, with its byte offset, is the error.
fn check_pickle(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut i = 0;
    while i < bytes.len() {
        let (op, at) = (bytes[i], i);
        i += 1;
        let rest = bytes.len() - i;
        let arg = match op {
            0x80 | b'q' | b'K' | b'h' => 1,
            b'M' => 2,
            b'J' | b'r' | b'j' => 4,
            b'G' => 8,
            b'X' => {
                let len = bytes
                    .get(i..i + 4)
                    .ok_or_else(|| format!("truncated string length at byte {at}"))?;
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                if len > rest - 4 {
                    return Err(format!(
                        "a string at byte {at} claims {len} bytes; {} remain",
                        rest - 4
                    ));
                }
                4 + len
            }
            0x8a => {
                let n = *bytes
                    .get(i)
                    .ok_or_else(|| format!("truncated long at byte {at}"))?
                    as usize;
                if n > 8 {
                    return Err(format!("a long at byte {at} has {n} bytes; at most 8 fit"));
                }
                1 + n
            }
            b'c' => {
                // Module and name, each ending in a newline.
                let lines = bytes[i..]
                    .iter()
                    .enumerate()
                    .filter(|(_, &b)| b == b'\n')
                    .nth(1)
                    .ok_or_else(|| format!("unterminated global at byte {at}"))?;
                lines.0 + 1
            }
            b'.' => return Ok(()),
            b')'
            | b'R'
            | b'('
            | b't'
            | b'Q'
            | 0x85..=0x89
            | b'N'
            | b's'
            | b'u'
            | b'}'
            | b'd'
            | b'b'
            | 0x81
            | b']'
            | b'a'
            | b'e' => 0,
            other => {
                return Err(format!(
                    "opcode 0x{other:02x} at byte {at} is not one a PyTorch state dict uses"
                ))
            }
        };
        if arg > rest {
            return Err(format!("truncated opcode 0x{op:02x} at byte {at}"));
        }
        i += arg;
    }
    Err("the pickle has no STOP opcode".into())
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
    // crammedBERT's `norm1`, BERT's `LayerNorm`.
    let is_norm = name.to_ascii_lowercase().contains("norm") && name.ends_with(".weight");
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

/// Refuses a checkpoint that holds blocks past the config's layer count (`layers`, from config
/// key `key`): names `{prefix}{i}.…` with `i >= layers`. The blocks it lacks are refused as
/// missing tensors when the model loads them.
pub(crate) fn check_layer_count(w: &Weights, prefix: &str, layers: usize, key: &str) -> Result<()> {
    let extra = w
        .names()
        .into_iter()
        .filter_map(|name| {
            let index = name.strip_prefix(prefix)?.split('.').next()?;
            Some((index.parse::<usize>().ok()?, name))
        })
        .filter(|&(i, _)| i >= layers)
        .max_by_key(|&(i, _)| i);
    match extra {
        None => Ok(()),
        Some((i, name)) => Err(BertError::Io {
            path: w.path().to_path_buf(),
            message: format!(
                "holds layer {i} (`{name}`), but the config's `{key}` is {layers}: the config \
                 and the weights disagree on the number of layers"
            ),
        }),
    }
}
