//! The compression job: load the teacher, start the student, run the distillation stages on the
//! streamed text with checkpoints, write the model folder.
//!
//! The teacher and the student both run on the inference engine (the student's FFF layers share
//! their variables with the trained ones), so the only backward pass is the FFF's own, on the
//! O(depth) training op. A checkpoint holds the student, the optimizer and the position in the
//! text; every random choice is a function of the seed and that position, so a run resumed
//! from any checkpoint computes what the uninterrupted run computes.

use crate::corpus::{self, Corpus, Cursor, Stream, TextFile};
use crate::init::{self, Sample};
use crate::joint::Trunk;
use crate::recipe::{Recipe, Stage, Start, Tune};
use crate::shape::Student;
use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use fastfeedforward::{ConditionalLayer, Fff, FffConfig, Init, TrainStep};
use fff_bert::convert::{ffn_as_forest, write_with_dense, write_with_fff, WrittenLayer};
use fff_bert::tokenizer::Encoding;
use fff_bert::{
    BertTokenizer, FffBlocks, HfBertConfig, Model, ModelConfig, Pipeline, PoolingConfig, Weights,
};
use fff_train::optim::{Optimizer, OptimizerKind};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Version of the checkpoint layout.
const STATE_FORMAT: u32 = 2;

/// What a compression reads and writes.
#[derive(Clone, Debug)]
pub struct Job {
    /// The teacher's model folder.
    pub model: PathBuf,
    /// Text files to distil on.
    pub texts: Vec<PathBuf>,
    /// The model folder to write.
    pub out: PathBuf,
    /// Where checkpoints live while the job runs (removed when it finishes).
    pub work: PathBuf,
    /// The settings.
    pub recipe: Recipe,
    /// Seconds between checkpoints (one is also written at every stage's end and on a stop).
    pub checkpoint_seconds: f64,
}

/// How far a stage has come.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The stage.
    pub stage: Stage,
    /// Tokens read so far in the stage.
    pub tokens: u64,
    /// Tokens the stage reads.
    pub total: u64,
    /// Tokens per second over the last chunk.
    pub tokens_per_second: f64,
    /// The last chunk's loss: squared error over target power, averaged over layers.
    pub loss: f64,
}

/// Agreement of the student's sentence embeddings with the teacher's on the held-out text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// The stage it was measured in (`init` before training).
    pub stage: String,
    /// Tokens the stage had read.
    pub tokens: u64,
    /// Mean cosine.
    pub cosine_mean: f64,
    /// 5th percentile of the cosine.
    pub cosine_p5: f64,
    /// Smallest cosine.
    pub cosine_min: f64,
}

/// What a running job reports.
pub trait Observer {
    /// A line of news (loading, resuming, writing).
    fn message(&mut self, _text: &str) {}
    /// A stage begins (or resumes at `tokens`).
    fn stage_started(&mut self, _stage: Stage, _tokens: u64, _total: u64) {}
    /// A chunk of text was trained on.
    fn progress(&mut self, _p: &Progress) {}
    /// An agreement measurement.
    fn agreement(&mut self, _a: &Agreement) {}
    /// A stage ended.
    fn stage_finished(&mut self, _stage: Stage) {}
}

/// An observer that reports nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// How a job ended.
#[derive(Debug)]
pub enum Outcome {
    /// The model folder is written; its report.
    Finished(Box<Report>),
    /// Stopped on request after writing a checkpoint; running the job again resumes it.
    Stopped {
        /// The stage it stopped in.
        stage: Stage,
        /// Tokens that stage had read.
        tokens: u64,
    },
}

/// The figures of a finished compression, written beside the model as `compression.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// The teacher's folder.
    pub teacher: PathBuf,
    /// The teacher's files' digests (absent in reports written before they were recorded).
    #[serde(default)]
    pub teacher_digest: Option<ModelDigest>,
    /// The settings.
    pub recipe: Recipe,
    /// The student, in words.
    pub student: String,
    /// Neurons evaluated per token and layer: teacher's, student's.
    pub neurons_per_token: (usize, usize),
    /// The student's FFN multiply-adds per token as a fraction of the teacher's.
    pub ffn_budget: f64,
    /// FFN parameters over all layers: teacher's, student's.
    pub ffn_parameters: (usize, usize),
    /// Seconds spent in each stage, and in the initialisation.
    pub seconds: BTreeSeconds,
    /// Every agreement measurement, in order.
    pub agreement: Vec<Agreement>,
    /// The text files.
    pub texts: Vec<TextFile>,
    /// Largest difference between the written model's held-out embeddings and the trained
    /// student's (the folder holds what was trained).
    pub written_gap: f32,
}

/// Seconds per phase.
pub type BTreeSeconds = std::collections::BTreeMap<String, f64>;

/// SHA-256 of the teacher's files, so a resumed run distils the same teacher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDigest {
    /// Of `config.json`.
    pub config_sha256: String,
    /// Of the weights file.
    pub weights_sha256: String,
}

