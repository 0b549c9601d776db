//! A strict reader of one JSON object of a config file: every key read is remembered, so the
//! keys nobody read can be reported by name instead of being ignored.

use crate::error::{BertError, Result};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One JSON object of the config, with the keys read so far, so that leftovers are reported.
pub(crate) struct Section<'a> {
    path: PathBuf,
    prefix: String,
    map: &'a Map<String, Value>,
    seen: BTreeSet<String>,
}

impl<'a> Section<'a> {
    pub(crate) fn new(path: &Path, prefix: &str, value: &'a Value) -> Result<Self> {
        let map = value.as_object().ok_or_else(|| BertError::Config {
            path: path.to_path_buf(),
            key: match prefix {
                "" => "(top level)".to_string(),
                p => p.to_string(),
            },
            message: format!("must be an object, found {value}"),
        })?;
        Ok(Section {
            path: path.to_path_buf(),
            prefix: prefix.to_string(),
            map,
            seen: BTreeSet::new(),
        })
    }

    /// `key` with the section's dotted prefix (none at the top level of a file).
    pub(crate) fn key(&self, key: &str) -> String {
        match self.prefix.as_str() {
            "" => key.to_string(),
            prefix => format!("{prefix}.{key}"),
        }
    }

    pub(crate) fn error(&self, key: &str, message: String) -> BertError {
        BertError::Config {
            path: self.path.clone(),
            key: self.key(key),
            message,
        }
    }

    pub(crate) fn unsupported(&self, key: &str, found: &str, expected: &str) -> BertError {
        self.error(
            key,
            format!("= {found} is not supported (expected {expected})"),
        )
    }

    pub(crate) fn missing(&self, key: &str) -> BertError {
        self.error(key, "is missing".into())
    }

    pub(crate) fn skip(&mut self, keys: &[&str]) {
        self.seen.extend(keys.iter().map(|k| k.to_string()));
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    /// The value of `key`; JSON null counts as absent (OmegaConf writes unset keys as null).
    pub(crate) fn get(&mut self, key: &str) -> Option<&'a Value> {
        self.seen.insert(key.to_string());
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn section(&mut self, key: &str) -> Result<Section<'a>> {
        let path = self.path.clone();
        let prefix = self.key(key);
        match self.get(key) {
            Some(v) => Section::new(&path, &prefix, v),
            None => Err(self.missing(key)),
        }
    }

    pub(crate) fn opt_usize(&mut self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.error(key, format!("= {v} must be a non-negative integer"))),
        }
    }

    pub(crate) fn usize(&mut self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    pub(crate) fn opt_f64(&mut self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.error(key, format!("= {v} must be a number"))),
        }
    }

    pub(crate) fn opt_bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.error(key, format!("= {v} must be true or false"))),
        }
    }

    pub(crate) fn opt_str(&mut self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.error(key, format!("= {v} must be a string"))),
        }
    }

    pub(crate) fn expect_str(
        &mut self,
        key: &str,
        allowed: &[&str],
        default: Option<&str>,
    ) -> Result<()> {
        let value = self.opt_str(key)?.or(default.map(str::to_string));
        match value {
            Some(v) if allowed.contains(&v.as_str()) => Ok(()),
            Some(v) => Err(self.unsupported(key, &format!("{v:?}"), &format!("{allowed:?}"))),
            None => Err(self.missing(key)),
        }
    }

    /// `key` must be absent, null or false.
    pub(crate) fn expect_false(&mut self, key: &str) -> Result<()> {
        match self.get(key) {
            None | Some(Value::Bool(false)) => Ok(()),
            Some(v) => Err(self.unsupported(key, &v.to_string(), "false")),
        }
    }

    /// Errors on the first key nobody read.
    pub(crate) fn finish(self) -> Result<()> {
        match self.map.keys().find(|k| !self.seen.contains(*k)) {
            None => Ok(()),
            Some(k) => Err(self.error(
                k,
                format!(
                    "is an unknown setting (known here: {})",
                    self.seen.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }
}

/// Label names by index from `id2label`: every key a label index, together naming each of
/// `0..n` exactly once; `n` must equal `num_labels` where the config has that too. Without
/// `id2label`, `num_labels` labels named `LABEL_{i}`, as transformers names them.
pub(crate) fn parse_labels(
    path: &Path,
    id2label: Option<&Value>,
    num_labels: Option<usize>,
) -> Result<Vec<String>> {
    let err = |message: String| BertError::Config {
        path: path.to_path_buf(),
        key: "id2label".into(),
        message,
    };
    let Some(map) = id2label.filter(|v| !v.is_null()) else {
        return Ok((0..num_labels.unwrap_or(0))
            .map(|i| format!("LABEL_{i}"))
            .collect());
    };
    let map = map
        .as_object()
        .ok_or_else(|| err(format!("= {map} must be an object of label index to name")))?;
    let mut labels: Vec<Option<String>> = vec![None; map.len()];
    for (key, name) in map {
        let index: usize = key.parse().map_err(|_| {
            err(format!(
                "has the key {key:?}, which is not a label index (expected 0..{})",
                map.len()
            ))
        })?;
        let name = name
            .as_str()
            .ok_or_else(|| err(format!("[{key:?}] = {name} must be a string")))?;
        match labels.get_mut(index) {
            Some(slot @ None) => *slot = Some(name.to_string()),
            Some(Some(_)) => return Err(err(format!("names label {index} twice"))),
            None => {
                return Err(err(format!(
                    "has label index {index}, but with {} labels the indices must be 0..{}",
                    map.len(),
                    map.len()
                )))
            }
        }
    }
    if let Some(n) = num_labels.filter(|&n| n != map.len()) {
        return Err(err(format!(
            "names {} labels, but num_labels is {n}: it must name every label",
            map.len()
        )));
    }
    // Every slot is filled: `map.len()` distinct indices below `map.len()`.
    Ok(labels.into_iter().flatten().collect())
}
