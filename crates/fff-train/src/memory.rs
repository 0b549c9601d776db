//! The memory a training run holds at once, estimated from its description before anything is
//! allocated, in named parts: a run too large for what the process may allocate is refused with
//! an error that says why, instead of dying on an allocation half-way into an epoch.
//!
//! What lives throughout the run (parameters, optimizer moments, a distillation teacher) is
//! added to the largest of its phases: a training step (gradients, a batch's activations and
//! their gradients), an evaluation pass, a checkpoint save, reading a checkpoint back. The
//! per-layer figures follow the buffers the layers' code makes, rounded up, and were checked
//! against the peak resident memory of training runs: candle keeps every intermediate tensor of
//! the forward pass until the backward pass is done and makes a fresh buffer for every op, so a
//! layer holds several tensors of its widest shape per input row.
//! Products are taken in `u128` and saturate, so no description overflows the estimate.

use crate::optim::OptimizerKind;
use crate::spec::{LayerSpec, ModelSpec};
use crate::state::TrainConfig;
use fastfeedforward::Activation;

/// Rows the evaluation passes run at once.
pub const EVAL_CHUNK: usize = 1024;

/// The sizes of a run that its memory depends on besides its model and settings.
#[derive(Clone, Copy, Debug)]
pub struct RunSize<'a> {
    /// Training inputs (the training set less the validation rows): a batch holds at most
    /// these many rows, whatever the batch size.
    pub train_rows: usize,
    /// Inputs of the largest set evaluated (validation or test); a pass holds at most
    /// [`EVAL_CHUNK`] of them.
    pub eval_rows: usize,
    /// Whether checkpoints are written: each save copies the optimizer state.
    pub checkpoint: bool,
    /// Whether the run resumes from a checkpoint, whose tensors are read beside the fresh
    /// model and optimizer.
    pub resume: bool,
    /// The distillation teacher's model, held and run beside the student.
    pub teacher: Option<&'a ModelSpec>,
}

/// The parts of the most a run of `spec` with `cfg` holds at once, each `(what, bytes)`:
/// parameters, optimizer state and a teacher throughout, and the parts of its largest phase.
pub fn training_memory(
    spec: &ModelSpec,
    cfg: &TrainConfig,
    run: RunSize<'_>,
) -> Vec<(String, u128)> {
    let params = parameters(spec);
    let moments = match cfg.optimizer {
        OptimizerKind::AdamW { .. } => ("AdamW's two moments", params.saturating_mul(2)),
        OptimizerKind::Sgd { .. } => ("SGD's momentum", params),
    };
    let batch = cfg.batch_size.min(run.train_rows).max(1);
    let eval = EVAL_CHUNK.min(run.eval_rows).max(1);
    let soft_levels = cfg.soft_routing.map_or(0, |s| s.levels);
    let mut parts = vec![
        ("parameters".to_string(), bytes(params)),
        (moments.0.to_string(), bytes(moments.1)),
    ];
    if let Some(teacher) = run.teacher {
        parts.push((
            "the distillation teacher's parameters".into(),
            bytes(parameters(teacher)),
        ));
    }

    let step = training_step(spec, soft_levels);
    let mut step_parts = vec![
        (
            "gradients".to_string(),
            bytes(params.saturating_add(step.gradient_copies)),
        ),
        (
            format!("a batch of {batch} rows' activations and their gradients"),
            bytes(step.per_row.saturating_mul(batch as u128)).saturating_add(step.index_bytes),
        ),
    ];
    if step.soft > 0 {
        step_parts.push((
            format!("soft routing's weight copies and reach matrices ({soft_levels} levels)"),
            bytes(step.soft),
        ));
    }
    if let Some(teacher) = run.teacher {
        step_parts.push((
            format!("the teacher's forward pass over {batch} rows"),
            bytes(inference(teacher, batch)),
        ));
    }

    let mut eval_floats = inference(spec, eval);
    if soft_levels > 0 {
        // The routing gap is measured with the soft training forward on the validation rows:
        // a step's activations without their gradients.
        eval_floats = eval_floats.max(step.per_row.saturating_mul(eval as u128) / 2);
    }
    let eval_parts = vec![(
        format!("an evaluation pass over {eval} rows"),
        bytes(eval_floats),
    )];

    let largest = largest_tensor(spec);
    // A save writes the model with its output weights in PyTorch's layout (a copy), then the
    // optimizer's moments as tensors (a copy), each tensor's bytes copied once more as written.
    let save_parts = vec![(
        "a checkpoint save's copies of the model and optimizer state".to_string(),
        bytes(params.max(moments.1).saturating_add(largest)),
    )];
    // Reading back: the model file's tensors, then the optimizer file's tensors and the vectors
    // they are checked into, beside the fresh model and optimizer.
    let load_parts = vec![(
        "reading the checkpoint back".to_string(),
        bytes(params.max(moments.1.saturating_mul(2))),
    )];

    let mut phases = vec![step_parts, eval_parts];
    if run.checkpoint {
        phases.push(save_parts);
    }
    if run.resume {
        phases.push(load_parts);
    }
    let total = |p: &Vec<(String, u128)>| p.iter().fold(0u128, |s, (_, b)| s.saturating_add(*b));
    let biggest = phases
        .into_iter()
        .max_by_key(total)
        .expect("a step and an evaluation");
    parts.extend(biggest);
    parts
}