/// The checkpoint's `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    format: u32,
    teacher: ModelDigest,
    texts: Vec<TextFile>,
    recipe: Recipe,
    /// Index into [`Stage::ALL`] of the stage running; `Stage::ALL.len()` when all are done.
    stage: usize,
    /// Tokens read in the current stage.
    tokens: u64,
    /// Chunks read in the current stage (seeds each chunk's shuffle).
    chunks: u64,
    cursor: Cursor,
    optimizer_step: u64,
    agreement: Vec<Agreement>,
    seconds: BTreeSeconds,
}

/// One layer's student: the FFF, the dense branch beside it (depth-0 trees) where the shape
/// has one, and the bias added to their output.
pub(crate) struct Layer {
    pub(crate) fff: Fff,
    pub(crate) branch: Option<Fff>,
    pub(crate) bias: Var,
}

impl Layer {
    fn vars(&self) -> Vec<Var> {
        let mut v = self.fff.vars();
        if let Some(b) = &self.branch {
            v.extend(b.vars());
        }
        v.push(self.bias.clone());
        v
    }

    /// The layer's output on `x` `[rows, hidden]` on the O(depth) training op: the FFF, the
    /// branch and the bias.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let train = |f: &Fff| {
            fastfeedforward::train_op::forward(f.config(), x, f.w_in(), f.b_in(), f.w_out_t())
        };
        let mut y = train(&self.fff)?;
        if let Some(b) = &self.branch {
            y = (y + train(b)?)?;
        }
        y.broadcast_add(self.bias.as_tensor())
    }

    /// The layer's output on `x` for one step of the layer-wise and chained stages: the FFF
    /// routed as `step` says (softly over its top levels, or hard with a load-balancing loss
    /// added to the step's auxiliary loss), the branch and the bias.
    fn forward_step(&self, x: &Tensor, step: &mut TrainStep) -> Result<Tensor> {
        let mut y = self.fff.forward_step(x, step)?;
        if let Some(b) = &self.branch {
            y = (y + b.forward_train(x)?)?;
        }
        Ok(y.broadcast_add(self.bias.as_tensor())?)
    }

    fn bias(&self) -> Result<Vec<f32>> {
        Ok(self.bias.as_tensor().to_vec1::<f32>()?)
    }
}

