//! Training checkpoints: a folder with `model.safetensors` (PyTorch-style names),
//! `optimizer.safetensors` (optimizer buffers), `metrics.json` (the epochs' figures) and
//! `state.json` (model description, settings, epoch, metrics, and the size and SHA-256 of the
//! other files). The set is written into a fresh folder beside the target and put in its place
//! in one step ([`fff_util::fs::replace_dir`]), so a crash leaves the previous set or the new
//! one, never a mixture; loading checks each file against `state.json`.

use crate::model::Model;
use crate::optim::Optimizer;
use crate::state::{FileDigest, TrainState};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use fff_util::fs::{replace_dir, temporary_path, write_atomic};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// The files a checkpoint set consists of; anything else in the folder is carried over.
const SET: [&str; 4] = [
    "model.safetensors",
    "optimizer.safetensors",
    "metrics.json",
    "state.json",
];

/// Size and SHA-256 of a file, read in pieces: the optimizer's file is twice the model, and
/// reading it whole beside the state it was written from would double a save's memory.
pub fn digest(path: &Path) -> Result<FileDigest> {
    let cannot = || format!("cannot read {}", path.display());
    let mut file = std::fs::File::open(path).with_context(cannot)?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher).with_context(cannot)?;
    Ok(FileDigest {
        bytes,
        sha256: hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    })
}

/// Whether `dir` may receive a checkpoint: it does not exist, is empty, or holds one.
pub fn check_target(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("{}: cannot use as a checkpoint folder: {e}", dir.display()),
        Ok(mut entries) => {
            if entries.next().is_none() || dir.join("state.json").is_file() {
                Ok(())
            } else {
                bail!(
                    "{}: not empty and holds no checkpoint (no state.json); choose a new or \
                     empty folder",
                    dir.display()
                )
            }
        }
    }
}

