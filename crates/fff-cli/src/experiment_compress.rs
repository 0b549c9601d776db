//! `fff experiment compress`: the compression frontier of a sentence encoder. Rows: the
//! original, and for each FFN budget an FFF of deep trees, an FFF of shallow trees and the
//! dense FFN shrunk to the same multiply-adds (the teacher's most important neurons, distilled
//! the same way). Each row has its quality (STS, probe, cosine to the original on held-out
//! text), size, multiply-adds and speed; the speeds of all rows are measured in one phase, the
//! original first and last, so that their ratios are side by side. An ablation takes the
//! recipe's ingredients away from one row, one at a time. Resumable: a finished row's model and
//! figures are kept in the work folder; an interrupted compression resumes.

use crate::compress::{Bars, StageArgs};
use crate::eval_embed::{embed_from, engine_embed, QualitySets, Scores};
use anyhow::{bail, Context, Result};
use clap::Args;
use fastfeedforward::Activation;
use fff_bench::encoder::{
    read_workload, run_encoder, EncoderBenchOptions, PeersOptions, Shape, Timing, ENGINE,
};
use fff_bert::Pipeline;
use fff_compress::job::{run as run_job, Job, Outcome};
use fff_compress::{model_digest, ModelDigest, Recipe, Report, Start, Student, Tune};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Options of `fff experiment compress`.
#[derive(Args, Debug)]
pub struct CompressFrontierArgs {
    /// The model to compress (folder or Hugging Face id).
    #[arg(long)]
    model: String,
    /// Text to distil on (as `fff compress --text`).
    #[arg(long, num_args = 1.., required = true)]
    text: Vec<PathBuf>,
    /// STS pairs (`sentence1,sentence2,score` CSV) for the Spearman column: a dev split.
    #[arg(long)]
    sts: PathBuf,
    /// Labelled sentences for the probe column (as `fff eval embed --probe`).
    #[arg(long)]
    probe: PathBuf,
    /// FFN budgets: fractions of the original FFN's multiply-adds per token.
    #[arg(long, value_delimiter = ',', default_value = "0.02,0.05,0.1,0.25")]
    budgets: Vec<f64>,
    /// Row kinds per budget: fff-deep, fff-shallow, fff-hybrid (deep trees beside a dense
    /// branch of --branch-share of the budget), dense.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fff-deep,fff-shallow,dense"
    )]
    kinds: Vec<String>,
    /// Tree depth of the deep rows.
    #[arg(long, default_value_t = 4)]
    deep_depth: usize,
    /// Tree depth of the shallow rows.
    #[arg(long, default_value_t = 1)]
    shallow_depth: usize,
    /// The dense branch's fraction of the budget in the fff-hybrid rows.
    #[arg(long, default_value_t = 0.5)]
    branch_share: f64,
    #[command(flatten)]
    stages: StageArgs,
    /// A row to ablate (its name, e.g. fff-31x4): rows with the recipe's ingredients taken
    /// away (no distillation, the layer-wise stage alone, no chained stage, no joint stage),
    /// the whole recipe from a random start, and the joint stage also tuning the LayerNorms
    /// and attention (where the recipe does not already). Quality only: their speed is the
    /// row's.
    #[arg(long)]
    ablate: Option<String>,
    /// Seeds of the text order and initialisation: each budget's rows are compressed once per
    /// seed (rows of seeds after the first are named `ROW-seedN`; quality only), and the table
    /// gives each row's mean and range over them.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,
    /// Rows' models, figures and checkpoints.
    #[arg(long, default_value = "runs/compress")]
    work_dir: PathBuf,
    /// Encoder-only shapes timed per row.
    #[arg(long, value_delimiter = ',', default_value = "1x128,32x64")]
    shapes: Vec<Shape>,
    /// Timed calls per shape.
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Sentences embedded end to end per row (an STS CSV: both sentences of each pair).
    #[arg(long)]
    workload: Option<PathBuf>,
    /// Time ONNX Runtime fp32 and int8 beside the original (tools/encoder_peers.sh).
    #[arg(long)]
    peers: bool,
    /// Compress nothing: report the rows finished in --work-dir.
    #[arg(long)]
    report_only: bool,
    /// Write the rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the rows as a markdown table here.
    #[arg(long)]
    table: Option<PathBuf>,
    /// Draw STS against end-to-end speed (PNG or SVG by the extension).
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// One row's quality and size (speed is added in the timing phase).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Row {
    name: String,
    kind: String,
    budget: f64,
    student: String,
    /// FFN neurons evaluated per token and layer.
    neurons_per_token: usize,
    /// FFN multiply-adds per token over all layers.
    ffn_macs_per_token: usize,
    ffn_parameters: usize,
    sts: f64,
    probe: f64,
    cosine_mean: Option<f64>,
    cosine_p5: Option<f64>,
    hours: Option<f64>,
    /// The recipe's seed.
    #[serde(default)]
    seed: u64,
    /// The row this one repeats with another seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    repeats: Option<String>,
}

/// One ingredient of the recipe taken away (or added) in an ablation row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ablation {
    /// The teacher initialisation alone: no stage reads text.
    NoDistillation,
    /// The layer-wise stage alone.
    LayerwiseOnly,
    /// No chained stage.
    NoChained,
    /// No joint stage.
    NoJoint,
    /// Every stage, from the library's random initialisation instead of the teacher's neurons.
    RandomStart,
    /// Every stage, the joint one also tuning the LayerNorms and attention projections.
    TuneAll,
}