/// Bytes of `n` f32 values.
fn bytes(n: u128) -> u128 {
    n.saturating_mul(4)
}

/// Trainable scalars of `spec` (each layer's bound, saturating).
fn parameters(spec: &ModelSpec) -> u128 {
    spec.layers().iter().fold(0u128, |p, l| {
        p.saturating_add(l.parameter_bound().map_or(u128::MAX, |n| n as u128))
    })
}

/// The largest single tensor of `spec`, in f32 values (a layer's bound stands for its tensors).
fn largest_tensor(spec: &ModelSpec) -> u128 {
    spec.layers()
        .iter()
        .map(|l| l.parameter_bound().map_or(u128::MAX, |n| n as u128))
        .max()
        .unwrap_or(0)
}

/// What a training step holds beyond the parameters' own gradients.
#[derive(Debug, Default)]
struct Step {
    /// f32 values per batch row: each layer's activations, their gradients and the
    /// temporaries of both passes, plus the input rows and the loss.
    per_row: u128,
    /// Bytes of index buffers independent of the batch (the FFF backward's row offsets).
    index_bytes: u128,
    /// f32 values of gradients made twice (a linear layer's weight gradient is made transposed
    /// and copied).
    gradient_copies: u128,
    /// f32 values soft routing adds: its gather of every FFF weight and the gradients of the
    /// gathered copies, and the reach matrices.
    soft: u128,
}

/// Saturating product of `factors`.
fn product(factors: &[u128]) -> u128 {
    factors.iter().fold(1u128, |p, &f| p.saturating_mul(f))
}

/// Saturating sum of `terms`.
fn sum(terms: &[u128]) -> u128 {
    terms.iter().fold(0u128, |s, &t| s.saturating_add(t))
}

/// f32 values per element that an activation's backward pass holds beyond its input, output and
/// gradient, as measured: the peak memory of FFF training steps grows per visited node and row
/// by about 4.4 values with identity nodes, 11 with ReLU, 12 with tanh and 21 with GELU (the
/// exact erf form, whose derivative candle builds from many temporaries).
fn activation_temporaries(a: Activation) -> u128 {
    match a {
        Activation::Identity => 0,
        Activation::Relu => 7,
        Activation::Tanh => 8,
        // GELU, and any activation added later: the most measured so far.
        _ => 17,
    }
}

/// `2^n` as u128, saturating.
fn pow2(n: usize) -> u128 {
    u32::try_from(n)
        .ok()
        .and_then(|n| 1u128.checked_shl(n))
        .unwrap_or(u128::MAX)
}

