//! `fff bench encoder`: a real encoder (a model folder) in this engine against the runtimes
//! its users have, PyTorch and ONNX Runtime (fp32 and dynamic int8), on the same inputs and the
//! same thread count, side by side in one run. Two measurements: the encoder alone on fixed
//! token shapes (batch x tokens), and a file of sentences embedded end to end (tokenization,
//! the encoder and pooling included). The peers run in `tools/encoder_peers.py`, which first
//! checks that each of them gives the engine's embeddings (fp32 within 1e-5) and fails
//! otherwise, so that nothing unchecked is timed.

use anyhow::{bail, ensure, Context, Result};
use fff_bert::{Packed, Pipeline, PoolingConfig, Profile};
use fff_util::timing::{median, quantile};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The engine's name in tables.
pub const ENGINE: &str = "fff";

/// A fixed input shape: `batch` sequences of `seq` tokens, specials included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
}

impl Shape {
    /// `BxS`.
    pub fn name(&self) -> String {
        format!("{}x{}", self.batch, self.seq)
    }
}

impl std::str::FromStr for Shape {
    type Err = String;

    /// Parses `BxS`, e.g. `32x64`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (b, t) = s
            .split_once('x')
            .ok_or_else(|| format!("shape `{s}`: expected BATCHxTOKENS, e.g. 32x64"))?;
        let parse = |v: &str| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("shape `{s}`: `{v}` is not a positive count"))
        };
        Ok(Shape {
            batch: parse(b)?,
            seq: parse(t)?,
        })
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct EncoderBenchOptions {
    /// The model folder (given to the peers too).
    pub model_dir: PathBuf,
    /// Encoder-only shapes.
    pub shapes: Vec<Shape>,
    /// Sentences embedded end to end, with the batch size.
    pub workload: Option<(Vec<String>, usize)>,
    /// Timed calls per shape.
    pub reps: usize,
    /// Untimed calls per shape before the timed ones (every runtime alike).
    pub warmup: usize,
    /// Timed passes over the workload (after one untimed pass over its first two batches).
    pub workload_reps: usize,
    /// Texts whose embeddings the peers must reproduce before they are timed.
    pub check_texts: usize,
    /// The peers script and the runtimes it runs; `None` times the engine alone.
    pub peers: Option<PeersOptions>,
    /// Texts every peer embeds after its timings (untimed) and hands back, so that a peer's
    /// quality can be measured by the same code as the engine's; empty for none.
    pub embed_texts: Vec<String>,
    /// Seed of the token ids.
    pub seed: u64,
}

/// How to run `tools/encoder_peers.py`.
#[derive(Clone, Debug)]
pub struct PeersOptions {
    /// The command, e.g. `["bash", "tools/encoder_peers.sh"]`.
    pub command: Vec<String>,
    /// Runtimes (`torch`, `ort-fp32`, `ort-int8`).
    pub runtimes: Vec<String>,
    /// Where the peers script keeps its exported ONNX graphs.
    pub cache_dir: Option<PathBuf>,
}

/// Timings of one runtime on one measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Timing {
    /// Seconds per call (shapes) or per pass over the workload, in the order taken.
    pub times_s: Vec<f64>,
    /// Median of `times_s`.
    pub median_s: f64,
}

impl Timing {
    fn new(times_s: Vec<f64>) -> Timing {
        Timing {
            median_s: median(times_s.clone()),
            times_s,
        }
    }

    /// The `q` quantile of `times_s` (0 the fastest, 1 the slowest), interpolated linearly
    /// between neighbouring repetitions; NaN for none.
    pub fn quantile_s(&self, q: f64) -> f64 {
        let mut t = self.times_s.clone();
        t.sort_by(f64::total_cmp);
        quantile(&t, q)
    }
}

