//! Small datasets generated in memory, for examples that must run with no network and no files.

use crate::{Dataset, Split};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// `classes` interleaved spiral arms in the plane, `per_class` points each, with Gaussian
/// noise of standard deviation `noise`, split 80/20 into train and test. A classic set that a
/// linear model cannot separate.
pub fn spirals(classes: usize, per_class: usize, noise: f32, seed: u64) -> Split {
    let mut rng = StdRng::seed_from_u64(seed);
    let jitter = Normal::new(0.0f32, noise.max(0.0)).expect("non-negative noise");
    let mut rows: Vec<([f32; 2], u32)> = Vec::with_capacity(classes * per_class);
    for c in 0..classes {
        for i in 0..per_class {
            let r = (i as f32 + 0.5) / per_class as f32;
            let theta =
                c as f32 * std::f32::consts::TAU / classes as f32 + r * 2.5 * std::f32::consts::PI;
            let x = r * theta.cos() + jitter.sample(&mut rng);
            let y = r * theta.sin() + jitter.sample(&mut rng);
            rows.push(([x, y], c as u32));
        }
    }
    // Shuffle (Fisher–Yates) so the split is not by class.
    for i in (1..rows.len()).rev() {
        let j = rng.random_range(0..=i);
        rows.swap(i, j);
    }
    let n_train = rows.len() * 4 / 5;
    let make = |part: &[([f32; 2], u32)], half: &str| Dataset {
        name: format!("spirals{classes}/{half}"),
        features: part.iter().flat_map(|(p, _)| *p).collect(),
        labels: part.iter().map(|(_, l)| *l).collect(),
        dim: 2,
        classes,
    };
    Split {
        train: make(&rows[..n_train], "train"),
        test: make(&rows[n_train..], "test"),
    }
}
