//! The student's FFN shape: an FFF forest (optionally with a dense branch every token runs
//! beside it), or (the equal-compute baseline) a narrower dense FFN, chosen by a budget (the
//! fraction of the teacher's FFN multiply-adds per token) or spelled out.

use anyhow::{bail, ensure, Result};
use fastfeedforward::{Activation, FffConfig};
use serde::{Deserialize, Serialize};

/// What each block's FFN becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Student {
    /// `trees` trees of depth `depth` with `activation` nodes (UltraFastBERT's form), and
    /// `branch` dense neurons with the teacher's activation beside them (0: none).
    Fff {
        /// Trees per layer.
        trees: usize,
        /// Depth of each tree (`depth + 1` nodes run per tree and token).
        depth: usize,
        /// The node activation.
        #[serde(with = "activation_name")]
        activation: Activation,
        /// Neurons of the dense branch every token runs beside the trees.
        #[serde(default, skip_serializing_if = "is_zero")]
        branch: usize,
    },
    /// A dense FFN of `width` neurons with the teacher's activation: a pruned FFN, trained on
    /// the same path as a forest of `width` depth-0 trees and written as a plain BERT FFN.
    Dense {
        /// Neurons kept.
        width: usize,
    },
}

impl Student {
    /// The shape whose neurons evaluated per token are the fraction `budget` of the teacher's
    /// `intermediate` (rounded to the nearest whole tree or neuron): an FFF of trees of
    /// `depth`, or with `dense` a narrower dense FFN.
    pub fn from_budget(
        budget: f64,
        intermediate: usize,
        depth: usize,
        activation: Activation,
        dense: bool,
    ) -> Result<Student> {
        ensure!(
            budget.is_finite() && budget > 0.0 && budget <= 1.0,
            "--ffn-budget {budget}: expected a fraction of the FFN's multiply-adds in (0, 1]"
        );
        let neurons = budget * intermediate as f64;
        if dense {
            let width = neurons.round() as usize;
            ensure!(
                width >= 1,
                "--ffn-budget {budget} keeps {neurons:.2} of the FFN's {intermediate} neurons: \
                 less than one; raise the budget"
            );
            return Ok(Student::Dense { width });
        }
        let trees = (neurons / (depth + 1) as f64).round() as usize;
        if trees == 0 {
            bail!(
                "--ffn-budget {budget} pays for {neurons:.2} of the FFN's {intermediate} neurons \
                 per token, less than one tree of depth {depth} ({} nodes per token): raise the \
                 budget or lower --depth",
                depth + 1
            );
        }
        Ok(Student::Fff {
            trees,
            depth,
            activation,
            branch: 0,
        })
    }

    /// An FFF of trees of `depth` with a dense branch taking the fraction `share` of the
    /// budget's neurons (rounded to whole neurons), the trees the rest (to whole trees).
    pub fn hybrid_from_budget(
        budget: f64,
        intermediate: usize,
        depth: usize,
        activation: Activation,
        share: f64,
    ) -> Result<Student> {
        ensure!(
            share.is_finite() && share > 0.0 && share < 1.0,
            "--branch-share {share}: expected the dense branch's fraction of the budget in (0, 1)"
        );
        Student::from_budget(budget, intermediate, depth, activation, false)?;
        let neurons = budget * intermediate as f64;
        let branch = (share * neurons).round() as usize;
        let trees = ((neurons - branch as f64) / (depth + 1) as f64).round() as usize;
        ensure!(
            branch >= 1 && trees >= 1,
            "--ffn-budget {budget} with --branch-share {share}: {branch} branch neurons and \
             {trees} trees of depth {depth}; both need at least one (raise the budget or change \
             the share)"
        );
        Ok(Student::Fff {
            trees,
            depth,
            activation,
            branch,
        })
    }

    /// Neurons evaluated per token and layer (each costs `2·hidden` multiply-adds).
    pub fn neurons_per_token(&self) -> usize {
        match *self {
            Student::Fff {
                trees,
                depth,
                branch,
                ..
            } => trees * (depth + 1) + branch,
            Student::Dense { width } => width,
        }
    }

    /// Parameters of one layer's FFN (without the output bias) at hidden size `hidden`.
    pub fn parameters(&self, hidden: usize) -> usize {
        let c = self.fff_config(hidden, Activation::Identity);
        (c.total_nodes() + self.branch()) * (2 * hidden + 1)
    }

    /// Neurons of the dense branch beside the trees (0 without one, and for a dense student).
    pub fn branch(&self) -> usize {
        match *self {
            Student::Fff { branch, .. } => branch,
            Student::Dense { .. } => 0,
        }
    }

    /// The dense branch as it trains: `branch` depth-0 trees of `teacher_act` nodes.
    pub fn branch_config(&self, hidden: usize, teacher_act: Activation) -> Option<FffConfig> {
        match self.branch() {
            0 => None,
            n => Some(FffConfig::new(hidden, hidden, 0, n).with_activation(teacher_act)),
        }
    }