impl Ablation {
    const ALL: [Ablation; 6] = [
        Ablation::NoDistillation,
        Ablation::LayerwiseOnly,
        Ablation::NoChained,
        Ablation::NoJoint,
        Ablation::RandomStart,
        Ablation::TuneAll,
    ];

    /// Whether the ablation makes a row of its own from `recipe`: it changes the recipe (an
    /// ingredient it adds may be there already) into one that can run (tuning the trunk needs
    /// a joint stage).
    fn changes(self, recipe: &Recipe) -> bool {
        let changed = self.apply(recipe.clone());
        changed != *recipe && changed.validate().is_ok()
    }

    /// The suffix of the row's name.
    fn suffix(self) -> &'static str {
        match self {
            Ablation::NoDistillation => "no-distillation",
            Ablation::LayerwiseOnly => "layerwise-only",
            Ablation::NoChained => "no-chained",
            Ablation::NoJoint => "no-joint",
            Ablation::RandomStart => "random-start",
            Ablation::TuneAll => "tune-all",
        }
    }

    /// `recipe` without this ingredient.
    fn apply(self, recipe: Recipe) -> Recipe {
        match self {
            Ablation::NoDistillation => Recipe {
                layerwise_tokens: 0,
                chained_tokens: 0,
                joint_tokens: 0,
                joint_tune: Tune::Ffn,
                ..recipe
            },
            Ablation::LayerwiseOnly => Recipe {
                chained_tokens: 0,
                joint_tokens: 0,
                joint_tune: Tune::Ffn,
                ..recipe
            },
            Ablation::NoChained => Recipe {
                chained_tokens: 0,
                ..recipe
            },
            Ablation::NoJoint => Recipe {
                joint_tokens: 0,
                joint_tune: Tune::Ffn,
                ..recipe
            },
            Ablation::RandomStart => Recipe {
                start: Start::Random,
                ..recipe
            },
            Ablation::TuneAll => Recipe {
                joint_tune: Tune::All,
                ..recipe
            },
        }
    }
}

/// A row of the grid: what to compress and how.
struct GridRow {
    name: String,
    kind: String,
    budget: f64,
    student: Student,
    /// Set on the rows of an ablation.
    ablation: Option<Ablation>,
    /// The recipe's seed.
    seed: u64,
    /// The row this one repeats with another seed.
    repeats: Option<String>,
}

impl GridRow {
    /// Whether the row is timed: not an ablation or a repeat with another seed (they compute
    /// the same shape as their row).
    fn timed(&self) -> bool {
        self.ablation.is_none() && self.repeats.is_none()
    }
}

