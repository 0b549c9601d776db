//! The standard quality figures of sentence embeddings: STS (Spearman correlation between the
//! cosine of two sentences' embeddings and their gold similarity, x100) and a linear probe
//! (L2-regularised logistic regression on frozen embeddings, trained on one split, accuracy on
//! another). The probe minimises scikit-learn's `LogisticRegression(C)` objective,
//! `C·Σ log-loss + ½‖w‖²` with an unpenalised intercept, by Newton's method to convergence, so
//! its solution is the one scikit-learn's solvers converge to.

use crate::error::{BertError, Result};
use crate::pipeline::Pipeline;
use crate::pooling::PoolingConfig;
use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, Par, Side};
use std::collections::HashMap;

/// Spearman's rank correlation of `x` and `y` (ties share their average rank, as in
/// `scipy.stats.spearmanr`).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "spearman: equal lengths");
    pearson(&ranks(x), &ranks(y))
}

/// Ranks from 1, ties given the mean of the ranks they span.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = rank;
        }
        i = j + 1;
    }
    r
}

/// Pearson's correlation (0 when either side is constant).
fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return 0.0;
    }
    sxy / (sxx * syy).sqrt()
}

/// Cosine similarity in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-300)
}

/// Embeds `texts` once each (duplicates share one embedding), in batches of `batch`.
pub fn embed_unique(
    p: &Pipeline,
    texts: &[&str],
    pooling: &PoolingConfig,
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut unique: Vec<String> = Vec::new();
    let slots: Vec<usize> = texts
        .iter()
        .map(|t| {
            *index.entry(t).or_insert_with(|| {
                unique.push(t.to_string());
                unique.len() - 1
            })
        })
        .collect();
    let vectors = p.embed(&unique, pooling, batch)?;
    Ok(slots
        .into_iter()
        .map(|s| vectors[s].value.clone())
        .collect())
}

/// A fitted binary logistic regression: `P(1 | x) = σ(w·x + b)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Logistic {
    /// Coefficients.
    pub w: Vec<f64>,
    /// Intercept.
    pub b: f64,
    /// Newton iterations taken.
    pub iterations: usize,
    /// The objective at the solution.
    pub objective: f64,
}

impl Logistic {
    /// `w·x + b`.
    pub fn decision(&self, x: &[f32]) -> f64 {
        self.w
            .iter()
            .zip(x)
            .map(|(w, &v)| w * v as f64)
            .sum::<f64>()
            + self.b
    }
}

