//! Safetensors files: atomic writes, metadata, and errors that name the file.

use crate::config::{Activation, FffConfig};
use crate::error::{FffError, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Metadata key prefix for FFF layer configuration.
const KEY: &str = "fff.";

/// Writes `tensors` to `path` through a temporary file renamed into place, so a crash never
/// leaves a half-written checkpoint.
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let entries: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut metadata = metadata;
    metadata.insert("format".into(), "pt".into());
    fff_util::fs::write_with(path, |tmp| {
        safetensors::serialize_to_file(entries, Some(metadata), tmp)
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .map_err(|e| FffError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("cannot write: {e}"),
    })
}

/// Reads every tensor of a safetensors file and its metadata. The file is memory-mapped and its
/// header validated against the file's size before any tensor is copied out, so a corrupt or
/// huge file is refused without reading it whole.
pub fn load(path: &Path) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let err = |message: String| FffError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
    // SAFETY: a read-only mapping, dropped before this returns; as with every safetensors
    // loader, the file must not be truncated or rewritten while it is being read.
    let bytes =
        unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(format!("cannot read: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if let Some(f) = metadata.get(crate::quantized::FORMAT_KEY) {
        if f != "f32" && f != "bf16" {
            return Err(err(format!(
                "holds {f} weights (metadata `{}`), which only an inference layer can use: load \
                 it with `QuantizedFff::load`",
                crate::quantized::FORMAT_KEY
            )));
        }
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
    Ok((tensors, metadata))
}

/// The layer configuration as metadata entries.
pub fn config_metadata(c: &FffConfig) -> HashMap<String, String> {
    [
        ("input_width", c.input_width.to_string()),
        ("output_width", c.output_width.to_string()),
        ("depth", c.depth.to_string()),
        ("trees", c.trees.to_string()),
        ("activation", c.activation.name().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{KEY}{k}"), v))
    .collect()
}

/// The layer configuration read back from metadata entries.
pub fn config_from_metadata(path: &Path, m: &HashMap<String, String>) -> Result<FffConfig> {
    let err = |message: String| FffError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let field = |k: &str| -> Result<&String> {
        m.get(&format!("{KEY}{k}")).ok_or_else(|| {
            err(format!(
                "metadata has no `{KEY}{k}`; pass the layer's configuration explicitly \
                 (files saved by PyTorch carry none)"
            ))
        })
    };
    let number = |k: &str| -> Result<usize> {
        let v = field(k)?;
        v.parse()
            .map_err(|_| err(format!("metadata `{KEY}{k}` is `{v}`, expected an integer")))
    };
    let (input_width, output_width) = (number("input_width")?, number("output_width")?);
    let (depth, trees) = (number("depth")?, number("trees")?);
    let activation: Activation = field("activation")?
        .parse()
        .map_err(|e: FffError| err(format!("metadata: {e}")))?;
    let c = FffConfig {
        input_width,
        output_width,
        depth,
        trees,
        activation,
    };
    c.validate().map_err(|e| err(format!("metadata: {e}")))?;
    Ok(c)
}

/// Comma-separated tensor names, sorted, for error messages.
pub fn list_names(tensors: &HashMap<String, Tensor>) -> String {
    let mut names: Vec<&str> = tensors.keys().map(String::as_str).collect();
    names.sort_unstable();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Tensor `{prefix}{name}` of `tensors` as f32 values, checked to have `shape` and finite
/// values; errors name `source`, the tensor and what was expected.
pub fn checked_values(
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    name: &str,
    shape: &[usize],
    source: &Path,
) -> Result<Vec<f32>> {
    let full = format!("{prefix}{name}");
    let t = tensors.get(&full).ok_or_else(|| FffError::MissingTensor {
        path: source.to_path_buf(),
        name: full.clone(),
        found: list_names(tensors),
    })?;
    if t.dims() != shape {
        return Err(FffError::shape(
            format!("{}: {full}", source.display()),
            shape,
            t.dims(),
        ));
    }
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(FffError::NonFinite {
            name: format!("{}: {full}", source.display()),
            index,
        });
    }
    Ok(values)
}