/// The rows, in order: the floor, each budget's kinds, then the ablation's rows.
fn grid(args: &CompressFrontierArgs, intermediate: usize) -> Result<Vec<GridRow>> {
    let mut rows: Vec<GridRow> = Vec::new();
    if args.kinds.iter().any(|k| k == "removed") {
        // The floor: each FFN replaced by its single most important neuron and its mean output
        // (no distillation), 1 of the FFN's neurons.
        rows.push(GridRow {
            name: "removed".into(),
            kind: "removed".into(),
            budget: 1.0 / intermediate as f64,
            student: Student::Dense { width: 1 },
            ablation: None,
            seed: 0,
            repeats: None,
        });
    }
    let Some(&first_seed) = args.seeds.first() else {
        bail!("--seeds: give at least one seed");
    };
    for &b in &args.budgets {
        for kind in &args.kinds {
            let (depth, dense) = match kind.as_str() {
                "fff-deep" | "fff-hybrid" => (args.deep_depth, false),
                "fff-shallow" => (args.shallow_depth, false),
                "dense" => (0, true),
                "removed" => continue,
                other => {
                    bail!(
                        "--kinds: `{other}` is not one of fff-deep, fff-shallow, fff-hybrid, \
                         dense, removed"
                    )
                }
            };
            let s = if kind == "fff-hybrid" {
                Student::hybrid_from_budget(
                    b,
                    intermediate,
                    depth,
                    Activation::Gelu,
                    args.branch_share,
                )?
            } else {
                Student::from_budget(b, intermediate, depth, Activation::Gelu, dense)?
            };
            let name = match s {
                Student::Fff {
                    trees,
                    depth,
                    branch: 0,
                    ..
                } => format!("fff-{trees}x{depth}"),
                Student::Fff {
                    trees,
                    depth,
                    branch,
                    ..
                } => format!("fff-{trees}x{depth}+{branch}"),
                Student::Dense { width } => format!("dense-{width}"),
            };
            for &seed in &args.seeds {
                let (row, repeats) = if seed == first_seed {
                    (name.clone(), None)
                } else {
                    (format!("{name}-seed{seed}"), Some(name.clone()))
                };
                if !rows.iter().any(|r| r.name == row) {
                    rows.push(GridRow {
                        name: row,
                        kind: kind.clone(),
                        budget: b,
                        student: s,
                        ablation: None,
                        seed,
                        repeats,
                    });
                }
            }
        }
    }
    if let Some(target) = &args.ablate {
        let Some(base) = rows
            .iter()
            .find(|r| r.name == *target && r.kind != "removed")
        else {
            let names: Vec<&str> = rows
                .iter()
                .filter(|r| r.kind != "removed")
                .map(|r| r.name.as_str())
                .collect();
            bail!(
                "--ablate: `{target}` is not a distilled row of this grid (its rows: {})",
                names.join(", ")
            );
        };
        let (budget, student, seed) = (base.budget, base.student, base.seed);
        let recipe = args.stages.apply(Recipe::new(student), true);
        for a in Ablation::ALL.into_iter().filter(|a| a.changes(&recipe)) {
            rows.push(GridRow {
                name: format!("{target}-{}", a.suffix()),
                kind: "ablation".into(),
                budget,
                student,
                ablation: Some(a),
                seed,
                repeats: None,
            });
        }
    }
    Ok(rows)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!("{}: unreadable", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A model's STS and probe, with the digests of the files they were measured on.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct QualityCache {
    sts_sha256: String,
    probe_sha256: String,
    sts: f64,
    probe: f64,
}

/// The name of a row's cached quality in its folder.
const QUALITY_CACHE: &str = "quality-scores.json";

/// STS and probe of the model in `dir` on `sets`, cached in `cache` (measured again when the
/// cache was measured on other STS or probe files).
fn quality(dir: &Path, sets: &QualitySets, sources: &Sources, cache: &Path) -> Result<(f64, f64)> {
    if let Some(c) = read_json::<QualityCache>(cache)? {
        if c.sts_sha256 == sources.sts_sha256 && c.probe_sha256 == sources.probe_sha256 {
            return Ok((c.sts, c.probe));
        }
    }
    let p = Pipeline::load(dir)?;
    let scores = sets.scores(&engine_embed(&p, 32))?;
    let (sts, probe) = (
        scores.sts.expect("the frontier has STS pairs"),
        scores.probe.expect("the frontier has probe rows"),
    );
    let c = QualityCache {
        sts_sha256: sources.sts_sha256.clone(),
        probe_sha256: sources.probe_sha256.clone(),
        sts,
        probe,
    };
    fff_util::fs::write_atomic(cache, serde_json::to_string(&c)?.as_bytes())?;
    Ok((sts, probe))
}

/// What every row must come from: the teacher, the text it was distilled on, and the files its
/// quality is measured on (SHA-256 each).
struct Sources {
    model: PathBuf,
    teacher: ModelDigest,
    texts: Vec<(u64, String)>,
    sts_sha256: String,
    probe_sha256: String,
}

impl Sources {
    fn of(model: &Path, args: &CompressFrontierArgs) -> Result<Sources> {
        let sha = |p: &Path| -> Result<String> { Ok(fff_train::checkpoint::digest(p)?.sha256) };
        Ok(Sources {
            model: model.to_path_buf(),
            teacher: model_digest(model)?,
            texts: args
                .text
                .iter()
                .map(|p| fff_train::checkpoint::digest(p).map(|d| (d.bytes, d.sha256)))
                .collect::<std::result::Result<_, _>>()?,
            sts_sha256: sha(&args.sts)?,
            probe_sha256: sha(&args.probe)?,
        })
    }

    /// Why the finished row `report` does not come from these sources, if it does not.
    fn mismatch(&self, report: &Report) -> Option<String> {
        let same_teacher = match &report.teacher_digest {
            Some(d) => *d == self.teacher,
            // Reports from before digests were recorded: the same folder.
            None => {
                let canon = |p: &Path| std::fs::canonicalize(p).ok();
                canon(&report.teacher).is_some() && canon(&report.teacher) == canon(&self.model)
            }
        };
        if !same_teacher {
            return Some(format!(
                "was compressed from another teacher ({}) than --model {}",
                report.teacher.display(),
                self.model.display()
            ));
        }
        let texts: Vec<(u64, String)> = report
            .texts
            .iter()
            .map(|t| (t.bytes, t.sha256.clone()))
            .collect();
        (texts != self.texts).then(|| {
            let names: Vec<String> = report
                .texts
                .iter()
                .map(|t| t.path.display().to_string())
                .collect();
            format!(
                "was distilled on other text ({}) than the --text files given",
                names.join(", ")
            )
        })
    }
}

/// Runs `fff experiment compress`.
pub fn run(args: CompressFrontierArgs) -> Result<()> {
    crate::compress::keep_candle_ops_on_caller();
    for path in [&args.json, &args.table].into_iter().flatten() {
        fff_util::fs::check_output_file(path, "--json/--table")?;
    }
    if let Some(path) = &args.plot {
        fff_util::chart::check_file(path, "--plot")?;
    }
    let model = fff_bert::resolve_model(&args.model)?;
    let config = match fff_bert::ModelConfig::from_file(&model.join("config.json"))? {
        fff_bert::ModelConfig::Bert(c) => c,
        _ => bail!("{}: not a Hugging Face BERT model", model.display()),
    };
    let (h, inter, layers) = (config.hidden, config.intermediate, config.layers);
    let grid = grid(&args, inter)?;
    let stop = crate::progress::stop_on_signals()?;
    std::fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("cannot create {}", args.work_dir.display()))?;

    let sets = QualitySets::read(Some(&args.sts), Some(&args.probe))?;
    let sources = Sources::of(&model, &args)?;
    let (sts, probe) = quality(
        &model,
        &sets,
        &sources,
        &args.work_dir.join(format!("original.{QUALITY_CACHE}")),
    )?;
    let mut rows = vec![Row {
        name: "original".into(),
        kind: "original".into(),
        budget: 1.0,
        student: format!("dense {inter}"),
        neurons_per_token: inter,
        ffn_macs_per_token: layers * 2 * h * inter,
        ffn_parameters: layers * (2 * h * inter + inter),
        sts,
        probe,
        cosine_mean: Some(1.0),
        cosine_p5: Some(1.0),
        hours: None,
        seed: 0,
        repeats: None,
    }];
    outln!("original: STS {sts:.2}, probe {probe:.2}%");
    let mut models: Vec<(String, PathBuf)> = vec![("original".into(), model.clone())];
    for row in &grid {
        let GridRow {
            name,
            kind,
            budget,
            student,
            ablation,
            seed,
            repeats,
        } = row;
        let dir = args.work_dir.join(name);
        let out = dir.join("model");
        let report_path = out.join("compression.json");
        let recipe = Recipe {
            seed: *seed,
            ..args.stages.apply(Recipe::new(*student), kind != "removed")
        };
        let recipe = match ablation {
            Some(a) => a.apply(recipe),
            None => recipe,
        };
        let mut report: Option<Report> = read_json(&report_path)?;
        if let Some(r) = &report {
            if let Some((field, ours, theirs)) = r.recipe.difference(&recipe) {
                bail!(
                    "{}: row {name} was compressed with `{field}` {ours}, this run asks for \
                     {theirs}; move the row's folder away to redo it",
                    report_path.display()
                );
            }
            if let Some(why) = sources.mismatch(r) {
                bail!(
                    "{}: row {name} {why}; use another --work-dir, or move the row's folder \
                     away to redo it",
                    report_path.display()
                );
            }
        }
        if report.is_none() {
            if args.report_only {
                outln!("{name}: not finished");
                continue;
            }
            outln!("{name}: compressing ({})", student.describe());
            let job = Job {
                model: model.clone(),
                texts: args.text.clone(),
                out: out.clone(),
                work: dir.join("model.work"),
                recipe,
                checkpoint_seconds: 300.0,
            };
            match run_job(&job, &mut Bars::default(), &stop)? {
                Outcome::Finished(r) => report = Some(*r),
                Outcome::Stopped { .. } => {
                    outln!("stopped; run the same command to resume");
                    return Ok(());
                }
            }
        }
        let report = report.expect("finished above");
        let (sts, probe) = quality(&out, &sets, &sources, &dir.join(QUALITY_CACHE))?;
        let last = report.agreement.last();
        let n = student.neurons_per_token();
        rows.push(Row {
            name: name.clone(),
            kind: kind.clone(),
            budget: *budget,
            student: student.describe(),
            neurons_per_token: n,
            ffn_macs_per_token: layers * 2 * h * n,
            ffn_parameters: report.ffn_parameters.1,
            sts,
            probe,
            cosine_mean: last.map(|a| a.cosine_mean),
            cosine_p5: last.map(|a| a.cosine_p5),
            hours: Some(report.seconds.values().sum::<f64>() / 3600.0),
            seed: *seed,
            repeats: repeats.clone(),
        });
        outln!(
            "{name}: STS {sts:.2}, probe {probe:.2}%, cosine {:.4}",
            last.map_or(f64::NAN, |a| a.cosine_mean)
        );
        if row.timed() {
            models.push((name.clone(), out));
        }
    }

    // Speed: every model in one phase, the original first and last.
    let workload = args.workload.as_deref().map(read_workload).transpose()?;
    let mut speed: BTreeMap<String, Value> = BTreeMap::new();
    // The peers also embed the quality sets, so that their STS and probe (int8's above all)
    // come from the same evaluation as the rows'.
    let quality_texts = if args.peers { sets.texts() } else { Vec::new() };
    let mut peer_quality: BTreeMap<String, Scores> = BTreeMap::new();
    let mut order = models.clone();
    order.push(("original (again)".into(), model.clone()));
    for (i, (name, dir)) in order.iter().enumerate() {
        outln!("timing {name}");
        let p = Pipeline::load(dir)?;
        let peers = (args.peers && i == 0).then(|| PeersOptions {
            command: vec!["bash".into(), "tools/encoder_peers.sh".into()],
            runtimes: vec!["ort-fp32".into(), "ort-int8".into()],
            cache_dir: None,
        });
        let opts = EncoderBenchOptions {
            model_dir: dir.clone(),
            shapes: args.shapes.clone(),
            workload: workload.clone().map(|w| (w, 32)),
            reps: args.reps,
            warmup: 10,
            workload_reps: 3,
            check_texts: 64,
            embed_texts: if peers.is_some() {
                quality_texts.clone()
            } else {
                Vec::new()
            },
            peers,
            seed: 0,
        };
        let r = run_encoder(&p, &opts, |line| errln!("  {line}"))?;
        let tokens_per_shape: BTreeMap<String, usize> = args
            .shapes
            .iter()
            .map(|s| (s.name(), s.batch * s.seq))
            .collect();
        for (runtime, res) in &r.runtimes {
            let key = if runtime == ENGINE {
                name.clone()
            } else {
                format!("{runtime} (original)")
            };
            let mut v = json!({});
            // The median and, for the spread, the slower and the faster quartile's rates.
            let mut put = |key: &str, count: f64, t: &Timing| {
                v[key] = json!(count / t.median_s);
                v[format!("{key} quartiles")] =
                    json!([count / t.quantile_s(0.75), count / t.quantile_s(0.25)]);
            };
            for (shape, t) in &res.shapes {
                put(shape, tokens_per_shape[shape] as f64, t);
            }
            if let (Some(t), Some(w)) = (&res.workload, &workload) {
                put("workload", w.len() as f64, t);
            }
            if let Some(e) = &res.embeddings {
                let q = sets.scores(&embed_from(&quality_texts, e))?;
                outln!(
                    "{key}: STS {:.2}, probe {:.2}%",
                    q.sts.unwrap_or(f64::NAN),
                    q.probe.unwrap_or(f64::NAN)
                );
                peer_quality.insert(key.clone(), q);
            }
            speed.insert(key, v);
        }
    }
    let machine = fff_util::machine();
    let doc = json!({
        "model": model.display().to_string(),
        "machine": machine,
        "threads": rayon::current_num_threads(),
        "units": "shapes: tokens/s (median); workload: sentences/s (median); KEY quartiles: \
                  the rates at the slower and the faster quartile of the repetitions",
        "rows": rows,
        "speed": speed,
        "peer_quality": peer_quality,
    });
    let table = markdown(
        &rows,
        &speed,
        &peer_quality,
        &args.shapes,
        workload.is_some(),
    );
    out!("{table}");
    if let Some(path) = &args.json {
        fff_util::fs::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        outln!("wrote {}", path.display());
    }
    if let Some(path) = &args.table {
        let text = format!(
            "Machine: {machine}; {} threads; model {}.\n\n{table}",
            rayon::current_num_threads(),
            model.display()
        );
        fff_util::fs::write_atomic(path, text.as_bytes())?;
        outln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot(path, &rows, &speed, &peer_quality, &args.shapes)?;
        outln!("wrote {}", path.display());
    }
    Ok(())
}

