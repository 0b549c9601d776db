//! Students initialised from the teacher's FFN.
//!
//! A dense FFN is a sum of neurons, and an FFF node is one neuron, so a forest can start from
//! the teacher's own neurons; the question is which neuron each node gets. Here the choice is
//! routing-aware and greedy, level by level: every token of a sample carries the importance of
//! each teacher neuron to it (`|act(z)| · ‖w_out‖`), a node takes the neuron with the largest
//! total importance over the tokens that reach it, and its own sign then splits those tokens
//! (right where the neuron fires), so a node's children are the neurons that matter where
//! their parent does or does not fire: the co-activation grouping of MoEfication, made to
//! follow the tree's routing. A chosen neuron's importance is spent for the tokens that reached
//! it, so no token gets one neuron twice. With depth 0 this picks the most important neurons
//! overall: the teacher-initialised dense shrink.
//!
//! A dense branch beside the trees takes the most important neurons overall (the dense
//! shrink's choice); the trees then choose among the rest, against the teacher's output less
//! the branch's. The output bias then absorbs the mean of what the unchosen neurons
//! contributed.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use fastfeedforward::{ConditionalLayer, Fff, FffConfig, Init};
use rayon::prelude::*;

/// A sample of one layer's FFN inputs and the teacher's outputs, `[rows, hidden]` each.
pub struct Sample<'a> {
    /// FFN inputs.
    pub x: &'a [f32],
    /// The teacher FFN's outputs (with its bias).
    pub y: &'a [f32],
}

/// A student FFF of `config` whose nodes are neurons of the teacher's FFN (`teacher`: a forest
/// of depth-0 trees, one per neuron, with the teacher's activation) chosen as the module docs
/// say, with its output bias (the sample's mean residual, so the teacher's own bias need not be
/// given).
pub fn from_teacher(
    teacher: &Fff,
    sample: &Sample<'_>,
    config: FffConfig,
) -> Result<(Fff, Vec<f32>)> {
    let student = gather(teacher, config, &choose(teacher, sample, config)?)?;
    let bias = residual_mean(&[&student], sample)?;
    Ok((student, bias))
}

/// A student of trees of `config` beside a dense branch of `branch` (depth-0 trees of the
/// teacher's activation), both of the teacher's neurons: the branch the most important
/// overall, the trees chosen among the others (as [`from_teacher`] does) against the
/// teacher's output less the branch's; with the output bias of both. Returns (trees, branch,
/// bias).
pub fn hybrid_from_teacher(
    teacher: &Fff,
    sample: &Sample<'_>,
    config: FffConfig,
    branch: FffConfig,
) -> Result<(Fff, Fff, Vec<f32>)> {
    let tc = *teacher.config();
    ensure!(
        branch.depth == 0 && branch.activation == tc.activation,
        "a dense branch is depth-0 trees of the teacher's activation"
    );
    let picked = choose(teacher, sample, branch)?;
    let branch = gather(teacher, branch, &picked)?;
    let rest: Vec<usize> = (0..tc.trees).filter(|j| !picked.contains(j)).collect();
    let others = gather(
        teacher,
        FffConfig::new(tc.input_width, tc.output_width, 0, rest.len())
            .with_activation(tc.activation),
        &rest,
    )?;
    let rows = sample.x.len() / tc.input_width;
    let x = Tensor::from_slice(sample.x, (rows, tc.input_width), &Device::Cpu)?;
    let yb = branch.forward_train(&x)?.flatten_all()?.to_vec1::<f32>()?;
    let less: Vec<f32> = sample.y.iter().zip(&yb).map(|(y, b)| y - b).collect();
    let remainder = Sample {
        x: sample.x,
        y: &less,
    };
    let trees = gather(&others, config, &choose(&others, &remainder, config)?)?;
    // The remainder is already the teacher's output less the branch's.
    let bias = residual_mean(&[&trees], &remainder)?;
    Ok((trees, branch, bias))
}