/// Runs (or resumes) `job`, stopping with a checkpoint when `stop` is set.
pub fn run(job: &Job, observer: &mut dyn Observer, stop: &AtomicBool) -> Result<Outcome> {
    job.recipe.validate()?;
    let teacher = Pipeline::load(&job.model)
        .with_context(|| format!("{}: cannot load the model", job.model.display()))?;
    let (c, weights) = bert_config(&job.model)?;
    for i in 0..c.layers {
        ensure!(
            teacher.model.fff_layer(i).is_none(),
            "{}: layer {i} is already an FFF; compress the original model",
            job.model.display()
        );
    }
    let r = &job.recipe;
    r.student.validate(c.hidden, c.intermediate)?;
    let teacher_act = c.act.as_activation();
    // Each layer's FFN as one depth-0 tree per neuron: the neurons a student starts from.
    let ffns = (0..c.layers)
        .map(|i| ffn_as_forest(&c, &weights, i, teacher_act))
        .collect::<fff_bert::Result<Vec<_>>>()?;
    let config = r.student.fff_config(c.hidden, teacher_act);
    let branch = r.student.branch_config(c.hidden, teacher_act);

    observer.message(&r.describe_stages());
    observer.message("reading the text");
    let corpus = corpus::read(&job.texts, r.holdout)?;
    let max_len = r.max_tokens.min(teacher.tokenizer.max_len);
    let tokenizer =
        BertTokenizer::from_hf_dir(&job.model, max_len, teacher.embedding.do_lower_case)?;
    let digest = model_digest(&job.model)?;

    let mut student = Pipeline::load(&job.model)?;
    let prefix = fff_bert::convert::encoder_prefix_of(&weights)?;
    let trunk = Trunk::load(&c, &weights, &prefix, r.joint_tune)?;
    let checkpoint = job.work.join("checkpoint");
    let (mut state, layers, moments) = if checkpoint.join("state.json").exists() {
        let state = load_state(&checkpoint)?;
        if state.teacher != digest {
            bail!(
                "{}: this checkpoint distils another teacher (its config or weights differ from \
                 {}); use another --work folder or delete it",
                checkpoint.display(),
                job.model.display()
            );
        }
        if state
            .texts
            .iter()
            .map(|t| (&t.bytes, &t.sha256))
            .ne(corpus.files.iter().map(|t| (&t.bytes, &t.sha256)))
        {
            bail!(
                "{}: this checkpoint was trained on other text files; give the same --text files \
                 or use another --work folder",
                checkpoint.display()
            );
        }
        if let Some((field, ours, theirs)) = state.recipe.difference(r) {
            bail!(
                "{}: the checkpoint's `{field}` is {ours} but this run asks for {theirs}; resume \
                 with the checkpoint's settings, or use another --work folder to start afresh",
                checkpoint.display()
            );
        }
        let (layers, moments) = load_tensors(&checkpoint, config, branch, c.layers)?;
        trunk.set(&load_trunk(&checkpoint)?)?;
        observer.message(&format!(
            "resuming from {}: stage {}, {} tokens",
            checkpoint.display(),
            Stage::ALL.get(state.stage).map_or("done", |s| s.name()),
            state.tokens
        ));
        (state, layers, moments)
    } else {
        if job.out.exists() && std::fs::read_dir(&job.out).is_ok_and(|mut d| d.next().is_some()) {
            bail!(
                "{}: the output folder exists and is not empty; choose another --out",
                job.out.display()
            );
        }
        let started = Instant::now();
        observer.message(&format!(
            "initialising {} from the {} on {} tokens",
            r.student.describe(),
            match r.start {
                Start::Teacher => "teacher's neurons",
                Start::Random => "library's random init, bias",
            },
            r.init_tokens
        ));
        let layers = initialise(&teacher, &tokenizer, &corpus, &ffns, (config, branch), r)?;
        let mut seconds = BTreeSeconds::new();
        seconds.insert("init".into(), started.elapsed().as_secs_f64());
        let state = State {
            format: STATE_FORMAT,
            teacher: digest,
            texts: corpus.files.clone(),
            recipe: r.clone(),
            stage: 0,
            tokens: 0,
            chunks: 0,
            cursor: Cursor::default(),
            optimizer_step: 0,
            agreement: Vec::new(),
            seconds,
        };
        (state, layers, None)
    };
    sync_student(&mut student, &c, &weights, &trunk, &layers)?;

    let pooling = teacher.pooling(None, None);
    let held = teacher.embed(&corpus.holdout, &pooling, 64)?;
    let holdout = Holdout {
        texts: &corpus.holdout,
        held: held.into_iter().map(|o| o.value).collect(),
        pooling: pooling.clone(),
    };
    if state.agreement.is_empty() && !corpus.holdout.is_empty() {
        holdout.measure(&student, "init", &mut state, observer)?;
        save_checkpoint(&checkpoint, &state, &layers, &trunk, None)?;
    }

    let vars: Vec<Var> = layers.iter().flat_map(|l| l.vars()).collect();
    let mut moments = moments;
    let mut stream = Stream::new(corpus.train.len(), r.seed, state.cursor);
    let mut last_save = Instant::now();
    while let Some(&stage) = Stage::ALL.get(state.stage) {
        let total = r.tokens(stage);
        let mut opt = StageOptimizers::new(stage, vars.clone(), &trunk, r);
        if let Some(m) = moments.take() {
            opt.set_state(m, state.optimizer_step)?;
        }
        observer.stage_started(stage, state.tokens, total);
        while state.tokens < total {
            if stop.load(Ordering::SeqCst) {
                save_with_optimizer(&checkpoint, &mut state, &layers, &trunk, &opt, &stream)?;
                return Ok(Outcome::Stopped {
                    stage,
                    tokens: state.tokens,
                });
            }
            let started = Instant::now();
            let encs = next_chunk(&mut stream, &corpus, &tokenizer, r.chunk_tokens)?;
            let packed = BertTokenizer::pack(&encs);
            let n = packed.ids.len();
            let seed = r.seed ^ (state.stage as u64) << 56 ^ state.chunks;
            let before = state.tokens;
            let fraction = |rows: usize| (before + rows as u64) as f64 / total as f64;
            let loss = match stage {
                Stage::Layerwise | Stage::Chained => {
                    let (xt, yt) = taps(&teacher, &packed, c.layers, true)?;
                    let (inputs, targets) = if stage == Stage::Layerwise {
                        (xt, yt)
                    } else {
                        let (xs, _) = taps(&student, &packed, c.layers, false)?;
                        let targets = xt
                            .iter()
                            .zip(&yt)
                            .zip(&xs)
                            .map(|((xt, yt), xs)| {
                                xt.iter()
                                    .zip(yt)
                                    .zip(xs)
                                    .map(|((a, b), s)| a + b - s)
                                    .collect()
                            })
                            .collect();
                        (xs, targets)
                    };
                    train_chunk(
                        &layers,
                        &mut opt.student,
                        &inputs,
                        &targets,
                        c.hidden,
                        r,
                        seed,
                        fraction,
                    )?
                }
                Stage::Joint => joint_chunk(
                    &trunk, &teacher, &packed, &layers, &mut opt, c.hidden, r, fraction,
                )?,
            };
            for (i, l) in layers.iter().enumerate() {
                student.model.set_fff_out_bias(i, &l.bias()?)?;
            }
            state.tokens += n as u64;
            state.chunks += 1;
            let secs = started.elapsed().as_secs_f64();
            *state.seconds.entry(stage.name().into()).or_default() += secs;
            observer.progress(&Progress {
                stage,
                tokens: state.tokens,
                total,
                tokens_per_second: n as f64 / secs.max(1e-9),
                loss,
            });
            let crossed = before / r.eval_every != state.tokens / r.eval_every;
            if crossed && state.tokens < total {
                sync_student(&mut student, &c, &weights, &trunk, &layers)?;
                holdout.measure(&student, stage.name(), &mut state, observer)?;
            }
            if last_save.elapsed().as_secs_f64() >= job.checkpoint_seconds {
                save_with_optimizer(&checkpoint, &mut state, &layers, &trunk, &opt, &stream)?;
                last_save = Instant::now();
            }
        }
        if total > 0 {
            sync_student(&mut student, &c, &weights, &trunk, &layers)?;
            holdout.measure(&student, stage.name(), &mut state, observer)?;
        }
        observer.stage_finished(stage);
        state.stage += 1;
        state.tokens = 0;
        state.chunks = 0;
        state.optimizer_step = 0;
        state.cursor = stream.cursor;
        save_checkpoint(&checkpoint, &state, &layers, &trunk, None)?;
        last_save = Instant::now();
    }

    sync_student(&mut student, &c, &weights, &trunk, &layers)?;
    let retuned = trunk.tensors();
    observer.message(&format!("writing {}", job.out.display()));
    let biases: Vec<Vec<f32>> = layers.iter().map(|l| l.bias()).collect::<Result<_>>()?;
    let written: Vec<WrittenLayer<'_>> = layers
        .iter()
        .zip(&biases)
        .enumerate()
        .map(|(i, (l, b))| WrittenLayer {
            index: i,
            fff: &l.fff,
            branch: l.branch.as_ref(),
            out_bias: b.as_slice(),
        })
        .collect();
    match r.student {
        Student::Dense { .. } => write_with_dense(&job.model, &job.out, &written, &retuned)?,
        Student::Fff {
            trees,
            depth,
            activation,
            branch,
        } => {
            let spec = FffBlocks {
                trees,
                depth,
                activation,
                layers: (0..c.layers).collect(),
                dense_branch: branch,
            };
            write_with_fff(&job.model, &job.out, &spec, &written, &retuned)?
        }
    }
    // The folder must hold what was trained: its embeddings against the student's in memory.
    let reloaded = Pipeline::load(&job.out)?;
    let check: Vec<String> = corpus
        .holdout
        .iter()
        .chain(&corpus.train)
        .take(64)
        .cloned()
        .collect();
    let a = student.embed(&check, &pooling, 64)?;
    let b = reloaded.embed(&check, &pooling, 64)?;
    let written_gap = a
        .iter()
        .zip(&b)
        .flat_map(|(x, y)| x.value.iter().zip(&y.value).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max);
    ensure!(
        written_gap < 1e-4,
        "{}: the written model's embeddings differ from the trained student's by {written_gap}",
        job.out.display()
    );
    let report = Report {
        teacher: job.model.clone(),
        teacher_digest: Some(state.teacher.clone()),
        recipe: r.clone(),
        student: r.student.describe(),
        neurons_per_token: (c.intermediate, r.student.neurons_per_token()),
        ffn_budget: r.student.neurons_per_token() as f64 / c.intermediate as f64,
        ffn_parameters: (
            c.layers * (2 * c.hidden * c.intermediate + c.intermediate),
            c.layers * r.student.parameters(c.hidden),
        ),
        seconds: state.seconds.clone(),
        agreement: state.agreement.clone(),
        texts: corpus.files.clone(),
        written_gap,
    };
    let json = serde_json::to_string_pretty(&report)?;
    fff_util::fs::write_atomic(&job.out.join("compression.json"), json.as_bytes())?;
    std::fs::remove_dir_all(&job.work).with_context(|| {
        format!(
            "{}: cannot remove the finished job's checkpoints",
            job.work.display()
        )
    })?;
    Ok(Outcome::Finished(Box::new(report)))
}

