//! A sentence-transformers model folder's own settings: which modules follow the encoder
//! (`modules.json`: `Pooling`, `Normalize`), how they pool (`1_Pooling/config.json`), and how
//! long an input may be (`sentence_bert_config.json`'s `max_seq_length`). Read the way
//! sentence-transformers reads them, so that an embedding here is the one it gives; module
//! types and settings this crate does not run are refused by name.

use crate::error::{BertError, Result};
use crate::pooling::{Pooling, PoolingConfig};
use crate::section::Section;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The names sentence-transformers tries, in order, for the `Transformer` module's settings.
const TRANSFORMER_CONFIGS: [&str; 7] = [
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
];

/// How a model folder turns token states into sentence embeddings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddingSpec {
    /// Pooling and normalisation.
    pub pooling: PoolingConfig,
    /// Longest input in tokens, specials included, when the folder sets one.
    pub max_seq_length: Option<usize>,
    /// Whether texts are lower-cased before tokenizing (the `Transformer` module's
    /// `do_lower_case`).
    pub do_lower_case: bool,
    /// `modules.json`, when the folder has one.
    pub source: Option<PathBuf>,
}

impl Default for EmbeddingSpec {
    /// A folder without `modules.json`: mean pooling, no normalisation, the model's own length.
    fn default() -> Self {
        EmbeddingSpec {
            pooling: PoolingConfig::default(),
            max_seq_length: None,
            do_lower_case: false,
            source: None,
        }
    }
}