/// Minimises `c·Σ [log(1 + e^{z_i}) − y_i z_i] + ½‖w‖²` (`z_i = w·x_i + b`, `y_i` in {0, 1})
/// by Newton's method with a backtracking line search, until the gradient's largest entry is
/// below `1e-9·max(1, c·n)`. `x` holds `n` rows of width `dim`.
pub fn fit_logistic(x: &[f32], y: &[bool], dim: usize, c: f64) -> Logistic {
    let n = y.len();
    assert_eq!(x.len(), n * dim, "x is [n, dim]");
    let d = dim + 1;
    // Rows with a trailing 1 for the intercept.
    let xa = Mat::<f64>::from_fn(
        n,
        d,
        |i, j| if j < dim { x[i * dim + j] as f64 } else { 1.0 },
    );
    let mut theta = vec![0f64; d];
    let objective = |theta: &[f64], z: &[f64]| -> f64 {
        let loss: f64 = z
            .iter()
            .zip(y)
            .map(|(&z, &yi)| softplus(z) - if yi { z } else { 0.0 })
            .sum();
        c * loss + 0.5 * theta[..dim].iter().map(|w| w * w).sum::<f64>()
    };
    let scores = |theta: &[f64]| -> Vec<f64> {
        let t = Mat::<f64>::from_fn(d, 1, |i, _| theta[i]);
        let mut z = Mat::<f64>::zeros(n, 1);
        matmul(
            z.as_mut(),
            Accum::Replace,
            xa.as_ref(),
            t.as_ref(),
            1.0,
            Par::rayon(0),
        );
        (0..n).map(|i| z[(i, 0)]).collect()
    };
    let tolerance = 1e-9 * (c * n as f64).max(1.0);
    let mut z = scores(&theta);
    let mut f = objective(&theta, &z);
    let mut iterations = 0;
    for _ in 0..100 {
        let p: Vec<f64> = z.iter().map(|&z| sigmoid(z)).collect();
        // Gradient: c·Xᵀ(p − y) + [w; 0].
        let r = Mat::<f64>::from_fn(n, 1, |i, _| c * (p[i] - if y[i] { 1.0 } else { 0.0 }));
        let mut g = Mat::<f64>::zeros(d, 1);
        matmul(
            g.as_mut(),
            Accum::Replace,
            xa.transpose(),
            r.as_ref(),
            1.0,
            Par::rayon(0),
        );
        for j in 0..dim {
            g[(j, 0)] += theta[j];
        }
        let worst = (0..d).map(|j| g[(j, 0)].abs()).fold(0.0, f64::max);
        if worst < tolerance {
            break;
        }
        // Hessian: c·Xᵀ diag(p(1 − p)) X + diag(1, …, 1, 0).
        let wx = Mat::<f64>::from_fn(n, d, |i, j| c * p[i] * (1.0 - p[i]) * xa[(i, j)]);
        let mut h = Mat::<f64>::zeros(d, d);
        matmul(
            h.as_mut(),
            Accum::Replace,
            xa.transpose(),
            wx.as_ref(),
            1.0,
            Par::rayon(0),
        );
        for j in 0..dim {
            h[(j, j)] += 1.0;
        }
        // The intercept's diagonal is c·Σ p(1 − p) > 0 unless every p saturates; a tiny ridge
        // keeps the factorisation defined then.
        h[(dim, dim)] += 1e-12;
        let Ok(llt) = h.llt(Side::Lower) else {
            break;
        };
        let step = llt.solve(&g);
        let descent: f64 = (0..d).map(|j| step[(j, 0)] * g[(j, 0)]).sum();
        let mut t = 1.0;
        loop {
            let candidate: Vec<f64> = (0..d).map(|j| theta[j] - t * step[(j, 0)]).collect();
            let zc = scores(&candidate);
            let fc = objective(&candidate, &zc);
            if fc <= f - 1e-4 * t * descent || t < 1e-10 {
                theta = candidate;
                z = zc;
                f = fc;
                break;
            }
            t *= 0.5;
        }
        iterations += 1;
    }
    Logistic {
        b: theta[dim],
        w: theta[..dim].to_vec(),
        iterations,
        objective: f,
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `log(1 + e^z)` without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// A linear probe: one logistic regression per class against the rest (a single one for two
/// classes, as scikit-learn fits binary problems), prediction by the largest decision value.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Classes, sorted.
    pub classes: Vec<usize>,
    /// One model per class (one for two classes: class `classes[1]` against `classes[0]`).
    pub models: Vec<Logistic>,
}

impl Probe {
    /// Fits on `x` (`[n, dim]`) with labels `labels`.
    pub fn fit(x: &[f32], labels: &[usize], dim: usize, c: f64) -> Result<Probe> {
        let mut classes: Vec<usize> = labels.to_vec();
        classes.sort_unstable();
        classes.dedup();
        if classes.len() < 2 {
            return Err(BertError::Input(format!(
                "the probe's training split has {} class(es); it needs at least 2",
                classes.len()
            )));
        }
        let targets: Vec<usize> = if classes.len() == 2 {
            vec![classes[1]]
        } else {
            classes.clone()
        };
        let models = targets
            .iter()
            .map(|&k| {
                let y: Vec<bool> = labels.iter().map(|&l| l == k).collect();
                fit_logistic(x, &y, dim, c)
            })
            .collect();
        Ok(Probe { classes, models })
    }

    /// The predicted class of `x`.
    pub fn predict(&self, x: &[f32]) -> usize {
        if self.models.len() == 1 {
            return self.classes[usize::from(self.models[0].decision(x) > 0.0)];
        }
        let best = self
            .models
            .iter()
            .enumerate()
            .map(|(k, m)| (k, m.decision(x)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(k, _)| k);
        self.classes[best]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_averages_tied_ranks_like_scipy() {
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0]);
        // scipy.stats.spearmanr([1, 2, 2, 3, 5], [2, 1, 4, 4, 5]) = 0.7631578947368421 (scipy 1.x)
        let r = spearman(&[1.0, 2.0, 2.0, 3.0, 5.0], &[2.0, 1.0, 4.0, 4.0, 5.0]);
        assert!((r - 0.763_157_894_736_842_1).abs() < 1e-12, "{r}");
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[9.0, 5.0, 1.0]), -1.0);
    }

    #[test]
    fn logistic_regression_reaches_the_optimum() {
        // Two overlapping clouds in 3-D.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (n, dim) = (400, 3);
        let y: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
        let x: Vec<f32> = (0..n * dim)
            .map(|k| {
                let shift = if y[k / dim] { 0.5 } else { -0.5 };
                shift + rng.random_range(-1.0f32..1.0)
            })
            .collect();
        let c = 0.3;
        let m = fit_logistic(&x, &y, dim, c);
        assert!(m.iterations < 20);
        // At the optimum the gradient vanishes: check it independently, in f64 loops.
        let mut g = vec![0f64; dim + 1];
        for i in 0..n {
            let row = &x[i * dim..(i + 1) * dim];
            let r = c * (sigmoid(m.decision(row)) - f64::from(u8::from(y[i])));
            for (gj, &v) in g.iter_mut().zip(row) {
                *gj += r * v as f64;
            }
            g[dim] += r;
        }
        for (gj, w) in g.iter_mut().zip(&m.w) {
            *gj += w;
        }
        assert!(g.iter().all(|v| v.abs() < 1e-7), "{g:?}");
        // The fitted probe separates the clouds.
        let probe = Probe::fit(
            &x,
            &y.iter().map(|&b| usize::from(b)).collect::<Vec<_>>(),
            dim,
            c,
        )
        .unwrap();
        let correct = (0..n)
            .filter(|&i| probe.predict(&x[i * dim..(i + 1) * dim]) == usize::from(y[i]))
            .count();
        assert!(correct > n * 3 / 4, "{correct}");
    }

    #[test]
    fn three_classes_are_fit_one_against_the_rest() {
        let x: Vec<f32> = vec![0.0, 0.1, 5.0, 5.1, -5.0, -5.1, 0.2, 5.2, -5.2];
        let labels = vec![0, 0, 1, 1, 2, 2, 0, 1, 2];
        let probe = Probe::fit(&x, &labels, 1, 10.0).unwrap();
        assert_eq!(probe.models.len(), 3);
        assert_eq!(probe.predict(&[4.0]), 1);
        assert_eq!(probe.predict(&[-4.0]), 2);
        assert!(Probe::fit(&x[..2], &[1, 1], 1, 1.0).is_err());
    }
}