/// The Hugging Face BERT config of `dir` and its weights; other families are refused.
fn bert_config(dir: &Path) -> Result<(HfBertConfig, Weights)> {
    let c = match ModelConfig::from_file(&dir.join("config.json"))? {
        ModelConfig::Bert(c) => c,
        ModelConfig::Crammed(_) => bail!(
            "{}: a crammedBERT / UltraFastBERT checkpoint; compression takes Hugging Face BERT \
             models (config.json with model_type \"bert\")",
            dir.display()
        ),
    };
    ensure!(
        c.fff.is_none(),
        "{}: its FFNs are already FFF layers (config.json has an `fff` key); compress the \
         original model",
        dir.display()
    );
    Ok((c, Weights::from_dir(dir)?))
}

/// SHA-256 of the model folder's config and weights.
pub fn model_digest(dir: &Path) -> Result<ModelDigest> {
    // Streamed: a model's weights need not be held twice to be hashed.
    let hash = |p: &Path| -> Result<String> { Ok(fff_train::checkpoint::digest(p)?.sha256) };
    let weights = ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow!(
                "{}: no model.safetensors or pytorch_model.bin",
                dir.display()
            )
        })?;
    Ok(ModelDigest {
        config_sha256: hash(&dir.join("config.json"))?,
        weights_sha256: hash(&weights)?,
    })
}

/// The next passages of the stream, tokenized, until they hold at least `tokens` tokens.
fn next_chunk(
    stream: &mut Stream,
    corpus: &Corpus,
    tokenizer: &BertTokenizer,
    tokens: usize,
) -> Result<Vec<Encoding>> {
    let mut out = Vec::new();
    let mut n = 0;
    while n < tokens {
        let e = tokenizer.encode_text(&corpus.train[stream.next_index()])?;
        n += e.ids.len();
        out.push(e);
    }
    Ok(out)
}

