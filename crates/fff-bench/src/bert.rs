//! End-to-end encoder throughput: UltraFastBERT with the FFF kernel, the same model with the
//! dense masked FFF (what the original PyTorch code runs), and a dense crammedBERT of the same
//! shape, all with random weights, timed side by side. Each run splits its time into the
//! feedforward blocks and everything else (embedding, LayerNorms, attention, projections).

use anyhow::{ensure, Result};
use fff_bert::{Batch, BertConfig, FfnMode, IntermedType, Model};
use fff_util::timing::{human_seconds, median};
use serde::Serialize;
use std::time::{Duration, Instant};

/// One encoder to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BertVariant {
    /// FFF blocks on the conditional kernel.
    FffKernel,
    /// FFF blocks as the dense masked reference.
    FffMasked,
    /// Dense FF blocks (crammedBERT).
    Dense,
}

impl BertVariant {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            BertVariant::FffKernel => "UltraFastBERT, FFF kernel",
            BertVariant::FffMasked => "UltraFastBERT, dense masked FFF",
            BertVariant::Dense => "crammedBERT, dense FF",
        }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BertBenchOptions {
    /// Transformer blocks.
    pub layers: usize,
    /// FFF trees and depth of the UltraFastBERT model.
    pub trees: usize,
    /// Tree depth.
    pub depth: usize,
    /// Width of the dense model's FF.
    pub dense_width: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Sequences per batch, one measurement each.
    pub batches: Vec<usize>,
    /// Variants to time.
    pub variants: Vec<BertVariant>,
    /// Timed rounds per batch size (after one warm-up); each round runs every model once,
    /// interleaved, and medians are reported.
    pub reps: usize,
    /// Stop adding rounds after this long per model (once 3 rounds are in).
    pub budget: Duration,
    /// Vocabulary size of the random models.
    pub vocab: usize,
    /// Seed of weights and token ids.
    pub seed: u64,
}

/// One measurement.
#[derive(Clone, Debug, Serialize)]
pub struct BertRecord {
    /// Which encoder.
    pub variant: BertVariant,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Median seconds per batch.
    pub seconds: f64,
    /// Tokens per second.
    pub tokens_per_s: f64,
    /// Median seconds in the feedforward blocks (incl. their residual add), per batch.
    pub ffn_seconds: f64,
    /// Throughput relative to the dense model at the same batch: ratio of the medians.
    pub speedup_vs_dense: Option<f64>,
    /// Smallest and largest per-round ratio (dense time / this time, same round).
    pub speedup_range: Option<(f64, f64)>,
    /// Timed rounds (each runs every model once, interleaved).
    pub rounds: usize,
    /// Largest |difference| of final hidden states from the dense masked FFF model (FFF
    /// variants only): the kernel must compute the same function.
    pub max_abs_diff_vs_masked: Option<f32>,
}

fn model(opts: &BertBenchOptions, variant: BertVariant) -> Result<Model> {
    let intermed = match variant {
        BertVariant::Dense => IntermedType::Dense {
            width: opts.dense_width,
            glu: false,
        },
        _ => IntermedType::Fff {
            trees: opts.trees,
            depth: opts.depth,
        },
    };
    let mut config = BertConfig::base(intermed, opts.vocab);
    config.layers = opts.layers;
    config.max_seq_length = config.max_seq_length.max(opts.seq);
    let mut m = Model::random(config, opts.seed)?;
    if variant == BertVariant::FffMasked {
        m.set_ffn_mode(FfnMode::Masked);
    }
    Ok(m)
}

fn random_batch(batch: usize, seq: usize, vocab: usize, seed: u64) -> Batch {
    // A small LCG is enough for token ids; the weights are what must look real.
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let seqs: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            (0..seq)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    7 + ((s >> 33) as usize % (vocab - 7)) as u32
                })
                .collect()
        })
        .collect();
    Batch::pad(&seqs, 0)
}

/// Times one encode, returning (total, time inside the FFN blocks).
fn timed_encode(m: &Model, batch: &Batch) -> Result<(f64, f64)> {
    let start = Instant::now();
    let mut ffn = 0f64;
    let mut ffn_start = None;
    m.encode_with(batch, |name, _| {
        if name.starts_with("ffn_input") {
            ffn_start = Some(Instant::now());
        } else if name.starts_with("layer") {
            if let Some(s) = ffn_start.take() {
                ffn += s.elapsed().as_secs_f64();
            }
        }
        Ok(())
    })?;
    Ok((start.elapsed().as_secs_f64(), ffn))
}

