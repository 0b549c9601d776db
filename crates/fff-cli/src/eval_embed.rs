//! `fff eval embed`: the standard quality figures of a sentence-embedding model: STS Spearman
//! and a linear probe, as JSON.

use anyhow::{ensure, Context, Result};
use clap::Args;
use fff_bert::evaluate::{cosine, embed_unique, spearman, Probe};
use fff_bert::Pipeline;
use fff_data::text::{LabelledText, ScoredPair};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of `fff eval embed`.
#[derive(Args, Debug)]
pub struct EmbedEvalArgs {
    /// Model folder or Hugging Face model id.
    #[arg(long)]
    model: String,
    /// Scored sentence pairs, `sentence1,sentence2,score` CSV rows (the STS Benchmark): Spearman
    /// correlation of the embeddings' cosine with the score, x100.
    #[arg(long)]
    sts: Option<PathBuf>,
    /// Labelled sentences, a TSV with `split`, `label` and `text` columns: logistic regression
    /// on the frozen embeddings of the `train` rows, accuracy (%) on the `test` rows.
    #[arg(long)]
    probe: Option<PathBuf>,
    /// Inverse L2 strength of the probe (scikit-learn's `C`).
    #[arg(long, default_value_t = 1.0)]
    probe_c: f64,
    /// Texts per batch.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::ROWS}>, default_value_t = 32)]
    batch_size: usize,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::THREADS}>)]
    threads: Option<usize>,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs `fff eval embed`.
pub fn run(args: EmbedEvalArgs) -> Result<()> {
    ensure!(
        args.sts.is_some() || args.probe.is_some(),
        "nothing to evaluate: give --sts FILE and/or --probe FILE"
    );
    ensure!(
        args.probe_c.is_finite() && args.probe_c > 0.0,
        "--probe-c must be a positive number"
    );
    if let Some(path) = &args.json {
        fff_util::fs::check_output_file(path, "--json")?;
    }
    if let Some(t) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("setting the thread count")?;
    }
    // Read the data first, so that a bad file fails before the model loads.
    let sets = QualitySets::read(args.sts.as_deref(), args.probe.as_deref())?;
    let start = Instant::now();
    let dir = fff_bert::resolve_model(&args.model)?;
    let p = Pipeline::load(&dir)?;
    let pooling = p.pooling(None, None);
    let mut out = json!({
        "model": dir.display().to_string(),
        "pooling": pooling.modes.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
        "normalize": pooling.normalize,
        "max_seq_length": p.tokenizer.max_len,
        "machine": fff_util::machine(),
        "threads": rayon::current_num_threads(),
    });
    if let (Some(pairs), Some(path)) = (&sets.pairs, &args.sts) {
        let rho = sts_spearman(&p, pairs, args.batch_size)?;
        outln!(
            "STS {}: Spearman x100 = {rho:.4} over {} pairs",
            path.display(),
            pairs.len()
        );
        out["sts"] =
            json!({"file": path.display().to_string(), "pairs": pairs.len(), "spearman": rho});
    }
    if let Some((rows, path)) = &sets.probe {
        let r = probe_accuracy(&p, rows, args.probe_c, args.batch_size, path)?;
        outln!(
            "probe {}: accuracy {:.4}% on {} test rows (logistic regression, C = {}, on {} train rows)",
            path.display(),
            r.accuracy,
            r.test,
            args.probe_c,
            r.train
        );
        let first = &r.probe.models[0];
        out["probe"] = json!({
            "file": path.display().to_string(), "train": r.train, "test": r.test,
            "classes": r.probe.classes, "accuracy": r.accuracy, "c": args.probe_c,
            "newton_iterations": r.probe.models.iter().map(|m| m.iterations).collect::<Vec<_>>(),
            "objective": first.objective, "intercept": first.b,
            "coef_norm": first.w.iter().map(|w| w * w).sum::<f64>().sqrt(),
        });
    }
    out["seconds"] = json!(start.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        fff_util::fs::write_atomic(path, serde_json::to_string_pretty(&out)?.as_bytes())?;
        outln!("wrote {}", path.display());
    }
    Ok(())
}

/// STS Spearman (x100) of the cosines of `p`'s embeddings (its own pooling) of each pair.
pub fn sts_spearman(p: &Pipeline, pairs: &[ScoredPair], batch_size: usize) -> Result<f64> {
    sts_spearman_of(&engine_embed(p, batch_size), pairs)
}