/// Each layer's FFN inputs and (when `outputs`) outputs on `packed`, `[tokens, hidden]` each.
fn taps(
    p: &Pipeline,
    packed: &fff_bert::Packed,
    layers: usize,
    outputs: bool,
) -> Result<(PerLayer, PerLayer)> {
    let mut xs = vec![Vec::new(); layers];
    let mut ys = vec![Vec::new(); if outputs { layers } else { 0 }];
    p.model.encode_packed_with(packed, |name, states| {
        if let Some(i) = name
            .strip_prefix("ffn_input")
            .and_then(|i| i.parse::<usize>().ok())
        {
            xs[i] = states.to_vec();
        } else if let Some(i) = name
            .strip_prefix("ffn_output")
            .and_then(|i| i.parse::<usize>().ok())
        {
            if outputs {
                ys[i] = states.to_vec();
            }
        }
        Ok(())
    })?;
    Ok((xs, ys))
}

/// Starts every layer's student, from a sample of the text drawn apart from the training order.
fn initialise(
    teacher: &Pipeline,
    tokenizer: &BertTokenizer,
    corpus: &Corpus,
    ffns: &[Fff],
    (config, branch): (FffConfig, Option<FffConfig>),
    r: &Recipe,
) -> Result<Vec<Layer>> {
    let mut stream = Stream::new(corpus.train.len(), r.seed ^ 0x1417_5EED, Cursor::default());
    let encs = next_chunk(&mut stream, corpus, tokenizer, r.init_tokens)?;
    let (xs, ys) = taps(teacher, &BertTokenizer::pack(&encs), ffns.len(), true)?;
    let mut layers = Vec::with_capacity(ffns.len());
    for (i, (teacher_fff, (x, y))) in ffns.iter().zip(xs.iter().zip(&ys)).enumerate() {
        let sample = Sample { x, y };
        let (fff, branch, bias) = match (r.start, branch) {
            (Start::Teacher, None) => {
                let (fff, bias) = init::from_teacher(teacher_fff, &sample, config)?;
                (fff, None, bias)
            }
            (Start::Teacher, Some(b)) => {
                let (fff, branch, bias) =
                    init::hybrid_from_teacher(teacher_fff, &sample, config, b)?;
                (fff, Some(branch), bias)
            }
            (Start::Random, _) => init::random(
                config,
                branch,
                Init::Hyperspherical,
                r.seed + i as u64,
                &sample,
            )?,
        };
        let n = bias.len();
        layers.push(Layer {
            fff,
            branch,
            bias: Var::from_vec(bias, n, &Device::Cpu)?,
        });
    }
    Ok(layers)
}

/// Trains every layer on one chunk's rows, shuffled by `seed`, in steps of `step_rows`; the
/// learning rate follows the recipe's schedule at `fraction(rows done)`. Returns the mean loss.
#[allow(clippy::too_many_arguments)]
fn train_chunk(
    layers: &[Layer],
    opt: &mut Optimizer,
    inputs: &[Vec<f32>],
    targets: &[Vec<f32>],
    hidden: usize,
    r: &Recipe,
    seed: u64,
    fraction: impl Fn(usize) -> f64,
) -> Result<f64> {
    let rows = inputs[0].len() / hidden;
    let mut order: Vec<usize> = (0..rows).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    // Each layer's loss is relative to its target's power, so layers weigh alike.
    let power: Vec<f64> = targets
        .iter()
        .map(|t| (t.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / t.len() as f64).max(1e-12))
        .collect();
    let gather = |src: &[f32], idx: &[usize]| -> Result<Tensor> {
        let mut v = Vec::with_capacity(idx.len() * hidden);
        for &i in idx {
            v.extend_from_slice(&src[i * hidden..(i + 1) * hidden]);
        }
        Ok(Tensor::from_vec(v, (idx.len(), hidden), &Device::Cpu)?)
    };
    let (mut loss_sum, mut steps, mut done) = (0f64, 0usize, 0usize);
    for idx in order.chunks(r.step_rows) {
        let mut total: Option<Tensor> = None;
        for (i, l) in layers.iter().enumerate() {
            let x = gather(&inputs[i], idx)?;
            let t = gather(&targets[i], idx)?;
            let mut step = TrainStep::default()
                .with_soft_routing(r.soft_routing_at(fraction(done)))
                .with_load_balance(r.load_balance);
            let y = l.forward_step(&x, &mut step)?;
            let mut loss = (y - t)?.sqr()?.mean_all()?.affine(1.0 / power[i], 0.0)?;
            if let Some(aux) = step.into_loss() {
                loss = (loss + aux)?;
            }
            total = Some(match total {
                None => loss,
                Some(s) => (s + loss)?,
            });
        }
        let total = total.expect("at least one layer");
        let grads = total.backward()?;
        done += idx.len();
        opt.set_learning_rate(r.learning_rate_at(Stage::Layerwise, fraction(done)));
        opt.step(&grads, 1.0)?;
        loss_sum += total.to_scalar::<f32>()? as f64 / layers.len() as f64;
        steps += 1;
    }
    Ok(loss_sum / steps.max(1) as f64)
}