/// One runtime's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuntimeResult {
    /// Per shape name.
    pub shapes: BTreeMap<String, Timing>,
    /// The workload, when measured.
    pub workload: Option<Timing>,
    /// The peer's check against the engine's embeddings (its own JSON), `None` for the engine.
    pub check: Option<Value>,
    /// Anything else the peer reported (graph chosen, versions).
    pub notes: Option<Value>,
    /// The peer's embeddings of [`EncoderBenchOptions::embed_texts`], in their order.
    #[serde(skip)]
    pub embeddings: Option<Vec<Vec<f32>>>,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct EncoderReport {
    /// The model folder.
    pub model: String,
    /// The machine (CPU model, cores).
    pub machine: String,
    /// Threads every runtime ran on.
    pub threads: usize,
    /// The weight format of the engine's FFF layers (f32, bf16 or int8; the rest is f32).
    #[serde(default)]
    pub ffn_weights: String,
    /// The shapes, in order.
    pub shapes: Vec<Shape>,
    /// Workload texts, tokens (specials included) and batch size.
    pub workload: Option<(usize, usize, usize)>,
    /// Results by runtime; the engine's under [`ENGINE`].
    pub runtimes: BTreeMap<String, RuntimeResult>,
    /// The engine's time by phase, per shape and for the workload (`"workload"`).
    pub profile: BTreeMap<String, Profile>,
    /// The engine's time per workload pass outside the encoder (tokenization, packing,
    /// pooling) and inside it.
    pub workload_split_s: Option<(f64, f64)>,
    /// Versions and settings the peers reported.
    pub peers: Option<Value>,
    /// Each runtime's quality on the caller's sets, where the caller measured it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<Value>,
}

/// Token ids of `shape`: `[CLS]`-like first and `[SEP]`-like last (the tokenizer's own), the
/// rest drawn from the upper part of the vocabulary, where ordinary word pieces lie.
fn shape_ids(p: &Pipeline, shape: Shape, seed: u64) -> Vec<Vec<u32>> {
    let vocab = p.model.config().vocab_size as u32;
    let low = (vocab / 30).min(vocab - 1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (shape.batch * 1000 + shape.seq) as u64);
    (0..shape.batch)
        .map(|_| {
            (0..shape.seq)
                .map(|t| match t {
                    0 => p.tokenizer.cls,
                    t if t + 1 == shape.seq && t > 0 => p.tokenizer.sep,
                    _ => rng.random_range(low..vocab),
                })
                .collect()
        })
        .collect()
}

/// Embeds `texts` in batches of `batch`, adding the encoder's phases to `profile` and the time
/// outside the encoder (tokenization, pooling) to `outside`.
fn embed_all(
    p: &Pipeline,
    pooling: &PoolingConfig,
    texts: &[String],
    batch: usize,
    profile: &mut Profile,
    outside: &mut Duration,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch.max(1)) {
        let start = Instant::now();
        let encs = chunk
            .iter()
            .map(|t| p.tokenizer.encode_text(t))
            .collect::<fff_bert::Result<Vec<_>>>()?;
        let packed = fff_bert::BertTokenizer::pack(&encs);
        let before = profile.total();
        let encoded = p.model.encode_packed_profiled(&packed, profile)?;
        let pooled = fff_bert::pipeline::pool_packed(&encoded, pooling)?;
        *outside += start.elapsed().saturating_sub(profile.total() - before);
        out.extend(pooled);
    }
    Ok(out)
}

/// Times the engine on every shape and on the workload.
fn time_engine(
    p: &Pipeline,
    opts: &EncoderBenchOptions,
    inputs: &[(Shape, Packed)],
    report: &mut EncoderReport,
    log: &mut dyn FnMut(&str),
) -> Result<RuntimeResult> {
    let mut shapes = BTreeMap::new();
    for (shape, packed) in inputs {
        for _ in 0..opts.warmup {
            p.model.encode_packed(packed)?;
        }
        let mut profile = Profile::default();
        let mut times = Vec::with_capacity(opts.reps);
        for _ in 0..opts.reps {
            let start = Instant::now();
            p.model.encode_packed_profiled(packed, &mut profile)?;
            times.push(start.elapsed().as_secs_f64());
        }
        let t = Timing::new(times);
        log(&format!(
            "{ENGINE}: {}: median {:.3} ms over {}",
            shape.name(),
            t.median_s * 1e3,
            opts.reps
        ));
        shapes.insert(shape.name(), t);
        report.profile.insert(shape.name(), profile);
    }
    let mut workload = None;
    if let Some((texts, batch)) = &opts.workload {
        let pooling = p.pooling(None, None);
        let (mut warm, mut none) = (Profile::default(), Duration::ZERO);
        embed_all(
            p,
            &pooling,
            &texts[..texts.len().min(2 * batch)],
            *batch,
            &mut warm,
            &mut none,
        )?;
        let mut profile = Profile::default();
        let mut outside = Duration::ZERO;
        let mut times = Vec::with_capacity(opts.workload_reps);
        for _ in 0..opts.workload_reps {
            let start = Instant::now();
            embed_all(p, &pooling, texts, *batch, &mut profile, &mut outside)?;
            times.push(start.elapsed().as_secs_f64());
        }
        let t = Timing::new(times);
        log(&format!(
            "{ENGINE}: workload: median {:.3} s, {:.1} sentences/s",
            t.median_s,
            texts.len() as f64 / t.median_s
        ));
        let passes = opts.workload_reps.max(1) as f64;
        report.workload_split_s = Some((
            outside.as_secs_f64() / passes,
            profile.total().as_secs_f64() / passes,
        ));
        report.profile.insert("workload".into(), profile);
        workload = Some(t);
    }
    Ok(RuntimeResult {
        shapes,
        workload,
        check: None,
        notes: None,
        embeddings: None,
    })
}

