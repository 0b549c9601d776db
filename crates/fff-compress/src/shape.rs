//! The student's FFN shape: an FFF forest, or (the equal-compute baseline) a narrower dense
//! FFN, chosen by a budget (the fraction of the teacher's FFN multiply-adds per token) or
//! spelled out.

use anyhow::{bail, ensure, Result};
use fastfeedforward::{Activation, FffConfig};
use serde::{Deserialize, Serialize};

/// What each block's FFN becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Student {
    /// `trees` trees of depth `depth` with `activation` nodes (UltraFastBERT's form).
    Fff {
        /// Trees per layer.
        trees: usize,
        /// Depth of each tree (`depth + 1` nodes run per tree and token).
        depth: usize,
        /// The node activation.
        #[serde(with = "activation_name")]
        activation: Activation,
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
        })
    }

    /// Neurons evaluated per token and layer (each costs `2·hidden` multiply-adds).
    pub fn neurons_per_token(&self) -> usize {
        match *self {
            Student::Fff { trees, depth, .. } => trees * (depth + 1),
            Student::Dense { width } => width,
        }
    }

    /// Parameters of one layer's FFN (without the output bias) at hidden size `hidden`.
    pub fn parameters(&self, hidden: usize) -> usize {
        let c = self.fff_config(hidden, Activation::Identity);
        c.total_nodes() * (2 * hidden + 1)
    }

    /// The forest it trains as: a dense FFN is `width` depth-0 trees of `teacher_act` nodes.
    pub fn fff_config(&self, hidden: usize, teacher_act: Activation) -> FffConfig {
        match *self {
            Student::Fff {
                trees,
                depth,
                activation,
            } => FffConfig::new(hidden, hidden, depth, trees).with_activation(activation),
            Student::Dense { width } => {
                FffConfig::new(hidden, hidden, 0, width).with_activation(teacher_act)
            }
        }
    }

    /// A short name: `fff 32x4 gelu` or `dense 160`.
    pub fn describe(&self) -> String {
        match *self {
            Student::Fff {
                trees,
                depth,
                activation,
            } => format!("fff {trees}x{depth} {}", activation.name()),
            Student::Dense { width } => format!("dense {width}"),
        }
    }

    /// Checks the shape against the teacher's FFN and the kernels' limits.
    pub fn validate(&self, hidden: usize, intermediate: usize) -> Result<()> {
        match *self {
            Student::Fff { trees, depth, .. } => {
                ensure!(trees >= 1, "an FFF needs at least one tree");
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
                activation: Activation::Gelu
            }
        );
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
    }
}