/// Trains every layer jointly on one chunk: its passages, longest first, in steps of at most
/// `joint_step_tokens` padded tokens; returns the mean loss.
#[allow(clippy::too_many_arguments)]
fn joint_chunk(
    trunk: &Trunk,
    teacher: &Pipeline,
    packed: &fff_bert::Packed,
    layers: &[Layer],
    opt: &mut StageOptimizers,
    hidden: usize,
    r: &Recipe,
    fraction: impl Fn(usize) -> f64,
) -> Result<f64> {
    let mut embedded = Vec::new();
    let out = teacher.model.encode_packed_with(packed, |name, states| {
        if name == "embedding" {
            embedded = states.to_vec();
        }
        Ok(())
    })?;
    let target = out.hidden.flatten_all()?.to_vec1::<f32>()?;
    let offsets = &out.offsets;
    let len = |i: usize| offsets[i + 1] - offsets[i];
    let mut order: Vec<usize> = (0..offsets.len() - 1).collect();
    // Longest first (stable), so each step pads little.
    order.sort_by_key(|&i| std::cmp::Reverse(len(i)));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match groups.last_mut() {
            Some(g) if (g.len() + 1) * len(g[0]) <= r.joint_step_tokens => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    let (mut sum, mut done) = (0f64, 0usize);
    for g in &groups {
        let (x0, mask) = crate::joint::pad(&embedded, hidden, offsets, g)?;
        let (t, _) = crate::joint::pad(&target, hidden, offsets, g)?;
        let h = trunk.forward(&x0, &mask, layers)?;
        let loss = crate::joint::loss(&h, &t, &mask)?;
        let grads = loss.backward()?;
        done += g.iter().map(|&i| len(i)).sum::<usize>();
        opt.step(&grads, r, Stage::Joint, fraction(done))?;
        sum += loss.to_scalar::<f32>()? as f64;
    }
    Ok(sum / groups.len().max(1) as f64)
}

/// The held-out passages, the teacher's embeddings of them and the pooling that made them.
struct Holdout<'a> {
    texts: &'a [String],
    held: Vec<Vec<f32>>,
    pooling: PoolingConfig,
}

impl Holdout<'_> {
    /// Measures the student's agreement (when there is held-out text) at the end of `stage`'s
    /// tokens so far, reports and records it.
    fn measure(
        &self,
        student: &Pipeline,
        stage: &str,
        state: &mut State,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        if self.texts.is_empty() {
            return Ok(());
        }
        let a = agreement(
            student,
            self.texts,
            &self.held,
            &self.pooling,
            stage,
            state.tokens,
        )?;
        observer.agreement(&a);
        state.agreement.push(a);
        Ok(())
    }
}

/// Cosines between the student's and the teacher's (`held`) embeddings of `texts`.
fn agreement(
    student: &Pipeline,
    texts: &[String],
    held: &[Vec<f32>],
    pooling: &PoolingConfig,
    stage: &str,
    tokens: u64,
) -> Result<Agreement> {
    let got = student.embed(texts, pooling, 64)?;
    let mut cos: Vec<f64> = got
        .iter()
        .zip(held)
        .map(|(a, b)| fff_bert::evaluate::cosine(&a.value, b))
        .collect();
    cos.sort_by(f64::total_cmp);
    let n = cos.len();
    Ok(Agreement {
        stage: stage.to_string(),
        tokens,
        cosine_mean: cos.iter().sum::<f64>() / n as f64,
        cosine_p5: cos[(n as f64 * 0.05) as usize],
        cosine_min: cos[0],
    })
}

fn save_with_optimizer(
    dir: &Path,
    state: &mut State,
    layers: &[Layer],
    trunk: &Trunk,
    opt: &StageOptimizers,
    stream: &Stream,
) -> Result<()> {
    state.cursor = stream.cursor;
    state.optimizer_step = opt.student.step_count();
    let (first, second) = opt.moments();
    save_checkpoint(dir, state, layers, trunk, Some((&first, &second)))
}

/// A stage's optimizers: AdamW over the students at the stage's learning rate and, in the
/// joint stage where the recipe tunes the trunk, AdamW over its tuned tensors at the trunk's
/// (pretrained tensors move less than students distilled from scratch).
struct StageOptimizers {
    student: Optimizer,
    trunk: Option<Optimizer>,
}

impl StageOptimizers {
    fn new(stage: Stage, students: Vec<Var>, trunk: &Trunk, r: &Recipe) -> StageOptimizers {
        let adamw = |vars, lr| Optimizer::new(vars, OptimizerKind::default(), lr, 0.0);
        let tuned = trunk.vars();
        StageOptimizers {
            student: adamw(students, r.learning_rate),
            trunk: (stage == Stage::Joint && !tuned.is_empty())
                .then(|| adamw(tuned, r.trunk_learning_rate)),
        }
    }