/// The engine as an embedder: `p`'s embeddings (its own pooling), each distinct text once.
pub fn engine_embed(
    p: &Pipeline,
    batch_size: usize,
) -> impl Fn(&[&str]) -> Result<Vec<Vec<f32>>> + '_ {
    let pooling = p.pooling(None, None);
    move |texts: &[&str]| Ok(embed_unique(p, texts, &pooling, batch_size)?)
}

/// Embeds texts, one vector per text in their order: the engine, or a peer's precomputed
/// embeddings.
pub type Embed<'a> = dyn Fn(&[&str]) -> Result<Vec<Vec<f32>>> + 'a;

/// STS Spearman (x100) of the cosines of `embed`'s vectors of each pair.
pub fn sts_spearman_of(embed: &Embed, pairs: &[ScoredPair]) -> Result<f64> {
    let texts: Vec<&str> = pairs
        .iter()
        .flat_map(|q| [q.a.as_str(), q.b.as_str()])
        .collect();
    let vectors = embed(&texts)?;
    let cos: Vec<f64> = vectors.chunks(2).map(|v| cosine(&v[0], &v[1])).collect();
    let gold: Vec<f64> = pairs.iter().map(|q| q.score).collect();
    Ok(100.0 * spearman(&cos, &gold))
}

/// A linear probe's result.
pub struct ProbeResult {
    /// Accuracy on the `test` rows, %.
    pub accuracy: f64,
    /// Rows trained on and tested on.
    pub train: usize,
    /// Rows tested on.
    pub test: usize,
    /// The fitted probe.
    pub probe: Probe,
}

/// Logistic regression (inverse strength `c`) on `p`'s frozen embeddings of the `train` rows,
/// measured on the `test` rows; `path` names the file in errors.
pub fn probe_accuracy(
    p: &Pipeline,
    rows: &[LabelledText],
    c: f64,
    batch_size: usize,
    path: &Path,
) -> Result<ProbeResult> {
    probe_accuracy_of(&engine_embed(p, batch_size), rows, c, path)
}

/// Logistic regression (inverse strength `c`) on `embed`'s vectors of the `train` rows,
/// measured on the `test` rows; `path` names the file in errors.
pub fn probe_accuracy_of(
    embed: &Embed,
    rows: &[LabelledText],
    c: f64,
    path: &Path,
) -> Result<ProbeResult> {
    let split =
        |name: &str| -> Vec<&LabelledText> { rows.iter().filter(|r| r.split == name).collect() };
    let (train, test) = (split("train"), split("test"));
    ensure!(
        !train.is_empty() && !test.is_empty(),
        "{}: the probe needs `train` and `test` rows (found {} and {})",
        path.display(),
        train.len(),
        test.len()
    );
    let embed_rows = |rows: &[&LabelledText]| -> Result<(Vec<f32>, usize)> {
        let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
        let vectors = embed(&texts)?;
        let dim = vectors.first().map_or(0, Vec::len);
        ensure!(
            dim > 0 && vectors.iter().all(|v| v.len() == dim),
            "{}: the embeddings are empty or of mixed widths",
            path.display()
        );
        Ok((vectors.concat(), dim))
    };
    let (x_train, dim) = embed_rows(&train)?;
    let labels: Vec<usize> = train.iter().map(|r| r.label).collect();
    let probe = Probe::fit(&x_train, &labels, dim, c)?;
    let (x_test, test_dim) = embed_rows(&test)?;
    ensure!(
        test_dim == dim,
        "{}: train and test embeddings differ in width",
        path.display()
    );
    let correct = test
        .iter()
        .enumerate()
        .filter(|(i, r)| probe.predict(&x_test[i * dim..(i + 1) * dim]) == r.label)
        .count();
    Ok(ProbeResult {
        accuracy: 100.0 * correct as f64 / test.len() as f64,
        train: train.len(),
        test: test.len(),
        probe,
    })
}

/// The sets a model's quality is measured on: scored pairs for STS, labelled sentences (and
/// their file, for errors) for the probe; either may be absent.
#[derive(Debug, Default)]
pub struct QualitySets {
    /// STS pairs.
    pub pairs: Option<Vec<ScoredPair>>,
    /// Probe rows and the file they came from.
    pub probe: Option<(Vec<LabelledText>, PathBuf)>,
}

/// STS Spearman x100 and probe accuracy %, each where its set was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// STS Spearman x100.
    pub sts: Option<f64>,
    /// Probe accuracy, %.
    pub probe: Option<f64>,
}

impl QualitySets {
    /// Reads the files given (a bad one is an error naming it).
    pub fn read(sts: Option<&Path>, probe: Option<&Path>) -> Result<QualitySets> {
        Ok(QualitySets {
            pairs: sts.map(fff_data::text::read_scored_pairs).transpose()?,
            probe: probe
                .map(|p| anyhow::Ok((fff_data::text::read_labelled_texts(p)?, p.to_path_buf())))
                .transpose()?,
        })
    }