fn markdown(
    rows: &[Row],
    speed: &BTreeMap<String, Value>,
    peer_quality: &BTreeMap<String, Scores>,
    shapes: &[Shape],
    workload: bool,
) -> String {
    let base = speed.get("original");
    let ratio = |name: &str, key: &str| -> String {
        let v = speed.get(name).and_then(|s| s[key].as_f64());
        let b = base.and_then(|s| s[key].as_f64());
        let quartiles = speed
            .get(name)
            .and_then(|s| s[format!("{key} quartiles")].as_array())
            .and_then(|q| Some((q.first()?.as_f64()?, q.get(1)?.as_f64()?)));
        match (v, b) {
            (Some(v), Some(b)) => match quartiles {
                Some((lo, hi)) => format!("{v:.0} ({:.2}x, {:.2}–{:.2})", v / b, lo / b, hi / b),
                None => format!("{v:.0} ({:.2}x)", v / b),
            },
            (Some(v), None) => format!("{v:.0}"),
            _ => "–".into(),
        }
    };
    let mut keys: Vec<String> = shapes.iter().map(|s| s.name()).collect();
    if workload {
        keys.push("workload".into());
    }
    let mut t = String::from(
        "| row | FFN | budget | STS | probe % | cos mean | cos p5 | FFN params | FFN MACs/token |",
    );
    for k in &keys {
        t.push_str(&format!(" {k} |"));
    }
    t.push_str(" hours |\n|---|---|---:|---:|---:|---:|---:|---:|---:|");
    t.push_str(&"---:|".repeat(keys.len() + 1));
    t.push('\n');
    let f = |v: Option<f64>, d: usize| v.map_or("–".into(), |v| format!("{v:.d$}"));
    for r in rows {
        t.push_str(&format!(
            "| {} | {} | {:.1}% | {:.2} | {:.2} | {} | {} | {} | {} |",
            r.name,
            r.student,
            100.0 * r.neurons_per_token as f64 / rows[0].neurons_per_token as f64,
            r.sts,
            r.probe,
            f(r.cosine_mean, 4),
            f(r.cosine_p5, 4),
            r.ffn_parameters,
            r.ffn_macs_per_token
        ));
        for k in &keys {
            t.push_str(&format!(" {} |", ratio(&r.name, k)));
        }
        t.push_str(&format!(" {} |\n", f(r.hours, 2)));
    }
    for name in speed.keys().filter(|k| k.contains("(")) {
        let (sts, probe) = match peer_quality.get(name) {
            Some(q) => (f(q.sts, 2), f(q.probe, 2)),
            None => (String::new(), String::new()),
        };
        t.push_str(&format!("| {name} | | | {sts} | {probe} | | | | |"));
        for k in &keys {
            t.push_str(&format!(" {} |", ratio(name, k)));
        }
        t.push_str(" |\n");
    }
    t.push_str("\nSpeeds: tokens/s for the shapes, sentences/s for the workload (medians), with the ratio to the original measured in the same run and, after it, the interquartile range of the row's repetitions over the original's median.\n");
    t.push_str(&seeds_table(rows));
    t
}