    /// The moments of every variable, the students' first (a checkpoint's order).
    fn moments(&self) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for o in std::iter::once(&self.student).chain(&self.trunk) {
            let (f, s, _) = o.state();
            first.extend_from_slice(f);
            second.extend_from_slice(s);
        }
        (first, second)
    }

    /// Restores a checkpoint's moments (in [`StageOptimizers::moments`]'s order) at `step`.
    fn set_state(
        &mut self,
        (mut first, mut second): (Vec<Vec<f32>>, Vec<Vec<f32>>),
        step: u64,
    ) -> Result<()> {
        let students = self.student.state().0.len();
        ensure!(
            first.len() >= students && second.len() >= students,
            "the checkpoint's optimizer holds {} moments, the students have {students} tensors",
            first.len()
        );
        let (trunk_first, trunk_second) = (first.split_off(students), second.split_off(students));
        self.student.set_state(first, second, step)?;
        match &mut self.trunk {
            Some(t) => t.set_state(trunk_first, trunk_second, step)?,
            None => ensure!(
                trunk_first.is_empty(),
                "the checkpoint's optimizer holds moments of {} tensors beyond the students'",
                trunk_first.len()
            ),
        }
        Ok(())
    }

    /// One step of every optimizer at the learning rates of `stage` after `fraction` of it.
    fn step(&mut self, grads: &GradStore, r: &Recipe, stage: Stage, fraction: f64) -> Result<()> {
        self.student
            .set_learning_rate(r.learning_rate_at(stage, fraction));
        self.student.step(grads, 1.0)?;
        if let Some(t) = &mut self.trunk {
            t.set_learning_rate(r.trunk_learning_rate_at(fraction));
            t.step(grads, 1.0)?;
        }
        Ok(())
    }
}

/// Writes the checkpoint folder whole under a temporary name, then swaps it into place.
fn save_checkpoint(
    dir: &Path,
    state: &State,
    layers: &[Layer],
    trunk: &Trunk,
    moments: MomentsRef<'_>,
) -> Result<()> {
    let tmp = fff_util::fs::temporary_path(dir);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (i, l) in layers.iter().enumerate() {
        tensors.insert(format!("{i}.w_in"), l.fff.w_in().clone());
        tensors.insert(format!("{i}.b_in"), l.fff.b_in().clone());
        tensors.insert(format!("{i}.w_out_t"), l.fff.w_out_t().clone());
        tensors.insert(format!("{i}.bias"), l.bias.as_tensor().clone());
        if let Some(b) = &l.branch {
            tensors.insert(format!("{i}.branch.w_in"), b.w_in().clone());
            tensors.insert(format!("{i}.branch.b_in"), b.b_in().clone());
            tensors.insert(format!("{i}.branch.w_out_t"), b.w_out_t().clone());
        }
    }
    candle_core::safetensors::save(&tensors, tmp.join("student.safetensors"))?;
    let tuned = trunk.tensors();
    if !tuned.is_empty() {
        candle_core::safetensors::save(&tuned, tmp.join(TRUNK_FILE))?;
    }
    if let Some((first, second)) = moments {
        let mut m: HashMap<String, Tensor> = HashMap::new();
        for (k, v) in first.iter().enumerate() {
            m.insert(
                format!("first.{k}"),
                Tensor::from_slice(v, v.len(), &Device::Cpu)?,
            );
        }
        for (k, v) in second.iter().enumerate() {
            m.insert(
                format!("second.{k}"),
                Tensor::from_slice(v, v.len(), &Device::Cpu)?,
            );
        }
        candle_core::safetensors::save(&m, tmp.join("optimizer.safetensors"))?;
    }
    std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)?;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    fff_util::fs::replace_dir(&tmp, dir)?;
    Ok(())
}

/// Per-variable AdamW moments (first, second), when a checkpoint holds them.
type Moments = Option<(Vec<Vec<f32>>, Vec<Vec<f32>>)>;

/// One `[tokens, hidden]` buffer per layer.
type PerLayer = Vec<Vec<f32>>;

/// Borrowed AdamW moments (first, second).
type MomentsRef<'a> = Option<(&'a [Vec<f32>], &'a [Vec<f32>])>;

/// The checkpoint's file of the trunk's tuned tensors, under their names in the model.
const TRUNK_FILE: &str = "trunk.safetensors";

/// A checkpoint's tuned trunk tensors (none when the recipe tunes none).
fn load_trunk(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let path = dir.join(TRUNK_FILE);
    if !path.exists() {
        return Ok(HashMap::new());
    }
    candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("cannot read {}", path.display()))
}

/// Makes the engine's `student` what the job trains: every layer's FFN block, and the trunk's
/// tuned tensors where the recipe tunes any (the model is rebuilt from the original's weights
/// with them).
fn sync_student(
    student: &mut Pipeline,
    c: &HfBertConfig,
    weights: &Weights,
    trunk: &Trunk,
    layers: &[Layer],
) -> Result<()> {
    let tuned = trunk.tensors();
    if !tuned.is_empty() {
        let w = weights.clone().with_replaced(tuned)?;
        student.model = Model::from_weights(&ModelConfig::Bert(c.clone()), &w)?;
    }
    for (i, l) in layers.iter().enumerate() {
        student
            .model
            .set_ffn_fff(i, l.fff.clone(), l.branch.clone(), l.bias()?)?;
    }
    Ok(())
}