/// Runs the benchmark: the engine, then the peers, then the engine again (its timings are the
/// two halves together, so that a drift of the machine shows in the engine's spread rather
/// than as a difference between runtimes).
pub fn run_encoder(
    p: &Pipeline,
    opts: &EncoderBenchOptions,
    mut log: impl FnMut(&str),
) -> Result<EncoderReport> {
    ensure!(opts.reps > 0, "reps must be positive");
    for s in &opts.shapes {
        ensure!(
            s.seq <= p.tokenizer.max_len && s.seq >= 2,
            "shape {}: sequences must hold 2 to {} tokens (the model's longest input)",
            s.name(),
            p.tokenizer.max_len
        );
    }
    let inputs: Vec<(Shape, Packed)> = opts
        .shapes
        .iter()
        .map(|&s| (s, Packed::new(&shape_ids(p, s, opts.seed))))
        .collect();
    let mut report = EncoderReport {
        model: opts.model_dir.display().to_string(),
        machine: fff_util::machine(),
        threads: rayon::current_num_threads(),
        ffn_weights: p.model.weight_format().to_string(),
        shapes: opts.shapes.clone(),
        workload: None,
        runtimes: BTreeMap::new(),
        profile: BTreeMap::new(),
        workload_split_s: None,
        peers: None,
        quality: None,
    };
    if let Some((texts, batch)) = &opts.workload {
        let tokens = texts
            .iter()
            .map(|t| p.tokenizer.encode_text(t).map(|e| e.ids.len()))
            .sum::<fff_bert::Result<usize>>()?;
        report.workload = Some((texts.len(), tokens, *batch));
    }
    let first = time_engine(p, opts, &inputs, &mut report, &mut log)?;
    if let Some(peers) = &opts.peers {
        let (peer_results, meta) = run_peers(p, opts, peers, &inputs, &mut log)?;
        report.runtimes.extend(peer_results);
        report.peers = Some(meta);
        // The second half of the engine's timings, after the peers.
        let second = time_engine(p, opts, &inputs, &mut report, &mut log)?;
        report.runtimes.insert(ENGINE.into(), merge(first, second));
    } else {
        report.runtimes.insert(ENGINE.into(), first);
    }
    Ok(report)
}

/// The timings of two runs of the same runtime, together.
fn merge(mut a: RuntimeResult, b: RuntimeResult) -> RuntimeResult {
    let join =
        |x: &Timing, y: &Timing| Timing::new(x.times_s.iter().chain(&y.times_s).copied().collect());
    for (name, t) in b.shapes {
        if let Some(old) = a.shapes.get(&name) {
            let merged = join(old, &t);
            a.shapes.insert(name, merged);
        }
    }
    if let (Some(x), Some(y)) = (&a.workload, &b.workload) {
        a.workload = Some(join(x, y));
    }
    a
}

