//! Resolving `--model`: a local folder, or a Hugging Face model id fetched with `hf-hub` into
//! the usual cache (`~/.cache/huggingface/hub`, or `$HF_HOME`). With `FFF_OFFLINE` (or the
//! Hub's own `HF_HUB_OFFLINE`) set, a model id is taken from the cache or refused, never fetched.

use crate::error::{BertError, Result};
use std::path::{Path, PathBuf};

/// Files a model folder needs besides the weights.
const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
/// Weight files, in order of preference.
const WEIGHTS: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// The local folder holding `model`: `model` itself when it is a folder, else the Hub snapshot
/// folder of model id `model` (taken from the cache when present, downloaded otherwise).
pub fn resolve_model(model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        return Err(BertError::Io {
            path: path.to_path_buf(),
            message: "--model must be a folder (config.json, tokenizer.json, model.safetensors) \
                      or a Hugging Face model id"
                .into(),
        });
    }
    if !looks_like_model_id(model) {
        return Err(BertError::Io {
            path: path.to_path_buf(),
            message: "no such folder, and not a Hugging Face model id (owner/name)".into(),
        });
    }
    let offline = fff_util::offline(std::env::var_os("FFF_OFFLINE").as_deref())
        || fff_util::offline(std::env::var_os("HF_HUB_OFFLINE").as_deref());
    fetch(model, offline)
}

fn looks_like_model_id(s: &str) -> bool {
    let mut parts = s.split('/');
    // The Hub's rule: letters, digits, `-`, `_` and `.`, neither starting nor ending with `.`
    // and without `..`; so `./dir` or `../x` is a path, never an id.
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && !p.ends_with('.')
                && !p.contains("..")
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn fetch(model: &str, offline: bool) -> Result<PathBuf> {
    let hub_err = |message: String| BertError::Hub {
        model: model.to_string(),
        message,
    };
    let offline_help = format!(
        "if this machine is offline, download {} and {} (or {}) from \
         https://huggingface.co/{model} into a folder and pass --model FOLDER",
        REQUIRED.join(", "),
        WEIGHTS[0],
        WEIGHTS[1]
    );
    // The cache first: a model fetched once works offline.
    let cache = hf_hub::Cache::from_env().model(model.to_string());
    let cached: Option<Vec<PathBuf>> = REQUIRED
        .iter()
        .map(|f| cache.get(f))
        .collect::<Option<Vec<_>>>()
        .and_then(|mut files| {
            let w = WEIGHTS.iter().find_map(|f| cache.get(f))?;
            files.push(w);
            Some(files)
        });
    if let Some(files) = cached {
        return parent(&files[0]).ok_or_else(|| hub_err("cache entry has no folder".into()));
    }
    if offline {
        return Err(hub_err(format!(
            "not in the local Hugging Face cache ({}), and the network is not tried because \
             FFF_OFFLINE or HF_HUB_OFFLINE is set; download {}, {} and {} (or {}) from \
             https://huggingface.co/{model} into a folder and pass --model FOLDER",
            hf_hub::Cache::from_env().path().display(),
            REQUIRED[0],
            REQUIRED[1],
            WEIGHTS[0],
            WEIGHTS[1]
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| hub_err(format!("{e}; {offline_help}")))?;
    let repo = api.model(model.to_string());
    let mut first = None;
    for f in REQUIRED {
        let p = repo
            .get(f)
            .map_err(|e| hub_err(format!("{f}: {e}; {offline_help}")))?;
        first.get_or_insert(p);
    }
    let mut last_err = String::new();
    let mut got_weights = false;
    for f in WEIGHTS {
        match repo.get(f) {
            Ok(_) => {
                got_weights = true;
                break;
            }
            Err(e) => last_err = format!("{f}: {e}"),
        }
    }
    if !got_weights {
        return Err(hub_err(format!("no weights ({last_err}); {offline_help}")));
    }
    first
        .as_deref()
        .and_then(parent)
        .ok_or_else(|| hub_err("download has no folder".into()))
}

fn parent(p: &Path) -> Option<PathBuf> {
    p.parent().map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_recognised() {
        assert!(looks_like_model_id("pbelcak/UltraFastBERT-1x11-long"));
        assert!(!looks_like_model_id("just-a-name"));
        assert!(!looks_like_model_id("a/b/c"));
        assert!(!looks_like_model_id("./dir/x y"));
        assert!(!looks_like_model_id("./nonexistent"));
        assert!(!looks_like_model_id("../models"));
        assert!(!looks_like_model_id("owner/name."));
        assert!(!looks_like_model_id("/abs/path"));
        assert!(looks_like_model_id("owner/name.v2"));
    }

    #[test]
    fn offline_a_model_id_missing_from_the_cache_is_refused_without_the_network() {
        let err = fetch("no-such-owner/no-such-model-fff-test", true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no-such-owner/no-such-model-fff-test")
                && err.contains("FFF_OFFLINE")
                && err.contains("not in the local Hugging Face cache"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_folder_that_is_no_model_id_is_an_error_naming_it() {
        let err = resolve_model("/no/such/folder/anywhere")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/folder/anywhere"), "{err}");
        assert!(err.contains("no such folder"), "{err}");
    }
}
