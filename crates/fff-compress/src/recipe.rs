//! The settings of a compression: the student's shape, where it starts, and how much text
//! each distillation stage reads.

use crate::shape::Student;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// Where a student's FFN starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Start {
    /// The teacher's own neurons, chosen per node by routed importance (see [`crate::init`]).
    Teacher,
    /// The library's hyperspherical initialisation.
    Random,
}

/// The distillation stages, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Each layer's student FFN learns the teacher FFN's outputs from the teacher's own inputs.
    Layerwise,
    /// Each layer's student FFN takes the inputs the student itself produces (earlier layers
    /// already compressed) and learns what makes its block's output match the teacher's
    /// (`teacher input + teacher output − student input`, the sum the block's LayerNorm sees),
    /// so later layers correct the errors of earlier ones.
    Chained,
    /// The whole student against the teacher's final hidden states and pooled embeddings,
    /// gradients through every block (see [`crate::joint`]).
    Joint,
}

impl Stage {
    /// The stages in order.
    pub const ALL: [Stage; 3] = [Stage::Layerwise, Stage::Chained, Stage::Joint];

    /// The stage's name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Layerwise => "layerwise",
            Stage::Chained => "chained",
            Stage::Joint => "joint",
        }
    }
}

/// Everything that decides what a compression computes; a resumed run must have the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// What each FFN becomes.
    pub student: Student,
    /// Where the student starts.
    pub start: Start,
    /// Tokens of text the layer-wise stage reads.
    pub layerwise_tokens: u64,
    /// Tokens of text the chained stage reads.
    pub chained_tokens: u64,
    /// Tokens of text the joint stage reads.
    #[serde(default)]
    pub joint_tokens: u64,
    /// Peak learning rate (AdamW) of the layer-wise and chained stages, reached after a short
    /// warm-up and decayed on a cosine.
    pub learning_rate: f64,
    /// Peak learning rate of the joint stage.
    #[serde(default = "default_joint_learning_rate")]
    pub joint_learning_rate: f64,
    /// Most tokens (padding included) per optimizer step of the joint stage.
    #[serde(default = "default_joint_step_tokens")]
    pub joint_step_tokens: usize,
    /// Token rows per optimizer step (per layer).
    pub step_rows: usize,
    /// Tokens per teacher pass (the rows of one pass are shuffled into steps).
    pub chunk_tokens: usize,
    /// Longest passage in tokens; longer ones are truncated.
    pub max_tokens: usize,
    /// Tokens of text the teacher initialisation samples.
    pub init_tokens: usize,
    /// Passages held out to measure agreement with the teacher.
    pub holdout: usize,
    /// Tokens between agreement measurements.
    pub eval_every: u64,
    /// Seed of the text order and the initialisation.
    pub seed: u64,
}

impl Recipe {
    /// Default tokens of the layer-wise stage.
    pub const LAYERWISE_TOKENS: u64 = 1_000_000;
    /// Default tokens of the chained stage.
    pub const CHAINED_TOKENS: u64 = 1_000_000;
    /// Default tokens of the joint stage: 2.5 M, where the 10% FFF of all-MiniLM-L6-v2 came
    /// within a point of the original on STS-B dev (0.6 M left it 1.4 points short) in 0.8
    /// hours on 2 cores.
    pub const JOINT_TOKENS: u64 = 2_500_000;
    /// Default peak learning rate of the layer-wise and chained stages.
    pub const LEARNING_RATE: f64 = 3e-3;
    /// Default peak learning rate of the joint stage.
    pub const JOINT_LEARNING_RATE: f64 = 5e-4;

    /// The defaults for `student`.
    pub fn new(student: Student) -> Recipe {
        Recipe {
            student,
            start: Start::Teacher,
            layerwise_tokens: Self::LAYERWISE_TOKENS,
            chained_tokens: Self::CHAINED_TOKENS,
            joint_tokens: Self::JOINT_TOKENS,
            learning_rate: Self::LEARNING_RATE,
            joint_learning_rate: default_joint_learning_rate(),
            joint_step_tokens: default_joint_step_tokens(),
            step_rows: 512,
            chunk_tokens: 8192,
            max_tokens: 128,
            init_tokens: 16384,
            holdout: 1000,
            eval_every: 1_000_000,
            seed: 0,
        }
    }

    /// Tokens the stage reads.
    pub fn tokens(&self, stage: Stage) -> u64 {
        match stage {
            Stage::Layerwise => self.layerwise_tokens,
            Stage::Chained => self.chained_tokens,
            Stage::Joint => self.joint_tokens,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.learning_rate.is_finite() && self.learning_rate > 0.0 && self.learning_rate < 1.0,
            "--lr {}: expected a learning rate in (0, 1)",
            self.learning_rate
        );
        ensure!(
            self.joint_learning_rate.is_finite()
                && self.joint_learning_rate > 0.0
                && self.joint_learning_rate < 1.0,
            "--joint-lr {}: expected a learning rate in (0, 1)",
            self.joint_learning_rate
        );
        ensure!(
            self.joint_step_tokens >= self.max_tokens,
            "--joint-step-tokens {} must be at least --max-tokens {} (one passage a step)",
            self.joint_step_tokens,
            self.max_tokens
        );
        ensure!(self.step_rows >= 1, "--step-rows must be at least 1");
        ensure!(
            self.chunk_tokens >= self.step_rows,
            "--chunk-tokens {} must be at least --step-rows {}",
            self.chunk_tokens,
            self.step_rows
        );
        ensure!(self.max_tokens >= 2, "--max-tokens must be at least 2");
        ensure!(self.init_tokens >= 1, "--init-tokens must be at least 1");
        ensure!(self.eval_every >= 1, "--eval-every must be at least 1");
        Ok(())
    }

    /// The first field in which `other` differs from this recipe, as `(name, ours, theirs)`.
    pub fn difference(&self, other: &Recipe) -> Option<(String, String, String)> {
        let a = serde_json::to_value(self).expect("a recipe serializes");
        let b = serde_json::to_value(other).expect("a recipe serializes");
        let (a, b) = (a.as_object()?, b.as_object()?);
        a.iter().find_map(|(k, v)| {
            let w = b.get(k).cloned().unwrap_or(serde_json::Value::Null);
            (*v != w).then(|| (k.clone(), v.to_string(), w.to_string()))
        })
    }

    /// The learning rate after `fraction` of `stage`: a linear warm-up over its first 2%, then
    /// a cosine down to a tenth of the stage's peak.
    pub fn learning_rate_at(&self, stage: Stage, fraction: f64) -> f64 {
        let peak = match stage {
            Stage::Joint => self.joint_learning_rate,
            Stage::Layerwise | Stage::Chained => self.learning_rate,
        };
        let f = fraction.clamp(0.0, 1.0);
        let warm = 0.02;
        if f < warm {
            return peak * (f / warm).max(0.01);
        }
        let t = (f - warm) / (1.0 - warm);
        let floor = 0.1;
        peak * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
    }
}

fn default_joint_learning_rate() -> f64 {
    Recipe::JOINT_LEARNING_RATE
}

fn default_joint_step_tokens() -> usize {
    2048
}