/// Writes the inputs file, runs the peers script, reads its results.
fn run_peers(
    p: &Pipeline,
    opts: &EncoderBenchOptions,
    peers: &PeersOptions,
    inputs: &[(Shape, Packed)],
    log: &mut dyn FnMut(&str),
) -> Result<(BTreeMap<String, RuntimeResult>, Value)> {
    let dir = tempfile::tempdir().context("making a folder for the peers' files")?;
    let check: Vec<String> = match &opts.workload {
        Some((texts, _)) => texts.iter().take(opts.check_texts).cloned().collect(),
        None => vec!["A man is playing a guitar.".into(), "Hello, world!".into()],
    };
    let pooling = p.pooling(None, None);
    let embeddings = p.embed(&check, &pooling, 32)?;
    let shapes: Vec<Value> = inputs
        .iter()
        .map(|(s, packed)| {
            let ids: Vec<&[u32]> = (0..packed.len())
                .map(|b| &packed.ids[packed.rows(b)])
                .collect();
            let types: Vec<Vec<u32>> = ids.iter().map(|r| vec![0; r.len()]).collect();
            json!({"name": s.name(), "ids": ids, "type_ids": types})
        })
        .collect();
    let input = json!({
        "shapes": shapes,
        "workload": opts.workload.as_ref().map(|(t, b)| json!({"texts": t, "batch": b})),
        "check": {"texts": check, "embeddings": embeddings.iter().map(|e| &e.value).collect::<Vec<_>>()},
        "embed": (!opts.embed_texts.is_empty()).then(|| json!({"texts": opts.embed_texts})),
    });
    let in_path = dir.path().join("inputs.json");
    let out_path = dir.path().join("peers.json");
    std::fs::write(&in_path, serde_json::to_vec(&input)?)?;
    let (program, args) = peers
        .command
        .split_first()
        .context("the peers command is empty")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .arg("--model")
        .arg(&opts.model_dir)
        .arg("--inputs")
        .arg(&in_path)
        .arg("--out")
        .arg(&out_path)
        .arg("--threads")
        .arg(rayon::current_num_threads().to_string())
        .arg("--reps")
        .arg(opts.reps.to_string())
        .arg("--workload-reps")
        .arg(opts.workload_reps.to_string())
        .arg("--warmup")
        .arg(opts.warmup.to_string())
        .arg("--runtimes")
        .arg(peers.runtimes.join(","));
    if let Some(cache) = &peers.cache_dir {
        cmd.arg("--cache-dir").arg(cache);
    }
    log(&format!("running the peers: {}", peers.command.join(" ")));
    let status = cmd
        .status()
        .with_context(|| format!("running {}", peers.command.join(" ")))?;
    if !status.success() {
        bail!(
            "the peers script failed ({status}); exit status 3 means a peer's embeddings \
             differ from the engine's, and nothing was timed"
        );
    }
    let out: Value = serde_json::from_slice(
        &std::fs::read(&out_path).with_context(|| format!("reading {}", out_path.display()))?,
    )
    .context("the peers' JSON")?;
    let mut results = BTreeMap::new();
    let runtimes = out
        .get("runtimes")
        .and_then(Value::as_object)
        .context("the peers' JSON has no `runtimes` object")?;
    for (name, r) in runtimes {
        let timing = |v: &Value| -> Result<Timing> {
            let times: Vec<f64> = serde_json::from_value(v["times_s"].clone())
                .with_context(|| format!("{name}: times_s"))?;
            Ok(Timing::new(times))
        };
        let mut shapes = BTreeMap::new();
        if let Some(s) = r.get("shapes").and_then(Value::as_object) {
            for (shape, v) in s {
                shapes.insert(shape.clone(), timing(v)?);
            }
        }
        let workload = r
            .get("workload")
            .filter(|v| !v.is_null())
            .map(timing)
            .transpose()?;
        let mut notes = r.clone();
        if let Some(o) = notes.as_object_mut() {
            for key in ["shapes", "workload", "check"] {
                o.remove(key);
            }
        }
        let embeddings = match r.get("embeddings").filter(|v| !v.is_null()) {
            Some(e) => Some(read_peer_embeddings(
                dir.path(),
                name,
                e,
                opts.embed_texts.len(),
            )?),
            None if !opts.embed_texts.is_empty() => {
                bail!("{name}: the peers' JSON has no embeddings of the texts it was given")
            }
            None => None,
        };
        results.insert(
            name.clone(),
            RuntimeResult {
                shapes,
                workload,
                check: r.get("check").cloned(),
                notes: Some(notes),
                embeddings,
            },
        );
    }
    let mut meta = out.clone();
    if let Some(o) = meta.as_object_mut() {
        o.remove("runtimes");
    }
    Ok((results, meta))
}

