//! The settings of a compression: the student's shape, where it starts, and how much text
//! each distillation stage reads.

use crate::shape::Student;
use anyhow::{ensure, Result};
use fastfeedforward::SoftRouting;
use fff_train::state::SoftSchedule;
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

/// What the joint stage trains besides the FFN blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Tune {
    /// The FFN blocks alone; everything else stays the original's.
    #[default]
    Ffn,
    /// The FFN blocks and every block's two LayerNorms.
    Norms,
    /// The FFN blocks, the LayerNorms and the attention's four projections.
    All,
}

impl Tune {
    /// The name the command line takes.
    pub fn name(self) -> &'static str {
        match self {
            Tune::Ffn => "ffn",
            Tune::Norms => "norms",
            Tune::All => "all",
        }
    }
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
    /// What the joint stage trains besides the FFN blocks.
    #[serde(default)]
    pub joint_tune: Tune,
    /// Peak learning rate of the trunk's tensors the joint stage tunes (on the joint stage's
    /// schedule).
    #[serde(default = "default_trunk_learning_rate")]
    pub trunk_learning_rate: f64,
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
    /// Soft-to-hard routing of the layer-wise and chained stages, each annealing over its own
    /// tokens and ending hard (see [`fastfeedforward::soft`]); none by default. The joint
    /// stage always routes hard.
    #[serde(default)]
    pub soft_routing: Option<SoftSchedule>,
    /// Weight of the load-balancing loss ([`fastfeedforward::balance`]) in the layer-wise and
    /// chained stages; 0 (none) by default.
    #[serde(default)]
    pub load_balance: f64,
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
    /// Default peak learning rate of the trunk's tuned tensors: a fifth of the students', as
    /// pretrained tensors are fine-tuned, not learnt afresh.
    pub const TRUNK_LEARNING_RATE: f64 = 1e-4;

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
            joint_tune: Tune::Ffn,
            trunk_learning_rate: default_trunk_learning_rate(),
            joint_step_tokens: default_joint_step_tokens(),
            step_rows: 512,
            chunk_tokens: 8192,
            max_tokens: 128,
            init_tokens: 16384,
            holdout: 1000,
            eval_every: 1_000_000,
            seed: 0,
            soft_routing: None,
            load_balance: 0.0,
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
            self.trunk_learning_rate.is_finite()
                && self.trunk_learning_rate > 0.0
                && self.trunk_learning_rate < 1.0,
            "--trunk-lr {}: expected a learning rate in (0, 1)",
            self.trunk_learning_rate
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
        if let Some(s) = &self.soft_routing {
            let temperature = |t: f64| t.is_finite() && t > 0.0;
            ensure!(
                s.levels >= 1
                    && temperature(s.start_temperature)
                    && temperature(s.end_temperature)
                    && (0.0..=1.0).contains(&s.hard_fraction),
                "--soft-routing {s}: expected LEVELS >= 1, temperatures > 0 and a hard \
                 fraction in [0, 1]"
            );
        }
        ensure!(
            self.joint_tune == Tune::Ffn || self.joint_tokens > 0,
            "--joint-tune {} tunes in the joint stage, which --joint-tokens 0 skips",
            self.joint_tune.name()
        );
        ensure!(
            self.load_balance.is_finite() && self.load_balance >= 0.0,
            "--load-balance {}: expected a weight >= 0",
            self.load_balance
        );
        Ok(())
    }

    /// The first field in which `other` differs from this recipe, as `(name, ours, theirs)`.
    pub fn difference(&self, other: &Recipe) -> Option<(String, String, String)> {
        let a = serde_json::to_value(self).expect("a recipe serializes");
        let b = serde_json::to_value(other).expect("a recipe serializes");
        let (a, b) = (a.as_object()?, b.as_object()?);
        let field = |m: &serde_json::Map<String, serde_json::Value>, k: &str| {
            m.get(k).cloned().unwrap_or(serde_json::Value::Null)
        };
        a.keys().chain(b.keys()).find_map(|k| {
            let (v, w) = (field(a, k), field(b, k));
            (v != w).then(|| (k.clone(), v.to_string(), w.to_string()))
        })
    }

    /// The stages in one line: tokens and peak learning rates, routing, what the joint stage
    /// tunes.
    pub fn describe_stages(&self) -> String {
        let routing = match (&self.soft_routing, self.load_balance) {
            (None, 0.0) => "hard routing".to_string(),
            (None, w) => format!("hard routing, load balance {w}"),
            (Some(s), 0.0) => format!("soft-to-hard routing {s}"),
            (Some(s), w) => format!("soft-to-hard routing {s}, load balance {w}"),
        };
        let tuned = match self.joint_tune {
            Tune::Ffn => String::new(),
            Tune::Norms => format!(", LayerNorms tuned at lr {}", self.trunk_learning_rate),
            Tune::All => format!(
                ", LayerNorms and attention tuned at lr {}",
                self.trunk_learning_rate
            ),
        };
        format!(
            "stages: layer-wise {} tokens and chained {} at lr {} ({routing}), joint {} at lr {}{tuned}",
            self.layerwise_tokens,
            self.chained_tokens,
            self.learning_rate,
            self.joint_tokens,
            self.joint_learning_rate
        )
    }

    /// The trunk's learning rate after `fraction` of the joint stage: the joint stage's
    /// schedule, scaled to the trunk's peak.
    pub fn trunk_learning_rate_at(&self, fraction: f64) -> f64 {
        self.learning_rate_at(Stage::Joint, fraction) * self.trunk_learning_rate
            / self.joint_learning_rate
    }

    /// How the layer-wise and chained stages route after `fraction` of their tokens: softly
    /// over the schedule's levels while it is soft, hard (None) after.
    pub fn soft_routing_at(&self, fraction: f64) -> Option<SoftRouting> {
        // The schedule counts steps; a million steps resolve any stage's fraction finely.
        const STEPS: usize = 1_000_000;
        let step = (fraction.clamp(0.0, 1.0) * STEPS as f64) as usize;
        self.soft_routing?.at(step.min(STEPS - 1), STEPS)
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

fn default_trunk_learning_rate() -> f64 {
    Recipe::TRUNK_LEARNING_RATE
}

fn default_joint_learning_rate() -> f64 {
    Recipe::JOINT_LEARNING_RATE
}

fn default_joint_step_tokens() -> usize {
    2048
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastfeedforward::Activation;

    fn recipe() -> Recipe {
        Recipe::new(Student::Fff {
            trees: 3,
            depth: 4,
            activation: Activation::Gelu,
            branch: 0,
        })
    }

    #[test]
    fn soft_routing_anneals_over_a_stage_and_ends_hard() {
        let mut r = recipe();
        assert_eq!(r.soft_routing_at(0.0), None, "hard by default");
        r.soft_routing = Some(SoftSchedule {
            levels: 2,
            start_temperature: 1.0,
            end_temperature: 0.01,
            hard_fraction: 0.25,
        });
        let t = |f: f64| r.soft_routing_at(f).map(|s| (s.levels, s.temperature));
        assert_eq!(t(0.0), Some((2, 1.0)));
        let (_, mid) = t(0.375).unwrap();
        assert!((mid - 0.1).abs() < 1e-3, "geometric halfway: {mid}");
        let (_, late) = t(0.7499).unwrap();
        assert!((late - 0.01).abs() < 1e-3, "{late}");
        assert_eq!(t(0.75), None);
        assert_eq!(t(1.0), None);
        assert_eq!(t(2.0), None);
    }

    #[test]
    fn bad_soft_routing_and_balance_are_refused_by_flag() {
        for (levels, t0, t1, hard) in [
            (0, 1.0, 0.1, 0.2),
            (1, 0.0, 0.1, 0.2),
            (1, 1.0, f64::NAN, 0.2),
            (1, 1.0, 0.1, 1.5),
        ] {
            let r = Recipe {
                soft_routing: Some(SoftSchedule {
                    levels,
                    start_temperature: t0,
                    end_temperature: t1,
                    hard_fraction: hard,
                }),
                ..recipe()
            };
            let e = r.validate().unwrap_err().to_string();
            assert!(e.starts_with("--soft-routing"), "{e}");
        }
        for w in [-0.1, f64::INFINITY] {
            let r = Recipe {
                load_balance: w,
                ..recipe()
            };
            let e = r.validate().unwrap_err().to_string();
            assert!(e.starts_with("--load-balance"), "{e}");
        }
        let r = Recipe {
            joint_tune: Tune::Norms,
            joint_tokens: 0,
            ..recipe()
        };
        let e = r.validate().unwrap_err().to_string();
        assert!(e.starts_with("--joint-tune norms"), "{e}");
        recipe().validate().unwrap();
    }

    #[test]
    fn the_stages_line_names_what_is_set() {
        let plain = recipe().describe_stages();
        assert!(
            plain.contains("hard routing") && !plain.contains("tuned"),
            "{plain}"
        );
        let r = Recipe {
            soft_routing: Some(SoftSchedule {
                levels: 1,
                start_temperature: 1.0,
                end_temperature: 0.05,
                hard_fraction: 0.3,
            }),
            joint_tune: Tune::All,
            ..recipe()
        };
        let line = r.describe_stages();
        assert!(line.contains("soft-to-hard routing 1:1:0.05:0.3"), "{line}");
        assert!(line.contains("attention tuned at lr 0.0001"), "{line}");
    }

    #[test]
    fn a_difference_is_found_whichever_recipe_holds_the_setting() {
        let a = recipe();
        let b = Recipe {
            load_balance: 0.5,
            ..recipe()
        };
        assert_eq!(a.difference(&a), None);
        let (field, ours, theirs) = a.difference(&b).unwrap();
        assert_eq!(
            (field.as_str(), ours.as_str(), theirs.as_str()),
            ("load_balance", "0.0", "0.5")
        );
        assert_eq!(b.difference(&a).unwrap().0, "load_balance");
    }
}
