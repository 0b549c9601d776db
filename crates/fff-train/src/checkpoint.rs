//! Training checkpoints: a folder with `model.safetensors` (PyTorch-style names),
//! `optimizer.safetensors` (optimizer buffers) and `state.json` (model description, settings,
//! epoch, metrics). Each file is written to a temporary name and renamed; `state.json` is
//! written last, so a folder whose `state.json` exists is complete.

use crate::model::Model;
use crate::optim::Optimizer;
use crate::state::TrainState;
use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use fff_util::fs::write_atomic;
use std::collections::HashMap;
use std::path::Path;

/// Saves model, optimizer and state into `dir`.
pub fn save(dir: &Path, model: &Model, opt: &Optimizer, state: &TrainState) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fastfeedforward::checkpoint::save(
        &dir.join("model.safetensors"),
        &model.named_tensors()?,
        HashMap::new(),
    )?;
    let (first, second, _) = opt.state();
    let mut tensors = Vec::new();
    for (k, (m, v)) in first.iter().zip(second).enumerate() {
        tensors.push((
            format!("first.{k}"),
            Tensor::from_slice(m, m.len(), &Device::Cpu)?,
        ));
        tensors.push((
            format!("second.{k}"),
            Tensor::from_slice(v, v.len(), &Device::Cpu)?,
        ));
    }
    fastfeedforward::checkpoint::save(
        &dir.join("optimizer.safetensors"),
        &tensors,
        HashMap::new(),
    )?;
    Ok(write_atomic(
        &dir.join("state.json"),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )?)
}

/// Reads `state.json` of a checkpoint folder.
pub fn load_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read; is {} a checkpoint folder written by `fff train --out`?",
            path.display(),
            dir.display()
        )
    })?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid training state", path.display()))
}

/// Rebuilds the model of a checkpoint folder.
pub fn load_model(dir: &Path, state: &TrainState) -> Result<Model> {
    let mut model = Model::new(&state.model, state.model_seed)?;
    let path = dir.join("model.safetensors");
    let (tensors, _) = fastfeedforward::checkpoint::load(&path)?;
    model.load_tensors(&tensors, &path)?;
    Ok(model)
}

/// Restores the optimizer's moments from a checkpoint folder.
pub fn load_optimizer(
    dir: &Path,
    state: &TrainState,
    opt: &mut Optimizer,
    n_vars: usize,
) -> Result<()> {
    let path = dir.join("optimizer.safetensors");
    let (tensors, _) = fastfeedforward::checkpoint::load(&path)?;
    let get = |name: String| -> Result<Vec<f32>> {
        let t = tensors
            .get(&name)
            .with_context(|| format!("{}: tensor `{name}` is missing", path.display()))?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    };
    let first = (0..n_vars)
        .map(|k| get(format!("first.{k}")))
        .collect::<Result<Vec<_>>>()?;
    let second = (0..n_vars)
        .map(|k| get(format!("second.{k}")))
        .collect::<Result<Vec<_>>>()?;
    ensure!(
        tensors.len() == 2 * n_vars,
        "{}: holds {} tensors, expected {}",
        path.display(),
        tensors.len(),
        2 * n_vars
    );
    opt.set_state(first, second, state.optimizer_step)
        .with_context(|| format!("{}", path.display()))
}