/// Saves model, optimizer, metrics and state as one set into `dir`, replacing the set there.
pub fn save(dir: &Path, model: &Model, opt: &Optimizer, state: &TrainState) -> Result<()> {
    check_target(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = temporary_path(dir);
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let written = write_set(&tmp, dir, model, opt, state)
        .and_then(|()| replace_dir(&tmp, dir).map_err(Into::into));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

/// Writes the set into the fresh folder `tmp`, with the other files of `old` copied over.
fn write_set(
    tmp: &Path,
    old: &Path,
    model: &Model,
    opt: &Optimizer,
    state: &TrainState,
) -> Result<()> {
    fastfeedforward::checkpoint::save(
        &tmp.join("model.safetensors"),
        &model.named_tensors()?,
        HashMap::new(),
    )?;
    let (first, second, _) = opt.state();
    let mut tensors = Vec::new();
    // SGD has first moments (momentum) only.
    for (kind, moments) in [("first", first), ("second", second)] {
        for (k, m) in moments.iter().enumerate() {
            tensors.push((
                format!("{kind}.{k}"),
                Tensor::from_slice(m, m.len(), &Device::Cpu)?,
            ));
        }
    }
    fastfeedforward::checkpoint::save(
        &tmp.join("optimizer.safetensors"),
        &tensors,
        HashMap::new(),
    )?;
    write_atomic(
        &tmp.join("metrics.json"),
        serde_json::to_string_pretty(&state.history)?.as_bytes(),
    )?;
    let mut state = state.clone();
    state.files = SET[..3]
        .iter()
        .map(|name| Ok((name.to_string(), digest(&tmp.join(name))?)))
        .collect::<Result<_>>()?;
    write_atomic(
        &tmp.join("state.json"),
        serde_json::to_string_pretty(&state)?.as_bytes(),
    )?;
    // Other files (routing.json, charts) stay with the run.
    if let Ok(entries) = std::fs::read_dir(old) {
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let keep = name
                .to_str()
                .is_none_or(|n| !SET.contains(&n) && !n.starts_with('.'));
            if keep {
                ensure!(
                    entry.file_type()?.is_file(),
                    "{}: checkpoint folders hold files only; move it elsewhere first",
                    entry.path().display()
                );
                std::fs::copy(entry.path(), tmp.join(&name))
                    .with_context(|| format!("copying {}", entry.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Reads and checks `state.json` of a checkpoint folder.
pub fn load_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read; is {} a checkpoint folder written by `fff train --out`?",
            path.display(),
            dir.display()
        )
    })?;
    parse_state(&text, &path)
}

/// Parses and checks the text of a `state.json`; `path` names it in errors.
pub fn parse_state(text: &str, path: &Path) -> Result<TrainState> {
    let state: TrainState = serde_json::from_str(text)
        .with_context(|| format!("{}: not a valid training state", path.display()))?;
    state
        .validate()
        .with_context(|| format!("{}: not a valid training state", path.display()))?;
    Ok(state)
}

/// Checks that `dataset` (a training set's name, e.g. `mnist/train`) is the one the checkpoint
/// in `dir` was trained on: figures on another dataset would look plausible and mean nothing.
pub fn check_dataset(dir: &Path, state: &TrainState, dataset: &str) -> Result<()> {
    ensure!(
        dataset == state.dataset,
        "{} was trained on {}, not {dataset}; pass --dataset accordingly",
        dir.display(),
        state.dataset
    );
    Ok(())
}

/// Checks `dir/name` against the size and hash `state.json` recorded for it.
fn verify(dir: &Path, name: &str, state: &TrainState) -> Result<()> {
    let Some(want) = state.files.get(name) else {
        return Ok(());
    };
    let path = dir.join(name);
    let got = digest(&path)?;
    ensure!(
        &got == want,
        "{}: does not belong to {}'s checkpoint (recorded {} bytes, SHA-256 {}; found {} bytes, \
         SHA-256 {}); the folder mixes files of different saves",
        path.display(),
        dir.join("state.json").display(),
        want.bytes,
        want.sha256,
        got.bytes,
        got.sha256
    );
    Ok(())
}

/// Rebuilds the model of a checkpoint folder.
pub fn load_model(dir: &Path, state: &TrainState) -> Result<Model> {
    let mut model = Model::new(&state.model, state.model_seed)?;
    verify(dir, "model.safetensors", state)?;
    let path = dir.join("model.safetensors");
    let (tensors, _) = fastfeedforward::checkpoint::load(&path)?;
    model.load_tensors(&tensors, &path)?;
    Ok(model)
}

/// Restores the optimizer's moments from a checkpoint folder, checking that they fit the model,
/// are finite, and (second moments) not negative.
pub fn load_optimizer(
    dir: &Path,
    state: &TrainState,
    opt: &mut Optimizer,
    n_vars: usize,
) -> Result<()> {
    verify(dir, "optimizer.safetensors", state)?;
    let path = dir.join("optimizer.safetensors");
    let (tensors, _) = fastfeedforward::checkpoint::load(&path)?;
    let get = |name: String, nonnegative: bool| -> Result<Vec<f32>> {
        let t = tensors
            .get(&name)
            .with_context(|| format!("{}: tensor `{name}` is missing", path.display()))?;
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        if let Some(i) = v
            .iter()
            .position(|x| !x.is_finite() || (nonnegative && *x < 0.0))
        {
            bail!(
                "{}: tensor `{name}` element {i} is {}; expected a finite number{}",
                path.display(),
                v[i],
                if nonnegative { " >= 0" } else { "" }
            );
        }
        Ok(v)
    };
    let first = (0..n_vars)
        .map(|k| get(format!("first.{k}"), false))
        .collect::<Result<Vec<_>>>()?;
    // Only AdamW keeps second moments; a fresh optimizer shows which kind this is.
    let has_second = !opt.state().1.is_empty();
    let second = if has_second {
        (0..n_vars)
            .map(|k| get(format!("second.{k}"), true))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let expected = if has_second { 2 * n_vars } else { n_vars };
    ensure!(
        tensors.len() == expected,
        "{}: holds {} tensors, expected {expected}",
        path.display(),
        tensors.len(),
    );
    opt.set_state(first, second, state.optimizer_step)
        .with_context(|| format!("{}", path.display()))
}