/// The teacher neuron (a tree of `teacher`) each node of `config` starts from, node-major.
fn choose(teacher: &Fff, sample: &Sample<'_>, config: FffConfig) -> Result<Vec<usize>> {
    let tc = *teacher.config();
    let (h, width) = (tc.input_width, tc.trees);
    ensure!(
        tc.depth == 0,
        "the teacher must be a forest of depth-0 trees"
    );
    let rows = sample.x.len() / h;
    ensure!(rows > 0 && sample.x.len() == rows * h && sample.y.len() == rows * h);
    let x = Tensor::from_slice(sample.x, (rows, h), &Device::Cpu)?;
    let z = x
        .matmul(&teacher.w_in().t()?)?
        .broadcast_add(teacher.b_in())?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let w_out_t = teacher.w_out_t().flatten_all()?.to_vec1::<f32>()?;
    let norms: Vec<f32> = w_out_t
        .chunks(h)
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect();
    let act = tc.activation;
    let mut importance: Vec<f32> = z
        .par_chunks(width)
        .flat_map_iter(|zr| {
            zr.iter()
                .zip(&norms)
                .map(move |(&v, n)| act.apply(v).abs() * n)
        })
        .collect();

    let m = config.nodes_per_tree();
    let mut chosen = vec![0usize; config.trees * m];
    let everyone: Vec<u32> = (0..rows as u32).collect();
    // The sample rows reaching each node of the level being filled, per tree.
    let mut reach: Vec<Vec<Vec<u32>>> = vec![vec![everyone.clone()]; config.trees];
    for level in 0..=config.depth {
        let first = (1 << level) - 1;
        // Where no sample row reaches a node any choice is a guess: the neuron most important
        // overall at the level's start, summed once per level, not once per empty node.
        let mut overall: Option<Vec<f64>> = None;
        let mut next: Vec<Vec<Vec<u32>>> = Vec::with_capacity(config.trees);
        for (t, level_rows) in reach.iter().enumerate() {
            let mut children = Vec::with_capacity(2 * level_rows.len());
            for (k, rows_here) in level_rows.iter().enumerate() {
                let mut path = Vec::with_capacity(level);
                let mut n = first + k;
                while n > 0 {
                    n = (n - 1) / 2;
                    path.push(chosen[t * m + n]);
                }
                let j = if rows_here.is_empty() {
                    let totals =
                        overall.get_or_insert_with(|| column_totals(&importance, width, &everyone));
                    best_neuron(totals, &path)
                } else {
                    best_neuron(&column_totals(&importance, width, rows_here), &path)
                };
                chosen[t * m + first + k] = j;
                for &r in rows_here {
                    importance[r as usize * width + j] = 0.0;
                }
                let (right, left): (Vec<u32>, Vec<u32>) = rows_here
                    .iter()
                    .partition(|&&r| z[r as usize * width + j] > 0.0);
                children.push(left);
                children.push(right);
            }
            next.push(children);
        }
        reach = next;
    }
    Ok(chosen)
}

/// The forest of `config` whose nodes (node-major) are the teacher's neurons `chosen`.
fn gather(teacher: &Fff, config: FffConfig, chosen: &[usize]) -> Result<Fff> {
    let h = teacher.config().input_width;
    let w_in = teacher.w_in().flatten_all()?.to_vec1::<f32>()?;
    let b_in = teacher.b_in().to_vec1::<f32>()?;
    let w_out_t = teacher.w_out_t().flatten_all()?.to_vec1::<f32>()?;
    let (mut wi, mut bi, mut wo) = (Vec::new(), Vec::new(), Vec::new());
    for &j in chosen {
        wi.extend_from_slice(&w_in[j * h..(j + 1) * h]);
        bi.push(b_in[j]);
        wo.extend_from_slice(&w_out_t[j * h..(j + 1) * h]);
    }
    Ok(Fff::from_node_major(config, wi, bi, wo)?)
}