/// Each row compressed with several seeds: the mean and range of its quality over them (empty
/// when no row was).
fn seeds_table(rows: &[Row]) -> String {
    let mut groups: Vec<(&str, Vec<&Row>)> = Vec::new();
    for r in rows {
        let base = r.repeats.as_deref().unwrap_or(&r.name);
        match groups.iter_mut().find(|(b, _)| *b == base) {
            Some((_, g)) => g.push(r),
            None => groups.push((base, vec![r])),
        }
    }
    groups.retain(|(_, g)| g.len() > 1);
    if groups.is_empty() {
        return String::new();
    }
    let mut t = String::from(
        "\nOver seeds (mean, min–max):\n\n| row | seeds | STS | probe % | cos mean | cos p5 |\n|---|---|---:|---:|---:|---:|\n",
    );
    let stat = |g: &[&Row], f: &dyn Fn(&Row) -> Option<f64>, d: usize| -> String {
        let v: Vec<f64> = g.iter().filter_map(|r| f(r)).collect();
        if v.is_empty() {
            return "–".into();
        }
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let (lo, hi) = v
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        format!("{mean:.d$} ({lo:.d$}–{hi:.d$})")
    };
    for (base, g) in &groups {
        let seeds: Vec<String> = g.iter().map(|r| r.seed.to_string()).collect();
        t.push_str(&format!(
            "| {base} | {} | {} | {} | {} | {} |\n",
            seeds.join(", "),
            stat(g, &|r| Some(r.sts), 2),
            stat(g, &|r| Some(r.probe), 2),
            stat(g, &|r| r.cosine_mean, 4),
            stat(g, &|r| r.cosine_p5, 4),
        ));
    }
    t
}