/// Reads a peer's embeddings file (`rows x dim` little-endian f32, named in its JSON entry
/// `{"file", "rows", "dim"}`), checking that it holds one row per text given.
fn read_peer_embeddings(
    dir: &Path,
    runtime: &str,
    entry: &Value,
    texts: usize,
) -> Result<Vec<Vec<f32>>> {
    let file = entry["file"]
        .as_str()
        .with_context(|| format!("{runtime}: embeddings entry has no `file`"))?;
    ensure!(
        Path::new(file).file_name().is_some_and(|n| n == file),
        "{runtime}: embeddings file {file:?} is not a plain file name"
    );
    let rows = entry["rows"]
        .as_u64()
        .with_context(|| format!("{runtime}: embeddings `rows`"))? as usize;
    let dim = entry["dim"]
        .as_u64()
        .with_context(|| format!("{runtime}: embeddings `dim`"))? as usize;
    ensure!(
        rows == texts && dim > 0,
        "{runtime}: {rows} embeddings of width {dim} for {texts} texts"
    );
    let path = dir.join(file);
    let want = rows
        .checked_mul(dim)
        .and_then(|n| n.checked_mul(4))
        .with_context(|| format!("{runtime}: {rows} embeddings of width {dim} is too many"))?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.len() == want,
        "{}: {} bytes, expected {rows} x {dim} float32 ({want} bytes)",
        path.display(),
        bytes.len(),
    );
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(values.chunks(dim).map(<[f32]>::to_vec).collect())
}

/// Reads the workload: both sentences of every row of a CSV of scored pairs (the STS
/// Benchmark's `sentence1,sentence2,score`), or one text per non-empty line of any other file.
pub fn read_workload(path: &Path) -> Result<Vec<String>> {
    let is_csv = path.extension().is_some_and(|e| e == "csv");
    let texts: Vec<String> = if is_csv {
        fff_data::text::read_scored_pairs(path)?
            .into_iter()
            .flat_map(|p| [p.a, p.b])
            .collect()
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    };
    ensure!(!texts.is_empty(), "{}: no texts", path.display());
    Ok(texts)
}

/// The throughput of `t`: tokens (shapes) or texts (workload) per second, at the median.
fn rate(count: usize, t: &Timing) -> f64 {
    count as f64 / t.median_s
}

/// `lo–hi` of per-repetition ratios `base_i / this_j` taken by pairing each of the runtime's
/// times with the baseline's median: the spread of the ratio that the repetitions allow.
fn ratio_spread(this: &Timing, base: &Timing) -> (f64, f64) {
    let lo = this.times_s.iter().copied().fold(f64::MIN, f64::max);
    let hi = this.times_s.iter().copied().fold(f64::MAX, f64::min);
    (base.median_s / lo, base.median_s / hi)
}