/// The training step's buffers of `spec`, its FFF layers routing their top `soft_levels`
/// levels softly (0: hard).
fn training_step(spec: &ModelSpec, soft_levels: usize) -> Step {
    let mut s = Step::default();
    let mut width = spec.input_width() as u128;
    // The batch's input rows, and the loss: log-softmax, its gradient and a few temporaries.
    s.per_row = sum(&[2 * width, product(&[8, spec.output_width() as u128])]);
    for layer in spec.layers() {
        let (i, o) = layer
            .widths()
            .map_or((width, width), |(i, o)| (i as u128, o as u128));
        let per_row = match layer {
            LayerSpec::Fff { config, master, .. } => {
                let act = activation_temporaries(config.activation);
                let (k, d) = (config.trees as u128, config.depth);
                let levels = d as u128 + 1;
                let rows = product(&[k, pow2(d + 1).saturating_sub(1)]);
                let soft = soft_levels.min(d);
                let (visited, extra) = if soft == 0 {
                    (product(&[k, levels]), 0)
                } else {
                    // A soft top of 2^L − 1 nodes, then 2^L hard subtrees of D + 1 − L levels,
                    // per tree; the soft nodes' log-probabilities and reach weights besides.
                    let (top, frontier) = (pow2(soft) - 1, pow2(soft));
                    let hard = product(&[k, frontier, levels - soft as u128]);
                    let soft_nodes = product(&[12 + act, k, top + frontier]);
                    let weights = layer.parameter_bound().map_or(u128::MAX, |n| n as u128);
                    let reach = product(&[2, k, top, k, top + frontier]);
                    s.soft = sum(&[s.soft, product(&[2, weights]), reach, rows]);
                    (hard, soft_nodes)
                };
                // Per visited node: its logit, the gradients of its activation and logit, its
                // entry in the backward's visit list (8 bytes), and the activation's backward
                // temporaries.
                s.index_bytes = sum(&[s.index_bytes, product(&[16, rows.saturating_add(1)])]);
                sum(&[
                    product(&[5 + act, visited]),
                    extra,
                    product(&[2, i + o]),
                    product(&[4, *master as u128]),
                    product(&[2, o]),
                ])
            }
            LayerSpec::Linear { .. } => {
                s.gradient_copies = sum(&[s.gradient_copies, product(&[i, o])]);
                sum(&[product(&[3, o]), product(&[2, i])])
            }
            LayerSpec::Act(a) => product(&[2 + activation_temporaries(*a), width]),
            LayerSpec::Original(c) => {
                let (d, lw) = (c.depth as u128, c.leaf_width.max(1) as u128);
                let leaves = pow2(c.depth);
                let nodes = leaves - 1;
                // The leaves' hidden weights laid out as one matrix, and its gradient.
                s.gradient_copies = sum(&[s.gradient_copies, product(&[leaves, lw, i])]);
                // Every leaf runs for every input: hidden layers, outputs, their mixture and
                // the path products, each with its gradient; the nodes' soft decisions and
                // their entropies.
                sum(&[
                    product(&[34, nodes]),
                    product(&[4, d, leaves]),
                    product(&[2, leaves]),
                    product(&[8 + activation_temporaries(c.activation), leaves, lw]),
                    product(&[6, leaves, o]),
                    product(&[2, i]),
                ])
            }
            LayerSpec::Flat(c) => {
                let d = c.depth as u128;
                sum(&[product(&[4, d, o]), product(&[4, d]), product(&[2, o]), i])
            }
        };
        s.per_row = s.per_row.saturating_add(per_row);
        width = o;
    }
    s
}