fn plot(
    path: &Path,
    rows: &[Row],
    speed: &BTreeMap<String, Value>,
    peer_quality: &BTreeMap<String, Scores>,
    shapes: &[Shape],
) -> Result<()> {
    use fff_util::chart::{draw, Chart, Legend, Series};
    let key = shapes.last().map(|s| s.name()).unwrap_or_default();
    // Each kind's points joined in the order of their budgets (the speeds of neighbouring
    // budgets can be within noise of each other).
    let mut by_kind: BTreeMap<&str, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for r in rows {
        if let Some(v) = speed.get(&r.name).and_then(|s| s[&key].as_f64()) {
            by_kind
                .entry(r.kind.as_str())
                .or_default()
                .push((r.budget, v, r.sts));
        }
    }
    let mut series: Vec<Series> = by_kind
        .into_iter()
        .map(|(k, mut pts)| {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series::line(k, pts.into_iter().map(|(_, v, sts)| (v, sts)).collect())
        })
        .collect();
    // The peers (the original on ONNX Runtime), a point each where their quality was measured.
    for (name, q) in peer_quality {
        if let (Some(v), Some(sts)) = (speed.get(name).and_then(|s| s[&key].as_f64()), q.sts) {
            series.push(Series::line(name.as_str(), vec![(v, sts)]));
        }
    }
    let x = format!("tokens/s at {key}");
    draw(
        path,
        &Chart {
            title: "Compressed encoders: STS against speed",
            x_desc: &x,
            y_desc: "STS Spearman x100",
            log_x: false,
            log_y: false,
            legend: Legend::LowerRight,
        },
        &series,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CompressFrontierArgs,
    }

    fn args(extra: &[&str]) -> CompressFrontierArgs {
        let mut argv = vec![
            "x", "--model", "m", "--text", "t", "--sts", "s", "--probe", "p",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("valid flags").args
    }

    #[test]
    fn ablation_rows_take_one_ingredient_at_a_time_from_the_named_row() {
        let a = args(&[
            "--budgets",
            "0.1",
            "--kinds",
            "fff-deep,dense",
            "--ablate",
            "fff-31x4",
        ]);
        let rows = grid(&a, 1536).unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "fff-31x4",
                "dense-154",
                "fff-31x4-no-distillation",
                "fff-31x4-layerwise-only",
                "fff-31x4-no-chained",
                "fff-31x4-no-joint",
                "fff-31x4-random-start",
                "fff-31x4-tune-all",
            ]
        );
        let base = a.stages.apply(Recipe::new(rows[0].student), true);
        let (l, c, j) = (
            base.layerwise_tokens,
            base.chained_tokens,
            base.joint_tokens,
        );
        assert!(l > 0 && c > 0 && j > 0 && base.start == Start::Teacher);
        for r in &rows[2..] {
            assert_eq!((r.kind.as_str(), r.student), ("ablation", rows[0].student));
            assert_eq!(r.budget, rows[0].budget);
            let ablated = r.ablation.expect("an ablation row").apply(base.clone());
            let got = (
                ablated.layerwise_tokens,
                ablated.chained_tokens,
                ablated.joint_tokens,
                ablated.start,
                ablated.joint_tune,
            );
            let (teacher, random, ffn) = (Start::Teacher, Start::Random, Tune::Ffn);
            let want = match r.ablation.unwrap() {
                Ablation::NoDistillation => (0, 0, 0, teacher, ffn),
                Ablation::LayerwiseOnly => (l, 0, 0, teacher, ffn),
                Ablation::NoChained => (l, 0, j, teacher, ffn),
                Ablation::NoJoint => (l, c, 0, teacher, ffn),
                Ablation::RandomStart => (l, c, j, random, ffn),
                Ablation::TuneAll => (l, c, j, teacher, Tune::All),
            };
            assert_eq!(got, want, "{}", r.name);
            // Nothing else of the recipe changes.
            let restored = Recipe {
                layerwise_tokens: l,
                chained_tokens: c,
                joint_tokens: j,
                start: Start::Teacher,
                joint_tune: Tune::Ffn,
                ..ablated
            };
            assert_eq!(restored, base, "{}", r.name);
        }
        // An ingredient the row's recipe has already is not added again.
        let a = args(&[
            "--budgets",
            "0.1",
            "--kinds",
            "fff-deep",
            "--ablate",
            "fff-31x4",
            "--joint-tune",
            "all",
        ]);
        let rows = grid(&a, 1536).unwrap();
        assert!(rows.iter().all(|r| r.ablation != Some(Ablation::TuneAll)));
        assert!(rows
            .iter()
            .any(|r| r.ablation == Some(Ablation::RandomStart)));
        // Without a joint stage there is no trunk to tune: no tune-all row, and no no-joint
        // row either (it would be the row itself).
        let a = args(&[
            "--budgets",
            "0.1",
            "--kinds",
            "fff-deep",
            "--ablate",
            "fff-31x4",
            "--joint-tokens",
            "0",
        ]);
        let names: Vec<String> = grid(&a, 1536)
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(
            names,
            [
                "fff-31x4",
                "fff-31x4-no-distillation",
                "fff-31x4-layerwise-only",
                "fff-31x4-no-chained",
                "fff-31x4-random-start"
            ]
        );
    }

    #[test]
    fn an_undistilled_row_keeps_the_default_stage_settings_whatever_the_flags() {
        let a = args(&[
            "--joint-tune",
            "all",
            "--lr",
            "0.01",
            "--load-balance",
            "0.1",
        ]);
        let base = Recipe::new(Student::Dense { width: 1 });
        let removed = a.stages.apply(base.clone(), false);
        removed.validate().unwrap();
        assert_eq!(
            removed,
            Recipe {
                layerwise_tokens: 0,
                chained_tokens: 0,
                joint_tokens: 0,
                ..base.clone()
            }
        );
        let distilled = a.stages.apply(base, true);
        assert_eq!(
            (
                distilled.joint_tune,
                distilled.learning_rate,
                distilled.load_balance
            ),
            (Tune::All, 0.01, 0.1)
        );
    }

    #[test]
    fn a_finished_row_from_another_teacher_or_text_is_told_apart() {
        use fff_compress::job::{run, Job, Quiet};
        let dir = tempfile::tempdir().unwrap();
        let teacher =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fff-bert/tests/fixtures/hf/tiny-st");
        let text = dir.path().join("text.txt");
        let passages: String = (0..40)
            .map(|i| format!("the quick brown fox {i} jumps over the lazy dog\n"))
            .collect();
        std::fs::write(&text, passages).unwrap();
        let recipe = Recipe {
            layerwise_tokens: 0,
            chained_tokens: 0,
            joint_tokens: 0,
            init_tokens: 128,
            holdout: 4,
            max_tokens: 16,
            chunk_tokens: 64,
            step_rows: 64,
            ..Recipe::new(Student::Dense { width: 2 })
        };
        let job = Job {
            model: teacher.clone(),
            texts: vec![text.clone()],
            out: dir.path().join("out"),
            work: dir.path().join("work"),
            recipe,
            checkpoint_seconds: 300.0,
        };
        let stop = std::sync::atomic::AtomicBool::new(false);
        let report = match run(&job, &mut Quiet, &stop).unwrap() {
            Outcome::Finished(r) => *r,
            Outcome::Stopped { .. } => panic!("stopped"),
        };
        let a = args(&[]);
        let sources = |texts: Vec<PathBuf>| {
            let sha = |p: &Path| fff_train::checkpoint::digest(p).unwrap();
            Sources {
                model: teacher.clone(),
                teacher: model_digest(&teacher).unwrap(),
                texts: texts
                    .iter()
                    .map(|p| {
                        let d = sha(p);
                        (d.bytes, d.sha256)
                    })
                    .collect(),
                sts_sha256: a.sts.display().to_string(),
                probe_sha256: a.probe.display().to_string(),
            }
        };
        let same = sources(vec![text.clone()]);
        assert_eq!(same.mismatch(&report), None);
        let other_text = dir.path().join("other.txt");
        std::fs::write(&other_text, "another passage\n").unwrap();
        let e = sources(vec![other_text])
            .mismatch(&report)
            .expect("other text");
        assert!(e.contains("other text") && e.contains("text.txt"), "{e}");
        let other_teacher = Sources {
            teacher: ModelDigest {
                config_sha256: same.teacher.config_sha256.clone(),
                weights_sha256: "0".repeat(64),
            },
            ..sources(vec![text.clone()])
        };
        let e = other_teacher.mismatch(&report).expect("other teacher");
        assert!(e.contains("another teacher"), "{e}");
        // A report from before digests were recorded: told apart by its folder.
        let old = Report {
            teacher_digest: None,
            ..report.clone()
        };
        assert_eq!(same.mismatch(&old), None);
        let elsewhere = Sources {
            model: dir.path().to_path_buf(),
            ..sources(vec![text])
        };
        assert!(elsewhere.mismatch(&old).is_some());
    }

    #[test]
    fn seeds_repeat_each_budgets_rows_and_the_table_gives_their_spread() {
        let a = args(&[
            "--budgets",
            "0.1",
            "--kinds",
            "removed,fff-deep,dense",
            "--seeds",
            "0,3",
        ]);
        let rows = grid(&a, 1536).unwrap();
        let got: Vec<(&str, u64, Option<&str>, bool)> = rows
            .iter()
            .map(|r| (r.name.as_str(), r.seed, r.repeats.as_deref(), r.timed()))
            .collect();
        assert_eq!(
            got,
            [
                ("removed", 0, None, true),
                ("fff-31x4", 0, None, true),
                ("fff-31x4-seed3", 3, Some("fff-31x4"), false),
                ("dense-154", 0, None, true),
                ("dense-154-seed3", 3, Some("dense-154"), false),
            ]
        );
        let row = |name: &str, sts: f64, seed: u64, repeats: Option<&str>| Row {
            name: name.into(),
            kind: "fff-deep".into(),
            budget: 0.1,
            student: "fff 31x4 gelu".into(),
            neurons_per_token: 155,
            ffn_macs_per_token: 1,
            ffn_parameters: 1,
            sts,
            probe: 70.0 + sts / 10.0,
            cosine_mean: Some(sts / 100.0),
            cosine_p5: None,
            hours: None,
            seed,
            repeats: repeats.map(String::from),
        };
        assert_eq!(seeds_table(&[row("fff-31x4", 85.0, 0, None)]), "");
        let t = seeds_table(&[
            row("fff-31x4", 85.0, 0, None),
            row("dense-154", 84.0, 0, None),
            row("fff-31x4-seed3", 86.0, 3, Some("fff-31x4")),
        ]);
        assert!(
            t.contains("| fff-31x4 | 0, 3 | 85.50 (85.00–86.00) | 78.55 (78.50–78.60) | 0.8550 (0.8500–0.8600) | – |"),
            "{t}"
        );
        assert!(!t.contains("dense-154"), "{t}");
    }

    #[test]
    fn speed_cells_give_the_ratio_to_the_original_and_the_rows_interquartile_range() {
        let row = |name: &str| Row {
            name: name.into(),
            kind: "fff-deep".into(),
            budget: 0.1,
            student: "s".into(),
            neurons_per_token: 155,
            ffn_macs_per_token: 1,
            ffn_parameters: 1,
            sts: 85.0,
            probe: 77.0,
            cosine_mean: None,
            cosine_p5: None,
            hours: None,
            seed: 0,
            repeats: None,
        };
        let mut speed = BTreeMap::new();
        speed.insert(
            "original".to_string(),
            json!({"1x128": 1000.0, "1x128 quartiles": [900.0, 1100.0]}),
        );
        // A file from before the quartiles were kept still gives its ratio.
        speed.insert("fff-31x4".to_string(), json!({"1x128": 1500.0}));
        speed.insert(
            "ort-int8 (original)".to_string(),
            json!({"1x128": 2000.0, "1x128 quartiles": [1800.0, 2300.0]}),
        );
        let shapes = [Shape { batch: 1, seq: 128 }];
        let t = markdown(
            &[row("original"), row("fff-31x4")],
            &speed,
            &BTreeMap::new(),
            &shapes,
            false,
        );
        assert!(t.contains("| 1000 (1.00x, 0.90–1.10) |"), "{t}");
        assert!(t.contains("| 1500 (1.50x) |"), "{t}");
        assert!(t.contains("| 2000 (2.00x, 1.80–2.30) |"), "{t}");
    }

    #[test]
    fn hybrid_rows_split_the_budget_between_trees_and_a_dense_branch() {
        let a = args(&["--budgets", "0.1", "--kinds", "fff-hybrid,fff-deep"]);
        let rows = grid(&a, 1536).unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["fff-15x4+77", "fff-31x4"]);
        assert_eq!(rows[0].student.branch(), 77);
        let a = args(&[
            "--budgets",
            "0.1",
            "--kinds",
            "fff-hybrid",
            "--branch-share",
            "0.25",
        ]);
        assert_eq!(grid(&a, 1536).unwrap()[0].name, "fff-23x4+38");
    }

    #[test]
    fn ablating_a_row_outside_the_grid_is_refused_with_the_grids_rows() {
        let a = args(&[
            "--budgets",
            "0.1",
            "--kinds",
            "removed,fff-deep",
            "--ablate",
            "removed",
        ]);
        let e = grid(&a, 1536).err().expect("refused").to_string();
        assert!(e.contains("--ablate") && e.contains("fff-31x4"), "{e}");
        let a = args(&[
            "--budgets",
            "0.1",
            "--kinds",
            "dense",
            "--ablate",
            "fff-31x4",
        ]);
        let e = grid(&a, 1536).err().expect("refused").to_string();
        assert!(e.contains("dense-154"), "{e}");
    }
}