/// A student of `config` (and a dense branch of `branch`, seeded apart) with the library's
/// initialisation (`init`, `seed`) and the output bias that makes its mean output the
/// teacher's on the sample.
pub fn random(
    config: FffConfig,
    branch: Option<FffConfig>,
    init: Init,
    seed: u64,
    sample: &Sample<'_>,
) -> Result<(Fff, Option<Fff>, Vec<f32>)> {
    let student = Fff::new(config, init, seed)?;
    let branch = branch
        .map(|b| Fff::new(b, init, seed ^ 0xB4A4_C400))
        .transpose()?;
    let parts: Vec<&Fff> = std::iter::once(&student).chain(&branch).collect();
    let bias = residual_mean(&parts, sample)?;
    Ok((student, branch, bias))
}

/// Each neuron's importance summed over `rows`.
fn column_totals(importance: &[f32], width: usize, rows: &[u32]) -> Vec<f64> {
    rows.par_chunks(256)
        .map(|c| {
            let mut acc = vec![0f64; width];
            for &r in c {
                let r = r as usize;
                for (a, &v) in acc.iter_mut().zip(&importance[r * width..(r + 1) * width]) {
                    *a += v as f64;
                }
            }
            acc
        })
        .reduce(|| vec![0f64; width], add)
}

/// The neuron outside `path` with the largest total.
fn best_neuron(totals: &[f64], path: &[usize]) -> usize {
    // Ties (an all-zero column) go to the lowest index, so the choice is deterministic.
    let mut best: Option<usize> = None;
    for (j, &t) in totals.iter().enumerate() {
        if !path.contains(&j) && best.is_none_or(|b| t > totals[b]) {
            best = Some(j);
        }
    }
    best.unwrap_or(0)
}

fn add(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
    a
}