/// Runs the benchmark; `progress` is called with a line per finished measurement.
pub fn run_bert(
    opts: &BertBenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<Vec<BertRecord>> {
    ensure!(
        opts.reps > 0 && opts.seq > 0 && opts.vocab > 8,
        "reps, seq and vocab must be positive"
    );
    let mut records = Vec::new();
    let masked = if opts.variants.contains(&BertVariant::FffKernel) {
        Some(model(opts, BertVariant::FffMasked)?)
    } else {
        None
    };
    for &batch_size in &opts.batches {
        let batch = random_batch(batch_size, opts.seq, opts.vocab, opts.seed);
        let reference = match &masked {
            Some(m) => Some(m.encode(&batch)?.hidden),
            None => None,
        };
        // Every model is built and checked first, then timed in rounds (one run of each per
        // round), so that a slow spell of the machine hits all of them alike.
        let mut models = Vec::new();
        for &variant in &opts.variants {
            let m = model(opts, variant)?;
            let diff = match (&reference, variant) {
                (Some(r), BertVariant::FffKernel | BertVariant::FffMasked) => {
                    let h = m.encode(&batch)?.hidden;
                    let d = (h - r)?.abs()?.max_all()?.to_scalar::<f32>()?;
                    ensure!(
                        d < 1e-2,
                        "{}: hidden states differ from the masked reference by {d}",
                        variant.name()
                    );
                    Some(d)
                }
                _ => None,
            };
            timed_encode(&m, &batch)?; // warm-up
            models.push((variant, m, diff));
        }
        let mut rounds: Vec<Vec<(f64, f64)>> = Vec::new();
        let started = Instant::now();
        let budget = opts.budget * models.len() as u32;
        while rounds.len() < opts.reps && (rounds.len() < 3 || started.elapsed() < budget) {
            let round = models
                .iter()
                .map(|(_, m, _)| timed_encode(m, &batch))
                .collect::<Result<Vec<_>>>()?;
            rounds.push(round);
        }
        let dense = models.iter().position(|(v, _, _)| *v == BertVariant::Dense);
        for (k, (variant, _, diff)) in models.into_iter().enumerate() {
            let seconds = median(rounds.iter().map(|r| r[k].0).collect());
            let per_round: Option<Vec<f64>> =
                dense.map(|d| rounds.iter().map(|r| r[d].0 / r[k].0).collect());
            let rec = BertRecord {
                variant,
                batch: batch_size,
                seq: opts.seq,
                seconds,
                tokens_per_s: (batch_size * opts.seq) as f64 / seconds,
                ffn_seconds: median(rounds.iter().map(|r| r[k].1).collect()),
                speedup_vs_dense: dense
                    .map(|d| median(rounds.iter().map(|r| r[d].0).collect()) / seconds),
                speedup_range: per_round.map(|v| {
                    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                    (lo, v.iter().copied().fold(lo, f64::max))
                }),
                rounds: rounds.len(),
                max_abs_diff_vs_masked: diff,
            };
            progress(&format!(
                "{} batch {batch_size}: {:.0} tokens/s",
                variant.name(),
                rec.tokens_per_s
            ));
            records.push(rec);
        }
    }
    Ok(records)
}

/// The records as a markdown table.
pub fn bert_table(records: &[BertRecord]) -> String {
    let mut s = String::from(
        "| model | batch x seq | time per batch | tokens/s | in FFN blocks | elsewhere | speedup vs dense | per-round range | max abs diff vs masked |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in records {
        s += &format!(
            "| {} | {}x{} | {} | {:.0} | {} ({:.0}%) | {} | {} | {} | {} |\n",
            r.variant.name(),
            r.batch,
            r.seq,
            human_seconds(r.seconds),
            r.tokens_per_s,
            human_seconds(r.ffn_seconds),
            100.0 * r.ffn_seconds / r.seconds,
            human_seconds(r.seconds - r.ffn_seconds),
            r.speedup_vs_dense
                .map_or("-".into(), |x| format!("{x:.2}x")),
            r.speedup_range
                .map_or("-".into(), |(lo, hi)| format!("{lo:.2}–{hi:.2}x")),
            r.max_abs_diff_vs_masked
                .map_or("-".into(), |d| format!("{d:.1e}")),
        );
    }
    s
}