    /// The forest it trains as: a dense FFN is `width` depth-0 trees of `teacher_act` nodes.
    pub fn fff_config(&self, hidden: usize, teacher_act: Activation) -> FffConfig {
        match *self {
            Student::Fff {
                trees,
                depth,
                activation,
                ..
            } => FffConfig::new(hidden, hidden, depth, trees).with_activation(activation),
            Student::Dense { width } => {
                FffConfig::new(hidden, hidden, 0, width).with_activation(teacher_act)
            }
        }
    }

    /// A short name: `fff 32x4 gelu`, `fff 15x4 gelu + dense 77` or `dense 160`.
    pub fn describe(&self) -> String {
        match *self {
            Student::Fff {
                trees,
                depth,
                activation,
                branch,
            } => {
                let b = if branch > 0 {
                    format!(" + dense {branch}")
                } else {
                    String::new()
                };
                format!("fff {trees}x{depth} {}{b}", activation.name())
            }
            Student::Dense { width } => format!("dense {width}"),
        }
    }

    /// Checks the shape against the teacher's FFN and the kernels' limits.
    pub fn validate(&self, hidden: usize, intermediate: usize) -> Result<()> {
        match *self {
            Student::Fff {
                trees,
                depth,
                branch,
                ..
            } => {
                ensure!(trees >= 1, "an FFF needs at least one tree");
                // The trees start from the neurons the branch does not take, each path from
                // distinct ones.
                ensure!(
                    branch + depth < intermediate,
                    "a dense branch of {branch} neurons leaves {} of the FFN's {intermediate} \
                     neurons for trees of depth {depth} (a path needs {}); expected fewer",
                    intermediate.saturating_sub(branch),
                    depth + 1
                );
                ensure!(
                    depth <= fastfeedforward::MAX_DEPTH,
                    "--depth {depth}: at most {}",
                    fastfeedforward::MAX_DEPTH
                );
                self.fff_config(hidden, Activation::Identity)
                    .validate()
                    .map_err(|e| anyhow::anyhow!("the FFF shape {}: {e}", self.describe()))?;
            }
            Student::Dense { width } => ensure!(
                (1..=intermediate).contains(&width),
                "a dense FFN of {width} neurons: expected 1..={intermediate} (the teacher's width)"
            ),
        }
        Ok(())
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// An [`Activation`] as its name in JSON.
mod activation_name {
    use fastfeedforward::Activation;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Activation, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Activation, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_picks_the_nearest_whole_shape() {
        let s = Student::from_budget(0.1, 1536, 4, Activation::Gelu, false).unwrap();
        assert_eq!(s.neurons_per_token(), 155);
        assert_eq!(
            s,
            Student::Fff {
                trees: 31,
                depth: 4,
                activation: Activation::Gelu,
                branch: 0,
            }
        );
        // Without a branch the JSON is what it was before branches existed.
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"fff","trees":31,"depth":4,"activation":"gelu"}"#
        );
        assert_eq!(serde_json::from_str::<Student>(&json).unwrap(), s);
        let h = Student::hybrid_from_budget(0.1, 1536, 4, Activation::Gelu, 0.5).unwrap();
        assert_eq!(
            h,
            Student::Fff {
                trees: 15,
                depth: 4,
                activation: Activation::Gelu,
                branch: 77,
            }
        );
        assert_eq!(h.neurons_per_token(), 152);
        assert_eq!(h.parameters(384), (15 * 31 + 77) * 769);
        assert_eq!(h.describe(), "fff 15x4 gelu + dense 77");
        let back: Student = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back, h);
        let d = Student::from_budget(0.1, 1536, 4, Activation::Gelu, true).unwrap();
        assert_eq!(d, Student::Dense { width: 154 });
        assert_eq!(s.parameters(384), 31 * 31 * 769);
    }

    #[test]
    fn a_budget_that_makes_no_fff_is_refused() {
        let e = Student::from_budget(0.001, 1536, 4, Activation::Gelu, false).unwrap_err();
        assert!(e.to_string().contains("less than one tree"), "{e}");
        for b in [0.0, -1.0, 1.5, f64::NAN] {
            assert!(Student::from_budget(b, 1536, 4, Activation::Gelu, false).is_err());
        }
        let e = Student::Dense { width: 2000 }
            .validate(384, 1536)
            .unwrap_err();
        assert!(e.to_string().contains("1..=1536"), "{e}");
        for share in [0.0, 1.0, f64::NAN] {
            let e = Student::hybrid_from_budget(0.1, 1536, 4, Activation::Gelu, share).unwrap_err();
            assert!(e.to_string().contains("--branch-share"), "{e}");
        }
        // 0.4% of 1536 is 6 neurons: 5 for the branch leaves one, less than a tree of depth 4.
        let e = Student::hybrid_from_budget(0.004, 1536, 4, Activation::Gelu, 0.9).unwrap_err();
        assert!(e.to_string().contains("both need at least one"), "{e}");
        let e = Student::Fff {
            trees: 1,
            depth: 4,
            activation: Activation::Gelu,
            branch: 1534,
        }
        .validate(384, 1536)
        .unwrap_err();
        assert!(e.to_string().contains("dense branch of 1534"), "{e}");
    }
}