    /// Every sentence of the sets, each once, in order of first use.
    pub fn texts(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        let pairs = self.pairs.iter().flatten();
        let rows = self.probe.iter().flat_map(|(rows, _)| rows);
        pairs
            .flat_map(|q| [q.a.as_str(), q.b.as_str()])
            .chain(rows.map(|r| r.text.as_str()))
            .filter(|t| seen.insert(*t))
            .map(String::from)
            .collect()
    }

    /// `embed`'s STS and probe (the probe at scikit-learn's default strength, C = 1).
    pub fn scores(&self, embed: &Embed) -> Result<Scores> {
        Ok(Scores {
            sts: self
                .pairs
                .as_deref()
                .map(|p| sts_spearman_of(embed, p))
                .transpose()?,
            probe: self
                .probe
                .as_ref()
                .map(|(rows, path)| probe_accuracy_of(embed, rows, 1.0, path).map(|r| r.accuracy))
                .transpose()?,
        })
    }
}

/// An embedder over precomputed vectors: `embeddings[i]` is `texts[i]`'s; a text not among them
/// is an error.
pub fn embed_from<'a>(
    texts: &'a [String],
    embeddings: &'a [Vec<f32>],
) -> impl Fn(&[&str]) -> Result<Vec<Vec<f32>>> + 'a {
    let by_text: HashMap<&str, &Vec<f32>> =
        texts.iter().map(String::as_str).zip(embeddings).collect();
    move |wanted: &[&str]| {
        wanted
            .iter()
            .map(|t| {
                by_text
                    .get(t)
                    .map(|v| (*v).clone())
                    .with_context(|| format!("the peer did not embed {t:?}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_quality_comes_from_its_embeddings_looked_up_by_text() {
        let pair = |a: &str, b: &str, score: f64| ScoredPair {
            a: a.into(),
            b: b.into(),
            score,
        };
        // "x" is the reference; the others lie at growing angles from it, and the gold scores
        // fall with the angle, so the ranks agree exactly.
        let pairs = vec![
            pair("x", "near", 5.0),
            pair("x", "mid", 3.0),
            pair("far", "x", 1.0),
        ];
        let labelled: Vec<LabelledText> = [
            ("train", 0, "neg a"),
            ("train", 1, "pos a"),
            ("test", 0, "neg b"),
            ("test", 1, "near"),
        ]
        .into_iter()
        .map(|(split, label, text)| LabelledText {
            split: split.into(),
            label,
            text: text.into(),
        })
        .collect();
        let sets = QualitySets {
            pairs: Some(pairs),
            probe: Some((labelled, PathBuf::from("probe.tsv"))),
        };
        let texts = sets.texts();
        assert_eq!(
            texts,
            ["x", "near", "mid", "far", "neg a", "pos a", "neg b"],
            "each sentence once, in order of first use"
        );
        let vector = |t: &str| -> Vec<f32> {
            match t {
                "x" => vec![1.0, 0.0],
                "near" => vec![0.9, 0.1],
                "mid" => vec![0.5, 0.5],
                "far" => vec![0.1, 0.9],
                t if t.starts_with("neg") => vec![-1.0, 0.2],
                _ => vec![1.0, 0.3],
            }
        };
        // The peer's embeddings in another order than the pairs use them.
        let mut shuffled = texts.clone();
        shuffled.reverse();
        let embeddings: Vec<Vec<f32>> = shuffled.iter().map(|t| vector(t)).collect();
        let scores = sets.scores(&embed_from(&shuffled, &embeddings)).unwrap();
        let (sts, probe) = (scores.sts.unwrap(), scores.probe.unwrap());
        assert!((sts - 100.0).abs() < 1e-9, "{sts}");
        assert!((probe - 100.0).abs() < 1e-9, "{probe}");
        // Swapping two texts' vectors reorders the cosines: the Spearman drops.
        let mut swapped = embeddings.clone();
        let (i, j) = (
            shuffled.iter().position(|t| t == "near").unwrap(),
            shuffled.iter().position(|t| t == "far").unwrap(),
        );
        swapped.swap(i, j);
        let sts = sets
            .scores(&embed_from(&shuffled, &swapped))
            .unwrap()
            .sts
            .unwrap();
        assert!(sts < 0.0, "{sts}");
        let e = sets
            .scores(&embed_from(&shuffled[1..], &embeddings[1..]))
            .expect_err("a text the peer did not embed")
            .to_string();
        assert!(e.contains("did not embed"), "{e}");
    }
}
