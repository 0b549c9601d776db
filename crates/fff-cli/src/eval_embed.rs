//! `fff eval embed`: the standard quality figures of a sentence-embedding model: STS Spearman
//! and a linear probe, as JSON.

use anyhow::{ensure, Context, Result};
use clap::Args;
use fff_bert::evaluate::{cosine, embed_unique, spearman, Probe};
use fff_bert::Pipeline;
use fff_data::text::{LabelledText, ScoredPair};
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
    let pairs = args
        .sts
        .as_deref()
        .map(fff_data::text::read_scored_pairs)
        .transpose()?;
    let labelled = args
        .probe
        .as_deref()
        .map(fff_data::text::read_labelled_texts)
        .transpose()?;
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
    if let (Some(pairs), Some(path)) = (&pairs, &args.sts) {
        let rho = sts_spearman(&p, pairs, args.batch_size)?;
        outln!(
            "STS {}: Spearman x100 = {rho:.4} over {} pairs",
            path.display(),
            pairs.len()
        );
        out["sts"] =
            json!({"file": path.display().to_string(), "pairs": pairs.len(), "spearman": rho});
    }
    if let (Some(rows), Some(path)) = (&labelled, &args.probe) {
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
    let pooling = p.pooling(None, None);
    sts_spearman_of(
        &|texts: &[&str]| Ok(embed_unique(p, texts, &pooling, batch_size)?),
        pairs,
    )
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
    let pooling = p.pooling(None, None);
    probe_accuracy_of(
        &|texts: &[&str]| Ok(embed_unique(p, texts, &pooling, batch_size)?),
        rows,
        c,
        path,
    )
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

/// The sentences of the STS pairs and the probe's rows, each once, in order of first use.
pub fn quality_texts(pairs: &[ScoredPair], labelled: &[LabelledText]) -> Vec<String> {
    let mut seen = HashSet::new();
    pairs
        .iter()
        .flat_map(|q| [q.a.as_str(), q.b.as_str()])
        .chain(labelled.iter().map(|r| r.text.as_str()))
        .filter(|t| seen.insert(*t))
        .map(String::from)
        .collect()
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

/// STS and probe of a peer from its embeddings of `texts` (one vector per text, in order).
pub fn peer_scores(
    texts: &[String],
    embeddings: &[Vec<f32>],
    pairs: &[ScoredPair],
    labelled: &[LabelledText],
    probe_path: &Path,
) -> Result<(f64, f64)> {
    let embed = embed_from(texts, embeddings);
    let sts = sts_spearman_of(&embed, pairs)?;
    let probe = probe_accuracy_of(&embed, labelled, 1.0, probe_path)?.accuracy;
    Ok((sts, probe))
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
        let texts = quality_texts(&pairs, &labelled);
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
        let path = Path::new("probe.tsv");
        // The peer's embeddings in another order than the pairs use them.
        let mut shuffled = texts.clone();
        shuffled.reverse();
        let embeddings: Vec<Vec<f32>> = shuffled.iter().map(|t| vector(t)).collect();
        let (sts, probe) = peer_scores(&shuffled, &embeddings, &pairs, &labelled, path).unwrap();
        assert!((sts - 100.0).abs() < 1e-9, "{sts}");
        assert!((probe - 100.0).abs() < 1e-9, "{probe}");
        // Swapping two texts' vectors reorders the cosines: the Spearman drops.
        let mut swapped = embeddings.clone();
        let (i, j) = (
            shuffled.iter().position(|t| t == "near").unwrap(),
            shuffled.iter().position(|t| t == "far").unwrap(),
        );
        swapped.swap(i, j);
        let (sts, _) = peer_scores(&shuffled, &swapped, &pairs, &labelled, path).unwrap();
        assert!(sts < 0.0, "{sts}");
        let e = peer_scores(&shuffled[1..], &embeddings[1..], &pairs, &labelled, path)
            .expect_err("a text the peer did not embed")
            .to_string();
        assert!(e.contains("did not embed"), "{e}");
    }
}