/// The mean over the sample of the teacher's output less the sum of the students' (without
/// bias).
pub fn residual_mean(students: &[&Fff], sample: &Sample<'_>) -> Result<Vec<f32>> {
    let Some(first) = students.first() else {
        anyhow::bail!("residual_mean: no students");
    };
    let c = first.config();
    let (h_in, h) = (c.input_width, c.output_width);
    let rows = sample.x.len() / h_in;
    let x = Tensor::from_slice(sample.x, (rows, h_in), &Device::Cpu)?;
    let mut mean = vec![0f64; h];
    for student in students {
        let y = fastfeedforward::train_op::forward(
            student.config(),
            &x,
            student.w_in(),
            student.b_in(),
            student.w_out_t(),
        )?
        .flatten_all()?
        .to_vec1::<f32>()?;
        for ys in y.chunks(h) {
            for (m, a) in mean.iter_mut().zip(ys) {
                *m -= *a as f64;
            }
        }
    }
    for ts in sample.y.chunks(h) {
        for (m, b) in mean.iter_mut().zip(ts) {
            *m += *b as f64;
        }
    }
    Ok(mean.iter().map(|m| (m / rows as f64) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastfeedforward::Activation;
    use rand::{Rng, SeedableRng};

    /// A random teacher of `width` GELU neurons and a sample of its inputs and outputs.
    fn teacher(h: usize, width: usize, rows: usize) -> (Fff, Vec<f32>, Vec<f32>, Vec<f32>) {
        let c = FffConfig::new(h, h, 0, width).with_activation(Activation::Gelu);
        let t = Fff::new(c, Init::Normal { std: 0.5 }, 1).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let x: Vec<f32> = (0..rows * h).map(|_| rng.random_range(-1.0..1.0)).collect();
        let bias: Vec<f32> = (0..h).map(|i| i as f32 * 0.01).collect();
        let xt = Tensor::from_slice(&x, (rows, h), &Device::Cpu).unwrap();
        let y = t
            .forward_train(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let y: Vec<f32> = y
            .chunks(h)
            .flat_map(|r| r.iter().zip(&bias).map(|(a, b)| a + b))
            .collect();
        (t, bias, x, y)
    }

    #[test]
    fn a_depth_0_forest_of_every_neuron_is_the_teacher_itself() {
        let (t, bias, x, y) = teacher(8, 12, 64);
        let c = FffConfig::new(8, 8, 0, 12).with_activation(Activation::Gelu);
        let (s, b) = from_teacher(&t, &Sample { x: &x, y: &y }, c).unwrap();
        // Every neuron chosen once, so the output (and the bias, the unchosen remainder) match.
        for (a, e) in b.iter().zip(&bias) {
            assert!((a - e).abs() < 1e-4, "{a} vs {e}");
        }
        let mut rows = s.w_in().to_vec2::<f32>().unwrap();
        let mut want = t.w_in().to_vec2::<f32>().unwrap();
        rows.sort_by(|a, b| a[0].total_cmp(&b[0]));
        want.sort_by(|a, b| a[0].total_cmp(&b[0]));
        assert_eq!(rows, want);
    }

    #[test]
    fn a_branch_takes_the_most_important_neurons_and_the_trees_only_others() {
        let (t, bias, x, y) = teacher(6, 40, 200);
        let sample = Sample { x: &x, y: &y };
        let trees = FffConfig::new(6, 6, 2, 3).with_activation(Activation::Gelu);
        let branch = FffConfig::new(6, 6, 0, 4).with_activation(Activation::Gelu);
        let (s, b, _) = hybrid_from_teacher(&t, &sample, trees, branch).unwrap();
        let tw = t.w_in().to_vec2::<f32>().unwrap();
        let ids = |f: &Fff| -> Vec<usize> {
            f.w_in()
                .to_vec2::<f32>()
                .unwrap()
                .iter()
                .map(|r| tw.iter().position(|t| t == r).unwrap())
                .collect()
        };
        // The branch is the dense shrink's start: the 4 most important neurons overall.
        let alone = FffConfig::new(6, 6, 0, 4).with_activation(Activation::Gelu);
        let (shrink, _) = from_teacher(&t, &sample, alone).unwrap();
        assert_eq!(ids(&b), ids(&shrink));
        let (branch_ids, tree_ids) = (ids(&b), ids(&s));
        assert!(
            tree_ids.iter().all(|j| !branch_ids.contains(j)),
            "{tree_ids:?} share a neuron with the branch {branch_ids:?}"
        );
        // All 40 neurons, 4 in the branch and 36 as depth-0 trees: the teacher, bias included.
        let rest = FffConfig::new(6, 6, 0, 36).with_activation(Activation::Gelu);
        let (_, _, got) = hybrid_from_teacher(&t, &sample, rest, branch).unwrap();
        for (a, e) in got.iter().zip(&bias) {
            assert!((a - e).abs() < 1e-4, "{a} vs {e}");
        }
        // A branch of identity nodes is not the teacher's.
        let identity = FffConfig::new(6, 6, 0, 4).with_activation(Activation::Identity);
        assert!(hybrid_from_teacher(&t, &sample, trees, identity).is_err());
    }

    #[test]
    fn children_split_on_their_parents_sign_and_never_repeat_a_path_neuron() {
        let (t, _, x, y) = teacher(6, 40, 200);
        let c = FffConfig::new(6, 6, 3, 2).with_activation(Activation::Gelu);
        let (s, _) = from_teacher(&t, &Sample { x: &x, y: &y }, c).unwrap();
        // Rows of w_in identify the neurons (the teacher's biases are all zero).
        let tw = t.w_in().to_vec2::<f32>().unwrap();
        let sw = s.w_in().to_vec2::<f32>().unwrap();
        let neuron = |row: usize| tw.iter().position(|r| *r == sw[row]).unwrap();
        let m = c.nodes_per_tree();
        for tree in 0..2 {
            for leaf in 7..15 {
                let mut path = vec![leaf];
                let mut n = leaf;
                while n > 0 {
                    n = (n - 1) / 2;
                    path.push(n);
                }
                let mut ids: Vec<usize> = path.iter().map(|&n| neuron(tree * m + n)).collect();
                ids.sort();
                ids.dedup();
                assert_eq!(
                    ids.len(),
                    4,
                    "tree {tree} leaf {leaf}: a neuron twice on a path"
                );
            }
        }
        // The two roots are the two most important neurons overall, distinct.
        assert_ne!(neuron(0), neuron(m));
    }
}