/// A checkpoint's `state.json`.
fn load_state(dir: &Path) -> Result<State> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let state: State = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a compression checkpoint", path.display()))?;
    ensure!(
        state.format == STATE_FORMAT,
        "{}: checkpoint format {} (this version reads {STATE_FORMAT})",
        path.display(),
        state.format
    );
    Ok(state)
}

/// A checkpoint's students (each `config` with a dense branch of `branch`, `count` layers)
/// and optimizer moments.
fn load_tensors(
    dir: &Path,
    config: FffConfig,
    branch: Option<FffConfig>,
    count: usize,
) -> Result<(Vec<Layer>, Moments)> {
    let student = dir.join("student.safetensors");
    let t = candle_core::safetensors::load(&student, &Device::Cpu)
        .with_context(|| format!("cannot read {}", student.display()))?;
    let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let v = t
            .get(name)
            .ok_or_else(|| anyhow!("{}: no tensor `{name}`", student.display()))?;
        ensure!(
            v.dims() == shape,
            "{}: `{name}` has shape {:?}, expected {shape:?} (a checkpoint of another shape)",
            student.display(),
            v.dims()
        );
        Ok(v.flatten_all()?.to_vec1::<f32>()?)
    };
    let (rows, h) = (config.total_nodes(), config.input_width);
    let mut layers = Vec::with_capacity(count);
    for i in 0..count {
        let fff = Fff::from_node_major(
            config,
            get(&format!("{i}.w_in"), &[rows, h])?,
            get(&format!("{i}.b_in"), &[rows])?,
            get(&format!("{i}.w_out_t"), &[rows, h])?,
        )?;
        let bias = get(&format!("{i}.bias"), &[h])?;
        let branch = match branch {
            None => None,
            Some(b) => {
                let n = b.total_nodes();
                Some(Fff::from_node_major(
                    b,
                    get(&format!("{i}.branch.w_in"), &[n, h])?,
                    get(&format!("{i}.branch.b_in"), &[n])?,
                    get(&format!("{i}.branch.w_out_t"), &[n, h])?,
                )?)
            }
        };
        layers.push(Layer {
            fff,
            branch,
            bias: Var::from_vec(bias, h, &Device::Cpu)?,
        });
    }
    let opt = dir.join("optimizer.safetensors");
    let moments = if opt.exists() {
        let m = candle_core::safetensors::load(&opt, &Device::Cpu)
            .with_context(|| format!("cannot read {}", opt.display()))?;
        // As many as the stage's optimizer holds (the joint stage's include the trunk's);
        // the optimizer checks them against its variables.
        let vars = m.keys().filter(|k| k.starts_with("first.")).count();
        let list = |prefix: &str| -> Result<Vec<Vec<f32>>> {
            (0..vars)
                .map(|k| {
                    let name = format!("{prefix}.{k}");
                    let v = m
                        .get(&name)
                        .ok_or_else(|| anyhow!("{}: no tensor `{name}`", opt.display()))?;
                    Ok(v.to_vec1::<f32>()?)
                })
                .collect()
        };
        Some((list("first")?, list("second")?))
    } else {
        None
    };
    Ok((layers, moments))
}

/// The large buffers a job holds at once, `(what, bytes)`, for a memory check before it starts.
pub fn memory_estimate(model: &Path, texts: &[PathBuf], r: &Recipe) -> Result<Vec<(String, u128)>> {
    let (c, _) = bert_config(model)?;
    let weights: u64 = ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .filter_map(|n| std::fs::metadata(model.join(n)).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    let text: u64 = texts
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let (h, l, inter) = (c.hidden as u128, c.layers as u128, c.intermediate as u128);
    let f = 4u128;
    let nodes = (r
        .student
        .fff_config(c.hidden, c.act.as_activation())
        .total_nodes()
        + r.student.branch()) as u128;
    // gzip text expands; 8x is generous for prose, and each passage is also a String.
    let text_bytes = text as u128
        * if texts
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "gz"))
        {
            8
        } else {
            2
        };
    Ok(vec![
        (
            "teacher, student and their packed weights".into(),
            4 * weights as u128,
        ),
        ("the text, decoded".into(), text_bytes),
        (
            "initialisation sample (pre-activations, importance, taps)".into(),
            r.init_tokens as u128 * (2 * inter + 2 * l * h) * f,
        ),
        (
            "a chunk's FFN inputs and targets (teacher and student)".into(),
            r.chunk_tokens as u128 * h * (5 * l + 4) * f,
        ),
        (
            "students, gradients and AdamW moments".into(),
            l * nodes * (2 * h + 1) * 4 * f,
        ),
        (
            "the trunk's tuned tensors, gradients and AdamW moments".into(),
            l * match r.joint_tune {
                Tune::Ffn => 0,
                Tune::Norms => 4 * h,
                Tune::All => 4 * h * (h + 1) + 4 * h,
            } * 4
                * f,
        ),
    ])
}