impl EmbeddingSpec {
    /// Reads the sentence-transformers files of `dir`; a folder without `modules.json` gets
    /// [`EmbeddingSpec::default`], as sentence-transformers builds for a plain transformers
    /// model. `hidden` is the encoder's width, which the pooling config must name.
    pub fn from_dir(dir: &Path, hidden: usize) -> Result<EmbeddingSpec> {
        let modules_path = dir.join("modules.json");
        if !modules_path.is_file() {
            return Ok(EmbeddingSpec::default());
        }
        let modules = read_json(&modules_path)?;
        let list = modules.as_array().ok_or_else(|| BertError::Config {
            path: modules_path.clone(),
            key: "(top level)".into(),
            message: "must be a list of modules".into(),
        })?;
        let mut spec = EmbeddingSpec {
            source: Some(modules_path.clone()),
            ..EmbeddingSpec::default()
        };
        let mut seen_pooling = false;
        for (i, module) in list.iter().enumerate() {
            let mut m = Section::new(&modules_path, &format!("[{i}]"), module)?;
            m.skip(&["idx", "name", "kwargs"]);
            let kind = m.opt_str("type")?.ok_or_else(|| m.missing("type"))?;
            let sub = m.opt_str("path")?.unwrap_or_default();
            m.finish()?;
            let folder = dir.join(&sub);
            // sentence-transformers' own classes; the short names are what newer versions
            // also accept.
            let short = kind.rsplit('.').next().unwrap_or(&kind);
            let expected_at = |what: &str| BertError::Config {
                path: modules_path.clone(),
                key: format!("[{i}].type"),
                message: format!(
                    "= {kind:?} is out of place: expected {what} (a Transformer, then \
                         Pooling, then optionally Normalize)"
                ),
            };
            match (i, short) {
                (0, "Transformer") => {
                    let (max, lower) = read_transformer_config(&folder)?;
                    spec.max_seq_length = max;
                    spec.do_lower_case = lower;
                }
                (0, _) => return Err(expected_at("the Transformer module first")),
                (1, "Pooling") => {
                    spec.pooling.modes = read_pooling_config(&folder.join("config.json"), hidden)?;
                    seen_pooling = true;
                }
                (2, "Normalize") if seen_pooling => spec.pooling.normalize = true,
                (_, "Transformer" | "Pooling" | "Normalize") => {
                    return Err(expected_at("no second one of these here"))
                }
                _ => {
                    return Err(BertError::Config {
                        path: modules_path.clone(),
                        key: format!("[{i}].type"),
                        message: format!(
                            "= {kind:?} is a sentence-transformers module this crate does not \
                             run (it runs Transformer, Pooling and Normalize)"
                        ),
                    })
                }
            }
        }
        if !seen_pooling {
            return Err(BertError::Config {
                path: modules_path,
                key: "(top level)".into(),
                message: "has no Pooling module after the Transformer: the embedding is \
                          undefined"
                    .into(),
            });
        }
        check_prompts(&dir.join("config_sentence_transformers.json"))?;
        Ok(spec)
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| BertError::Io {
        path: path.to_path_buf(),
        message: format!("cannot read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| BertError::Io {
        path: path.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })
}

/// `max_seq_length` and `do_lower_case` from the first of [`TRANSFORMER_CONFIGS`] present in
/// `folder` (neither set when there is none).
fn read_transformer_config(folder: &Path) -> Result<(Option<usize>, bool)> {
    let Some(path) = TRANSFORMER_CONFIGS
        .iter()
        .map(|name| folder.join(name))
        .find(|p| p.is_file())
    else {
        return Ok((None, false));
    };
    let json = read_json(&path)?;
    let mut c = Section::new(&path, "", &json)?;
    // Arguments for loading the model and the tokenizer (trust_remote_code, revision,
    // cache_dir, ...): they change where files come from, not what is computed from them.
    c.skip(&[
        "model_args",
        "tokenizer_args",
        "config_args",
        "cache_dir",
        "tokenizer_name_or_path",
        "backend",
    ]);
    // sentence-transformers 6 names what the module computes; only token embeddings from the
    // encoder's last hidden state are run here.
    for (key, want) in [
        ("transformer_task", "feature-extraction"),
        ("module_output_name", "token_embeddings"),
    ] {
        if let Some(v) = c.opt_str(key)?.filter(|v| v != want) {
            return Err(c.unsupported(key, &v, want));
        }
    }
    if let Some(m) = c.get("modality_config") {
        let output = m
            .pointer("/text/method_output_name")
            .and_then(Value::as_str);
        let modalities = m.as_object().map_or(0, |o| o.len());
        if output != Some("last_hidden_state") || modalities != 1 {
            return Err(c.unsupported(
                "modality_config",
                &m.to_string(),
                "text only, from the encoder's last_hidden_state",
            ));
        }
    }
    let max = c.opt_usize("max_seq_length")?;
    if max == Some(0) {
        return Err(c.error("max_seq_length", "= 0 must be at least 1".into()));
    }
    let lower = c.opt_bool("do_lower_case")?.unwrap_or(false);
    c.finish()?;
    Ok((max, lower))
}

/// The pooling modes of a `Pooling` module's `config.json`, as sentence-transformers'
/// `Pooling(**config)` sets them: `pooling_mode` (a name) overrides the flags; otherwise
/// every flag that is true, `pooling_mode_mean_tokens` defaulting to true.
fn read_pooling_config(path: &Path, hidden: usize) -> Result<Vec<Pooling>> {
    if !path.is_file() {
        return Err(BertError::Io {
            path: path.to_path_buf(),
            message: "missing: modules.json names a Pooling module here".into(),
        });
    }
    let json = read_json(path)?;
    let mut c = Section::new(path, "", &json)?;
    // `embedding_dimension` is sentence-transformers 6's name for it.
    let dim = match c.opt_usize("word_embedding_dimension")? {
        Some(d) => d,
        None => c
            .opt_usize("embedding_dimension")?
            .ok_or_else(|| c.missing("word_embedding_dimension"))?,
    };
    if dim != hidden {
        return Err(c.unsupported(
            "word_embedding_dimension",
            &dim.to_string(),
            &format!("{hidden}, the encoder's hidden_size"),
        ));
    }
    // `include_prompt` only matters with a prompt, and prompts are refused (see check_prompts).
    c.skip(&["include_prompt"]);
    let flags = [
        ("pooling_mode_cls_token", Pooling::First, false),
        ("pooling_mode_max_tokens", Pooling::Max, false),
        ("pooling_mode_mean_tokens", Pooling::Mean, true),
        (
            "pooling_mode_mean_sqrt_len_tokens",
            Pooling::MeanSqrtLen,
            false,
        ),
        (
            "pooling_mode_weightedmean_tokens",
            Pooling::WeightedMean,
            false,
        ),
        ("pooling_mode_lasttoken", Pooling::LastToken, false),
    ];
    let mut modes = Vec::new();
    for (key, mode, default) in flags {
        if c.opt_bool(key)?.unwrap_or(default) {
            modes.push(mode);
        }
    }
    if let Some(name) = c.opt_str("pooling_mode")? {
        let mode = match name.as_str() {
            "cls" => Pooling::First,
            "max" => Pooling::Max,
            "mean" => Pooling::Mean,
            "mean_sqrt_len_tokens" => Pooling::MeanSqrtLen,
            "weightedmean" => Pooling::WeightedMean,
            "lasttoken" => Pooling::LastToken,
            other => {
                return Err(c.unsupported(
                    "pooling_mode",
                    other,
                    "cls, max, mean, mean_sqrt_len_tokens, weightedmean or lasttoken",
                ))
            }
        };
        modes = vec![mode];
    }
    c.finish()?;
    if modes.is_empty() {
        return Err(BertError::Config {
            path: path.to_path_buf(),
            key: "pooling_mode_mean_tokens".into(),
            message: "is false and no other pooling mode is on: the embedding would be empty"
                .into(),
        });
    }
    Ok(modes)
}

/// Refuses a default prompt: sentence-transformers would prepend it to every text, which this
/// crate does not do.
fn check_prompts(path: &Path) -> Result<()> {
    if !path.is_file() {
        return Ok(());
    }
    let json = read_json(path)?;
    match json.get("default_prompt_name") {
        None | Some(Value::Null) => Ok(()),
        Some(v) => Err(BertError::Config {
            path: path.to_path_buf(),
            key: "default_prompt_name".into(),
            message: format!(
                "= {v} is not supported: prompts are not prepended here; remove the default \
                 prompt, or prepend it to your texts yourself"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    const MODULES: &str = r#"[
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#;

    #[test]
    fn a_plain_folder_gets_mean_pooling_without_normalisation() {
        let dir = folder(&[]);
        assert_eq!(
            EmbeddingSpec::from_dir(dir.path(), 8).unwrap(),
            EmbeddingSpec::default()
        );
    }

    #[test]
    fn modules_pooling_and_length_are_read() {
        let dir = folder(&[
            ("modules.json", MODULES),
            (
                "1_Pooling/config.json",
                r#"{"word_embedding_dimension": 8, "pooling_mode_cls_token": true,
                    "pooling_mode_max_tokens": true}"#,
            ),
            (
                "sentence_bert_config.json",
                r#"{"max_seq_length": 64, "do_lower_case": true}"#,
            ),
        ]);
        let spec = EmbeddingSpec::from_dir(dir.path(), 8).unwrap();
        // The mean flag defaults to true, as in sentence-transformers: three modes.
        assert_eq!(
            spec.pooling.modes,
            [Pooling::First, Pooling::Max, Pooling::Mean]
        );
        assert!(spec.pooling.normalize && spec.do_lower_case);
        assert_eq!(spec.max_seq_length, Some(64));
    }

    #[test]
    fn pooling_mode_overrides_the_flags() {
        let dir = folder(&[
            ("modules.json", MODULES),
            (
                "1_Pooling/config.json",
                r#"{"embedding_dimension": 8, "pooling_mode": "lasttoken"}"#,
            ),
        ]);
        let spec = EmbeddingSpec::from_dir(dir.path(), 8).unwrap();
        assert_eq!(spec.pooling.modes, [Pooling::LastToken]);
        assert_eq!(spec.max_seq_length, None);
    }

    #[test]
    fn what_is_not_run_is_refused_by_name() {
        let pooling = (
            "1_Pooling/config.json",
            r#"{"word_embedding_dimension": 8}"#,
        );
        let dense = MODULES.replace("Normalize\"}", "Dense\"}");
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("modules.json", &dense), pooling], "Dense"),
            (
                vec![
                    ("modules.json", MODULES),
                    (
                        "1_Pooling/config.json",
                        r#"{"word_embedding_dimension": 9}"#,
                    ),
                ],
                "word_embedding_dimension",
            ),
            (
                vec![
                    ("modules.json", MODULES),
                    (
                        "1_Pooling/config.json",
                        r#"{"word_embedding_dimension": 8, "x": 1}"#,
                    ),
                ],
                "`x`",
            ),
            (
                vec![
                    ("modules.json", MODULES),
                    (
                        "1_Pooling/config.json",
                        r#"{"word_embedding_dimension": 8, "pooling_mode_mean_tokens": false}"#,
                    ),
                ],
                "empty",
            ),
            (
                vec![
                    ("modules.json", MODULES),
                    pooling,
                    (
                        "config_sentence_transformers.json",
                        r#"{"default_prompt_name": "query"}"#,
                    ),
                ],
                "default_prompt_name",
            ),
            (vec![("modules.json", MODULES)], "1_Pooling"),
            (vec![("modules.json", "{}")], "list"),
        ];
        for (files, needle) in cases {
            let dir = folder(&files);
            let err = EmbeddingSpec::from_dir(dir.path(), 8)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