/// f32 values an inference pass of `spec` over `rows` rows holds: each layer's output, and the
/// FFF kernels' buffers: a copy of the top levels' weights (at most the layer's weights) and a
/// chunk of their logits (32 MiB, or 16 rows where those are more, never more than the pass's
/// rows), their path bookkeeping.
fn inference(spec: &ModelSpec, rows: usize) -> u128 {
    let rows = rows as u128;
    let mut width = spec.input_width() as u128;
    let mut total = product(&[
        rows,
        sum(&[width, product(&[4, spec.output_width() as u128])]),
    ]);
    for layer in spec.layers() {
        let o = layer.widths().map_or(width, |(_, o)| o as u128);
        let (per_row, fixed) = match layer {
            LayerSpec::Fff { config, master, .. } => {
                let weights = layer.parameter_bound().map_or(u128::MAX, |n| n as u128);
                let k = config.trees as u128;
                // The GEMM walk's columns: the top g ≤ 12 levels of every tree.
                let cols = product(&[k, pow2((config.depth + 1).min(12)) - 1]);
                let logits = (8u128 << 20)
                    .max(product(&[16, cols]))
                    .min(product(&[rows, cols]));
                let per_row = sum(&[product(&[2, o]), product(&[2, *master as u128])]);
                (per_row, sum(&[weights, logits, product(&[16, k])]))
            }
            LayerSpec::Linear { .. } => (product(&[2, o]), 0),
            LayerSpec::Act(_) => (product(&[2, width]), 0),
            // The hard walk groups the inputs by leaf: a list per leaf.
            LayerSpec::Original(c) => (sum(&[product(&[4, o]), 4]), product(&[6, pow2(c.depth)])),
            LayerSpec::Flat(c) => (sum(&[c.depth as u128, product(&[2, o])]), 0),
        };
        total = sum(&[total, product(&[rows, per_row]), fixed]);
        width = o;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::SoftSchedule;

    fn run(train_rows: usize) -> RunSize<'static> {
        RunSize {
            train_rows,
            eval_rows: 16,
            checkpoint: false,
            resume: false,
            teacher: None,
        }
    }

    fn part(parts: &[(String, u128)], name: &str) -> u128 {
        parts
            .iter()
            .find(|(what, _)| what.starts_with(name))
            .unwrap_or_else(|| panic!("no part `{name}` in {parts:?}"))
            .1
    }

    fn total(parts: &[(String, u128)]) -> u128 {
        parts.iter().map(|(_, b)| b).sum()
    }

    #[test]
    fn a_wide_forest_counts_its_visited_nodes_per_row() {
        // 1,000,000 trees of depth 4: 31 M nodes (counted as 32 M, the bound) of 2 + 1 + 3
        // weights, 5 M visited per input.
        let spec: ModelSpec = "fff:2-3:d4:k1000000".parse().unwrap();
        let cfg = TrainConfig::default();
        let parts = training_memory(&spec, &cfg, run(2400));
        let params = 32_000_000u128 * 6;
        assert_eq!(part(&parts, "parameters"), 4 * params);
        assert_eq!(part(&parts, "AdamW's two moments"), 8 * params);
        assert_eq!(part(&parts, "gradients"), 4 * params);
        // Per row: 22 values per visited GELU node (its logit, two gradients, its visit-list
        // entry and the activation's backward), the widths and the loss; row offsets of 16
        // bytes per node.
        let visited = 5_000_000u128;
        let per_row = 4 * (22 * visited + 2 * 5 + 2 * 3 + 2 * 2 + 8 * 3);
        let activations = part(&parts, "a batch of 64 rows'");
        assert_eq!(activations, 64 * per_row + 16 * (31_000_000 + 1));
        // More than a 7 GiB cap, most of it the batch's activations; identity nodes hold less.
        assert!(total(&parts) > 7 << 30 && activations > total(&parts) / 2);
        let identity: ModelSpec = "fff:2-3:d4:k1000000:identity".parse().unwrap();
        let parts = training_memory(&identity, &cfg, run(2400));
        assert_eq!(
            part(&parts, "a batch of 64 rows'"),
            64 * 4 * (5 * visited + 2 * 5 + 2 * 3 + 2 * 2 + 8 * 3) + 16 * (31_000_000 + 1)
        );
        // SGD keeps one buffer per parameter, not two.
        let sgd = TrainConfig {
            optimizer: OptimizerKind::Sgd { momentum: 0.9 },
            ..TrainConfig::default()
        };
        let parts = training_memory(&spec, &sgd, run(2400));
        assert_eq!(part(&parts, "SGD's momentum"), 4 * params);
    }

    #[test]
    fn a_batch_larger_than_the_data_counts_the_rows_used() {
        let spec: ModelSpec = "linear:2-1000, relu, linear:1000-3".parse().unwrap();
        let big = TrainConfig {
            batch_size: 1 << 20,
            ..TrainConfig::default()
        };
        let parts = training_memory(&spec, &big, run(2400));
        let named = part(&parts, "a batch of 2400 rows'");
        let exact = TrainConfig {
            batch_size: 2400,
            ..TrainConfig::default()
        };
        assert_eq!(
            named,
            part(
                &training_memory(&spec, &exact, run(2400)),
                "a batch of 2400 rows'"
            )
        );
        // A linear layer's weight gradient is counted twice (made transposed, then copied).
        assert_eq!(
            part(&parts, "gradients"),
            4 * (2 * 2000 + 1000 + 2 * 3000 + 3)
        );
    }

    #[test]
    fn checkpoints_resumes_and_teachers_add_their_copies() {
        let spec: ModelSpec = "fff:784-500:d8:identity, relu, fff:500-10:d8:identity"
            .parse()
            .unwrap();
        // One row per step: the copies of the state, not the activations, are the largest phase.
        let cfg = TrainConfig {
            batch_size: 1,
            ..TrainConfig::default()
        };
        let plain = training_memory(&spec, &cfg, run(60_000));
        let params = part(&plain, "parameters");
        let saved = training_memory(
            &spec,
            &cfg,
            RunSize {
                checkpoint: true,
                ..run(60_000)
            },
        );
        // The save (moments copied, plus the largest tensor) outweighs a step of this small net.
        assert!(part(&saved, "a checkpoint save") >= 2 * params, "{saved:?}");
        let resumed = training_memory(
            &spec,
            &cfg,
            RunSize {
                resume: true,
                ..run(60_000)
            },
        );
        assert_eq!(part(&resumed, "reading the checkpoint back"), 4 * params);
        let teacher: ModelSpec = "linear:784-1000, relu, linear:1000-10".parse().unwrap();
        let taught = training_memory(
            &spec,
            &cfg,
            RunSize {
                teacher: Some(&teacher),
                ..run(60_000)
            },
        );
        assert_eq!(
            part(&taught, "the distillation teacher's parameters"),
            4 * (784 * 1000 + 1000 + 1000 * 10 + 10)
        );
        assert!(total(&taught) > total(&plain));
    }

    #[test]
    fn an_evaluation_pass_can_be_the_largest_phase() {
        // A wide forest: its inference kernel's logits for a chunk of 1024 rows outweigh a
        // training step of one row.
        let spec: ModelSpec = "fff:16-16:d6:k64".parse().unwrap();
        let cfg = TrainConfig {
            batch_size: 1,
            ..TrainConfig::default()
        };
        let parts = training_memory(
            &spec,
            &cfg,
            RunSize {
                eval_rows: 10_000,
                ..run(1000)
            },
        );
        assert!(part(&parts, "an evaluation pass over 1024 rows") > 4 * 1024 * 64 * 127);
    }

    #[test]
    fn soft_routing_counts_its_reach_matrices_and_weight_copies() {
        let spec: ModelSpec = "fff:16-16:d6:k64".parse().unwrap();
        let hard = training_memory(&spec, &TrainConfig::default(), run(1000));
        let soft = TrainConfig {
            soft_routing: Some(SoftSchedule {
                levels: 2,
                start_temperature: 1.0,
                end_temperature: 0.01,
                hard_fraction: 0.2,
            }),
            ..TrainConfig::default()
        };
        let parts = training_memory(&spec, &soft, run(1000));
        let extra = part(&parts, "soft routing's");
        let (k, top, frontier) = (64u128, 3u128, 4u128);
        let weights = 64 * 128 * 33;
        assert_eq!(
            extra,
            4 * (2 * weights + 2 * k * top * k * (top + frontier) + 64 * 127)
        );
        assert!(part(&parts, "a batch of 64") > part(&hard, "a batch of 64"));
    }

    #[test]
    fn the_largest_descriptions_give_a_finite_figure() {
        // 2^32 − 1 nodes of width 65536 (as many as a layer may have), a batch of every row.
        let spec: ModelSpec = "fff:65536-65536:d20:k2048, orig:65536-4:d16:l65536"
            .parse()
            .unwrap();
        let cfg = TrainConfig {
            batch_size: usize::MAX,
            soft_routing: Some(SoftSchedule {
                levels: 20,
                start_temperature: 1.0,
                end_temperature: 0.5,
                hard_fraction: 0.0,
            }),
            ..TrainConfig::default()
        };
        let parts = training_memory(&spec, &cfg, run(usize::MAX));
        assert!(total(&parts) > 1 << 60, "{parts:?}");
    }
}