/// The markdown tables of a report: per shape and for the workload, each runtime's median,
/// throughput and speed relative to ONNX Runtime fp32 (ratio of medians; the range pairs the
/// runtime's fastest and slowest repetition with the baseline's median).
pub fn encoder_table(r: &EncoderReport) -> String {
    let order: Vec<&String> = {
        let mut names: Vec<&String> = r.runtimes.keys().collect();
        let rank = |n: &str| match n {
            ENGINE => 0,
            "ort-fp32" => 1,
            "ort-int8" => 2,
            "torch" => 3,
            _ => 4,
        };
        names.sort_by_key(|n| rank(n));
        names
    };
    let base = r.runtimes.get("ort-fp32");
    let mut s = String::new();
    s.push_str("| shape | runtime | median | tokens/s | vs ORT fp32 | range |\n|---|---|---:|---:|---:|---|\n");
    for shape in &r.shapes {
        let name = shape.name();
        for rt in &order {
            let Some(t) = r.runtimes[*rt].shapes.get(&name) else {
                continue;
            };
            let (ratio, range) = match base.and_then(|b| b.shapes.get(&name)) {
                Some(b) => {
                    let (lo, hi) = ratio_spread(t, b);
                    (
                        format!("{:.2}x", b.median_s / t.median_s),
                        format!("{lo:.2}–{hi:.2}"),
                    )
                }
                None => ("".into(), "".into()),
            };
            s.push_str(&format!(
                "| {name} | {rt} | {:.3} ms | {:.0} | {ratio} | {range} |\n",
                t.median_s * 1e3,
                rate(shape.batch * shape.seq, t)
            ));
        }
    }
    if let Some((texts, tokens, batch)) = r.workload {
        s.push_str(&format!(
            "\nWorkload: {texts} texts ({tokens} tokens with specials), batch {batch}, \
             tokenization and pooling included.\n\n| runtime | median pass | sentences/s | vs ORT fp32 | vs PyTorch |\n|---|---:|---:|---:|---:|\n"
        ));
        let wl = |n: &str| r.runtimes.get(n).and_then(|x| x.workload.as_ref());
        for rt in &order {
            let Some(t) = wl(rt) else { continue };
            let vs = |n: &str| {
                wl(n).map_or(String::new(), |b| {
                    format!("{:.2}x", b.median_s / t.median_s)
                })
            };
            s.push_str(&format!(
                "| {rt} | {:.3} s | {:.1} | {} | {} |\n",
                t.median_s,
                rate(texts, t),
                vs("ort-fp32"),
                vs("torch")
            ));
        }
    }
    s
}

/// The engine's time by phase, as a markdown table (share of each measurement's total).
pub fn profile_table(r: &EncoderReport) -> String {
    let keys: Vec<&String> = r.profile.keys().collect();
    let mut s = format!(
        "| phase | {} |\n|---|{}\n",
        keys.iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(keys.len())
    );
    let phases = Profile::default().phases();
    for (i, (name, _)) in phases.iter().enumerate() {
        let cells: Vec<String> = keys
            .iter()
            .map(|k| {
                let p = &r.profile[*k];
                let total = p.total().as_secs_f64();
                let d = p.phases()[i].1.as_secs_f64();
                format!("{:.1}%", 100.0 * d / total.max(1e-12))
            })
            .collect();
        if cells.iter().all(|c| c == "0.0%") {
            continue;
        }
        s.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    if let Some((outside, inside)) = r.workload_split_s {
        s.push_str(&format!(
            "\nWorkload: tokenization and pooling took {:.1}% of a pass (the rest is the encoder).\n",
            100.0 * outside / (outside + inside).max(1e-12)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_quantiles_are_taken_over_the_repetitions_sorted() {
        let t = Timing::new(vec![4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!(t.quantile_s(0.0), 1.0);
        assert_eq!(t.quantile_s(1.0), 5.0);
        assert!((t.quantile_s(0.25) - 2.0).abs() < 1e-12);
        assert!((t.quantile_s(0.125) - 1.5).abs() < 1e-12);
        assert!(Timing::new(Vec::new()).quantile_s(0.5).is_nan());
    }

    #[test]
    fn a_peers_embeddings_file_is_read_in_order_and_checked_against_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..6).map(|i| i as f32 - 2.5).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.path().join("ort-int8.embeddings.f32"), &bytes).unwrap();
        let entry = json!({"file": "ort-int8.embeddings.f32", "rows": 2, "dim": 3});
        let rows = read_peer_embeddings(dir.path(), "ort-int8", &entry, 2).unwrap();
        assert_eq!(rows, vec![vec![-2.5, -1.5, -0.5], vec![0.5, 1.5, 2.5]]);

        let refused = |entry: Value, texts: usize| {
            read_peer_embeddings(dir.path(), "ort-int8", &entry, texts)
                .expect_err("refused")
                .to_string()
        };
        let e = refused(entry.clone(), 3);
        assert!(e.contains("2 embeddings") && e.contains("3 texts"), "{e}");
        let e = refused(
            json!({"file": "ort-int8.embeddings.f32", "rows": 3, "dim": 3}),
            3,
        );
        assert!(e.contains("24 bytes") && e.contains("36 bytes"), "{e}");
        let e = refused(json!({"file": "../x.f32", "rows": 2, "dim": 3}), 2);
        assert!(e.contains("plain file name"), "{e}");
        let e = refused(json!({"rows": 2, "dim": 3}), 2);
        assert!(e.contains("no `file`"), "{e}");
    }
}
