//! The fast inference kernel against the plain reference descent and the dense masked oracle.

mod common;

use common::*;
use fastfeedforward::kernels::{self, reference};
use fastfeedforward::ConditionalLayer;
use fastfeedforward::{Activation, Fff, FffConfig, InferOptions, SimdLevel, Strategy, Workspace};

const STRATEGIES: [Strategy; 5] = Strategy::ALL;

/// The kernel's outputs and the nodes it visited. Recording the routes must not change a bit of
/// the outputs, so the plain call is run too and held to the same bits.
fn run_kernel(layer: &Fff, x: &[f32], batch: usize, opts: InferOptions) -> (Vec<f32>, Vec<u32>) {
    let mut y = vec![f32::NAN; batch * layer.config().output_width];
    let mut ws = Workspace::new();
    let routes = layer
        .forward_infer_routed(x, batch, &mut y, &mut ws, opts)
        .unwrap();
    let mut plain = vec![f32::NAN; y.len()];
    layer
        .forward_infer_with(x, batch, &mut plain, &mut ws, opts)
        .unwrap();
    assert!(
        y.iter()
            .zip(&plain)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "recording routes changed the outputs ({opts:?})"
    );
    (y, routes)
}

/// Every kernel this CPU can run, each strategy at each SIMD level, with a label for messages.
fn every_kernel() -> impl Iterator<Item = (InferOptions, String)> {
    SimdLevel::available().into_iter().flat_map(|simd| {
        STRATEGIES.into_iter().map(move |strategy| {
            (
                InferOptions { strategy, simd },
                format!("{simd:?} {strategy:?}"),
            )
        })
    })
}

#[test]
fn kernel_matches_reference_on_random_shapes() {
    let mut rng = rng(1);
    let mut flips = 0;
    let mut rows = 0;
    for case in 0..60 {
        let config = random_config(&mut rng, 12, 8);
        let layer = random_layer(config, case);
        let batch = [0, 1, 2, 5, 33, 200][case as usize % 6];
        let x = normal_vec(&mut rng, batch * config.input_width);
        let expected = Expected::new(&layer, &x, batch);
        for (opts, kernel) in every_kernel() {
            let (got, routes) = run_kernel(&layer, &x, batch, opts);
            let what = format!("case {case} {kernel} {config:?}");
            flips += expected.check(&got, Some(&routes), &what);
            rows += batch;
        }
    }
    assert!(
        flips * 1000 <= rows.max(1),
        "{flips} routing flips in {rows} rows"
    );
}

#[test]
fn kernel_matches_dense_masked_oracle() {
    let mut rng = rng(2);
    for case in 0..12 {
        let config = random_config(&mut rng, 8, 4);
        let layer = random_layer(config, 100 + case);
        let batch = 40;
        let x = normal_vec(&mut rng, batch * config.input_width);
        let oracle = layer
            .forward_reference(&tensor(x.clone(), batch, config.input_width))
            .unwrap();
        let (got, routes) = run_kernel(&layer, &x, batch, InferOptions::default());
        // Both against the f64 descent: either may flip a near tie, each on its own rows.
        let expected = Expected::new(&layer, &x, batch);
        expected.check(&got, Some(&routes), &format!("case {case} kernel"));
        expected.check(&flat(&oracle), None, &format!("case {case} oracle"));
    }
}

#[test]
fn large_batch_threads_and_single_thread_agree() {
    let config = FffConfig::new(100, 37, 9, 3);
    let layer = random_layer(config, 7);
    let batch = 3000;
    let x = normal_vec(&mut rng(3), batch * config.input_width);
    let expected = Expected::new(&layer, &x, batch);
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for strategy in STRATEGIES {
            let (got, routes) = pool.install(|| {
                run_kernel(
                    &layer,
                    &x,
                    batch,
                    InferOptions {
                        strategy,
                        ..Default::default()
                    },
                )
            });
            expected.check(
                &got,
                Some(&routes),
                &format!("{threads} threads {strategy:?}"),
            );
        }
    }
}

/// An encoder-sized forest (MiniLM's width, 31 trees of depth 4): the GEMM walk takes its
/// bottom levels in several passes of trees, each pass over the whole batch, so every tree
/// must be walked exactly once, at every SIMD level and thread count (the formats run the same
/// walk: tests/quantized.rs).
#[test]
fn encoder_forest_in_several_passes_matches_reference() {
    let config = FffConfig::new(384, 384, 4, 31);
    let layer = random_layer(config, 17);
    let batch = 70;
    let x = normal_vec(&mut rng(9), batch * config.input_width);
    let expected = Expected::new(&layer, &x, batch);
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for simd in SimdLevel::available() {
            for strategy in [Strategy::Auto, Strategy::Gemm] {
                let opts = InferOptions { strategy, simd };
                let (got, routes) = pool.install(|| run_kernel(&layer, &x, batch, opts));
                let what = format!("{threads} threads {simd:?} {strategy:?}");
                expected.check(&got, Some(&routes), &what);
            }
        }
    }
}

/// Outputs over the kernel's streaming threshold (16 MiB) and a batch over its chunk (16384
/// inputs): streamed stores on 64-byte boundaries and off them (the output buffer placed at
/// both), a short last chunk, and K = 2 (only the last tree streams).
#[test]
fn large_outputs_are_chunked_and_streamed() {
    for (out, trees) in [(1024, 1), (1030, 2)] {
        let config = FffConfig::new(24, out, 5, trees);
        let layer = random_layer(config, 9);
        let batch = 16384 + 300;
        let x = normal_vec(&mut rng(4), batch * config.input_width);
        let expected = Expected::new(&layer, &x, batch);
        let len = batch * out;
        let mut buf = vec![f32::NAN; len + 32];
        let first_aligned = (64 - buf.as_ptr() as usize % 64) % 64 / 4;
        for level in SimdLevel::available() {
            for shift in [0, 4] {
                let start = first_aligned + shift;
                let y = &mut buf[start..start + len];
                y.fill(f32::NAN);
                let opts = InferOptions {
                    strategy: Strategy::Bucketed,
                    simd: level,
                };
                let mut ws = Workspace::new();
                let routes = layer
                    .forward_infer_routed(&x, batch, y, &mut ws, opts)
                    .unwrap();
                let what = format!("out {out} {level:?} y 64-byte boundary + {shift} floats");
                expected.check(y, Some(&routes), &what);
            }
        }
    }
}

/// Infinite output rows reach only the inputs that visit their nodes: inputs that share other
/// rows with them (the bucketed walk writes outputs four inputs at a time) stay exact.
#[test]
fn non_finite_rows_stay_with_their_inputs() {
    let config = FffConfig::new(16, 20, 6, 1);
    let base = random_layer(config, 13);
    let mut w_out_t = flat(base.w_out_t());
    // Leaves (nodes 63..127) in the middle of their bottom subtrees, so that four-input groups
    // in leaf order straddle them.
    let poisoned = [66u32, 77, 90, 101, 115];
    for &n in &poisoned {
        w_out_t[n as usize * 20..(n as usize + 1) * 20].fill(f32::INFINITY);
    }
    let layer =
        Fff::from_node_major(config, flat(base.w_in()), flat(base.b_in()), w_out_t).unwrap();
    let batch = 2000;
    let x = normal_vec(&mut rng(8), batch * 16);
    let visits = |r: usize| {
        let path = layer.route(&x[r * 16..(r + 1) * 16]).unwrap();
        poisoned.iter().any(|n| path.contains(n))
    };
    let want = reference_output(&layer, &x, batch);
    let (mut clean, mut hit) = (0, 0);
    for strategy in STRATEGIES {
        let opts = InferOptions {
            strategy,
            ..Default::default()
        };
        let (got, _) = run_kernel(&layer, &x, batch, opts);
        for r in 0..batch {
            let (g, w) = (&got[r * 20..(r + 1) * 20], &want[r * 20..(r + 1) * 20]);
            if visits(r) {
                assert!(g.iter().any(|v| !v.is_finite()), "{strategy:?} row {r}");
                hit += 1;
            } else {
                for (a, b) in g.iter().zip(w) {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{strategy:?} row {r}"
                    );
                }
                clean += 1;
            }
        }
    }
    assert!(
        hit > 0 && clean > hit,
        "{hit} rows visit the nodes, {clean} do not"
    );
}

/// The kernel's sums run in an order fixed by the shapes, never by addresses: the same weights
/// and inputs copied to buffers at other alignments give the same bits, for every strategy and
/// SIMD level (training and checkpoint round trips rely on this).
#[test]
fn results_do_not_depend_on_buffer_alignment() {
    let config = FffConfig::new(100, 45, 6, 2);
    let layer = random_layer(config, 21);
    let batch = 300;
    let x = normal_vec(&mut rng(6), batch * config.input_width);
    let (w_in, b_in, w_out_t) = (
        flat(layer.w_in()),
        flat(layer.b_in()),
        flat(layer.w_out_t()),
    );
    let shifted = |v: &[f32], off: usize| {
        let mut buf = vec![0.0; off + v.len()];
        buf[off..].copy_from_slice(v);
        buf
    };
    for (opts, kernel) in every_kernel() {
        let mut first: Option<Vec<f32>> = None;
        for off in 0..17 {
            // Weights, inputs and outputs each at their own offset.
            let (x_off, y_off) = ((off * 5 + 3) % 17, (off * 3 + 1) % 17);
            let (wi, wo) = (shifted(&w_in, off), shifted(&w_out_t, off));
            let xs = shifted(&x, x_off);
            let view = kernels::FffWeightsView::new(config, &wi[off..], &b_in, &wo[off..]).unwrap();
            let mut y = vec![0.0; y_off + batch * config.output_width];
            let mut ws = Workspace::new();
            let (xs, ys) = (&xs[x_off..], &mut y[y_off..]);
            kernels::forward(&view, xs, batch, ys, &mut ws, opts).unwrap();
            let y = ys.to_vec();
            match &first {
                None => first = Some(y),
                Some(f) => assert!(
                    f.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{kernel}: offsets {off}/{x_off}/{y_off} changed the result"
                ),
            }
        }
    }
}

/// A layer whose nodes on levels of parity `parity` (0: even, 1: odd) have zero input weights
/// and bias: their z is exactly 0 for any input, so every such level is a tie and must go left.
fn layer_with_ties(config: FffConfig, parity: usize) -> Fff {
    let base = random_layer(config, 11);
    let m = config.nodes_per_tree();
    let mut w_in = flat(base.w_in());
    let mut b_in = flat(base.b_in());
    let w_out_t = flat(base.w_out_t());
    for t in 0..config.trees {
        for n in 0..m {
            let level = (usize::BITS - 1 - (n + 1).leading_zeros()) as usize;
            if level % 2 == parity {
                let row = t * m + n;
                w_in[row * config.input_width..(row + 1) * config.input_width].fill(0.0);
                b_in[row] = 0.0;
            }
        }
    }
    Fff::from_node_major(config, w_in, b_in, w_out_t).unwrap()
}

/// Ties on even levels and on odd ones: the bucketed walk takes a node and its children in one
/// pass (levels 3 and 4, 5 and 6 here), and a tie must go left at either.
#[test]
fn ties_go_left_everywhere() {
    for (activation, parity) in Activation::ALL.into_iter().flat_map(|a| [(a, 0), (a, 1)]) {
        let config = FffConfig::new(9, 5, 6, 2).with_activation(activation);
        let layer = layer_with_ties(config, parity);
        let batch = 300;
        let x = normal_vec(&mut rng(4), batch * config.input_width);
        for xb in x.chunks(config.input_width) {
            let path = layer.route(xb).unwrap();
            for tree_path in path.chunks(config.depth + 1) {
                for (level, pair) in tree_path.windows(2).enumerate() {
                    if level % 2 == parity {
                        assert_eq!(pair[1], 2 * pair[0] + 1, "tie at level {level} went right");
                    }
                }
            }
        }
        // A forced tie has z = 0 and a tolerance of 0, so it is never excused: every row must
        // take the reference's path, ties left.
        let expected = Expected::new(&layer, &x, batch);
        for (opts, kernel) in every_kernel() {
            let (got, routes) = run_kernel(&layer, &x, batch, opts);
            let flips = expected.check(&got, Some(&routes), &format!("ties {kernel}"));
            assert_eq!(flips, 0, "{activation} parity {parity} {kernel}");
        }
        let train = layer
            .forward_train(&tensor(x.clone(), batch, config.input_width))
            .unwrap();
        assert_eq!(expected.check(&flat(&train), None, "ties train"), 0);
    }
}

/// The documented rule: NaN goes left. A NaN in an input makes every logit of every tree NaN,
/// so each walk must send that input down the leftmost path, and with the identity activation
/// every output it touches is NaN: whichever path it took, its output would be NaN, so only the
/// routes the kernel reports can show a NaN sent right. The clean inputs beside it (in its tile,
/// quad and bucket) must come out as the reference's.
#[test]
fn nan_inputs_go_left_in_every_walk() {
    for depth in [5, 6] {
        // Levels 6 and 7: the bucketed walk's bottom ends on a lone level and on a pair.
        let config = FffConfig::new(12, 5, depth, 2).with_activation(Activation::Identity);
        let layer = random_layer(config, 5);
        let leftmost: Vec<u32> = (0..config.trees)
            .flat_map(|_| (0..=depth).map(|l| (1u32 << l) - 1))
            .collect();
        // 1 input, a tile and one more, and enough for grouped buckets.
        for batch in [1, 9, 800] {
            let mut x = normal_vec(&mut rng(12), batch * 12);
            let poisoned = |r: usize| r.is_multiple_of(3);
            for r in (0..batch).filter(|&r| poisoned(r)) {
                x[r * 12 + r % 12] = f32::NAN;
            }
            let expected = Expected::new(&layer, &x, batch);
            for (opts, kernel) in every_kernel() {
                let (got, routes) = run_kernel(&layer, &x, batch, opts);
                let what = format!("depth {depth} batch {batch} {kernel}");
                for r in (0..batch).filter(|&r| poisoned(r)) {
                    let route = &routes[r * leftmost.len()..(r + 1) * leftmost.len()];
                    assert_eq!(route, leftmost, "{what}: NaN input {r} did not go left");
                    let y = &got[r * 5..(r + 1) * 5];
                    assert!(y.iter().all(|v| v.is_nan()), "{what}: row {r} is {y:?}");
                }
                expected.check(&got, Some(&routes), &what);
            }
            assert_eq!(layer.route(&x[..12]).unwrap(), leftmost, "the reference");
        }
    }
}

/// NaN logits deep in the tree, on the node and on the child levels of the bucketed walk's
/// paired passes (levels 3 and 4, 5 and 6 here): those inputs go left, as in the reference.
/// ReLU maps NaN to 0, so the path after a NaN node shows in the output.
#[test]
fn nan_logits_go_left_in_every_walk() {
    let config = FffConfig::new(16, 8, 6, 1).with_activation(Activation::Relu);
    let base = random_layer(config, 17);
    let mut w_in = flat(base.w_in());
    // One node on each of levels 3, 4, 5 and 6.
    for n in [9usize, 20, 40, 100] {
        w_in[n * 16..(n + 1) * 16].fill(f32::NAN);
    }
    let layer =
        Fff::from_node_major(config, w_in, flat(base.b_in()), flat(base.w_out_t())).unwrap();
    // Enough inputs that buckets (8, at level 3) are walked grouped.
    let batch = 800;
    let x = normal_vec(&mut rng(9), batch * 16);
    let nan_paths = (0..batch)
        .filter(|&r| {
            let path = layer.route(&x[r * 16..(r + 1) * 16]).unwrap();
            path.iter().any(|n| [9, 20, 40, 100].contains(n))
        })
        .count();
    assert!(nan_paths >= 20, "only {nan_paths} inputs meet a NaN node");
    let expected = Expected::new(&layer, &x, batch);
    for (opts, kernel) in every_kernel() {
        let (got, routes) = run_kernel(&layer, &x, batch, opts);
        expected.check(&got, Some(&routes), &kernel);
    }
}

/// Depth 2, one tree, width 2, identity activation, one output whose row of node n is [n]:
///   node 0: z = x0          node 1: z = x1 - 1      node 2: z = x1 + 1
///   node 6: z = x0 + x1     (nodes 3, 4, 5: z = 0)
#[test]
fn hand_worked_example() {
    let config = FffConfig::new(2, 1, 2, 1).with_activation(Activation::Identity);
    let mut w_in = vec![0f32; 7 * 2];
    let mut b_in = vec![0f32; 7];
    w_in[0..2].copy_from_slice(&[1.0, 0.0]);
    w_in[2..4].copy_from_slice(&[0.0, 1.0]);
    b_in[1] = -1.0;
    w_in[4..6].copy_from_slice(&[0.0, 1.0]);
    b_in[2] = 1.0;
    w_in[12..14].copy_from_slice(&[1.0, 1.0]);
    let w_out_t: Vec<f32> = (0..7).map(|n| n as f32).collect();
    let layer = Fff::from_node_major(config, w_in, b_in, w_out_t).unwrap();

    // x = [2, 3]: z0 = 2 > 0 -> node 2; z2 = 4 > 0 -> node 6; z6 = 5.  y = 0·2 + 2·4 + 6·5 = 38.
    // x = [-1, 0.5]: z0 = -1 -> node 1; z1 = -0.5 -> node 3; z3 = 0.  y = 1·(-0.5) = -0.5.
    // x = [0, 5]: z0 = 0, a tie -> node 1; z1 = 4 -> node 4; z4 = 0.  y = 1·4 = 4.
    let cases: [([f32; 2], [u32; 3], f32); 3] = [
        ([2.0, 3.0], [0, 2, 6], 38.0),
        ([-1.0, 0.5], [0, 1, 3], -0.5),
        ([0.0, 5.0], [0, 1, 4], 4.0),
    ];
    for (x, path, y) in cases {
        assert_eq!(layer.route(&x).unwrap(), path.to_vec(), "route of {x:?}");
        for strategy in STRATEGIES {
            let (got, routes) = run_kernel(
                &layer,
                &x,
                1,
                InferOptions {
                    strategy,
                    ..Default::default()
                },
            );
            assert_eq!(got, vec![y], "output of {x:?} with {strategy:?}");
            assert_eq!(
                routes,
                path.to_vec(),
                "kernel route of {x:?} with {strategy:?}"
            );
        }
        let t = layer.forward_train(&tensor(x.to_vec(), 1, 2)).unwrap();
        assert_eq!(flat(&t), vec![y]);
        let r = layer.forward_reference(&tensor(x.to_vec(), 1, 2)).unwrap();
        assert_eq!(flat(&r), vec![y]);
    }
}

#[test]
fn reference_descent_route_matches_kernel_view() {
    // The public route() is the plain reference's route.
    let config = FffConfig::new(17, 3, 5, 3);
    let layer = random_layer(config, 9);
    let x = normal_vec(&mut rng(5), config.input_width);
    let via_view = layer.with_view(|w| reference::route(&w, &x)).unwrap();
    assert_eq!(layer.route(&x).unwrap(), via_view);
    assert_eq!(via_view.len(), config.used_nodes());
}

#[test]
fn bad_buffers_are_errors_not_panics() {
    let config = FffConfig::new(8, 4, 2, 1);
    let layer = random_layer(config, 1);
    let mut ws = Workspace::new();
    let mut y = vec![0f32; 4];
    let err = layer
        .forward_infer_with(&[0.0; 7], 1, &mut y, &mut ws, InferOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("input"), "{err}");
    let err = layer
        .forward_infer_with(
            &[0.0; 8],
            1,
            &mut [0.0; 3],
            &mut ws,
            InferOptions::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("output"), "{err}");
    let view_err = kernels::FffWeightsView::new(config, &[0.0; 3], &[0.0; 7], &[0.0; 28]);
    assert!(view_err.unwrap_err().to_string().contains("w_in"));
    let err = layer
        .with_view(|w| {
            let opts = InferOptions::default();
            kernels::forward_with_routes(&w, &[0.0; 8], 1, &mut y, &mut ws, opts, &mut [0; 2])
        })
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("routes"), "{err}");
}

/// One tree of depth 1 whose root decides `x = [1, -0.5, 0.25, 2]` with `z = bias + 1.375`, and
/// `batch` copies of `x`; and the outputs of every copy sent left (the path `[0, 1]`).
fn root_decided_by(bias: f32, batch: usize) -> (Fff, Vec<f32>, Vec<f32>) {
    let config = FffConfig::new(4, 2, 1, 1).with_activation(Activation::Identity);
    let base = random_layer(config, 3);
    let mut w_in = flat(base.w_in());
    w_in[..4].fill(0.5);
    let mut b_in = flat(base.b_in());
    b_in[0] = bias;
    let layer = Fff::from_node_major(config, w_in, b_in, flat(base.w_out_t())).unwrap();
    let x: Vec<f32> = (0..batch).flat_map(|_| [1.0, -0.5, 0.25, 2.0]).collect();
    let left = layer
        .with_view(|w| output_along(&w, &x[..4], &[0, 1]))
        .unwrap();
    let y = (0..batch)
        .flat_map(|_| left.iter().map(|&v| v as f32))
        .collect();
    (layer, x, y)
}

/// The checker excuses a near-tie flip (here `z = 1.2e-7` against a rounding bound of 2e-6,
/// which the rule sends right) in one row of a batch, and in the 2% of rows it allows.
#[test]
fn near_tie_flips_are_excused_up_to_the_cap() {
    let bias = -1.3749999;
    for batch in [1, 50, 100] {
        let (layer, x, y) = root_decided_by(bias, batch);
        assert_eq!(layer.route(&x[..4]).unwrap(), [0, 2], "the rule goes right");
        let expected = Expected::new(&layer, &x, batch);
        let flipped = max_excused(batch);
        // The first `flipped` rows go left, the others right as the rule says.
        let (mut got, want) = (y.clone(), expected.reference());
        got[flipped * 2..].copy_from_slice(&want[flipped * 2..]);
        let routes: Vec<u32> = (0..batch)
            .flat_map(|r| [0, if r < flipped { 1 } else { 2 }])
            .collect();
        assert_eq!(expected.check(&got, Some(&routes), "routes"), flipped);
        assert_eq!(expected.check(&got, None, "outputs"), flipped);
    }
}

/// One flip more than the cap fails, with routes reported or without.
#[test]
#[should_panic(expected = "rows excused as near-tie flips, more than the 2 allowed")]
fn near_tie_flips_beyond_the_cap_fail() {
    let (layer, x, y) = root_decided_by(-1.3749999, 100);
    let expected = Expected::new(&layer, &x, 100);
    let mut got = expected.reference();
    got[..6].copy_from_slice(&y[..6]);
    expected.check(&got, None, "three flips");
}

/// A flip at a decision that is not within rounding of its boundary is never excused.
#[test]
#[should_panic(expected = "at a decision that is not a near tie")]
fn a_flip_away_from_a_tie_fails() {
    // z = 1e-4: small, but fifty times the rounding bound.
    let (layer, x, y) = root_decided_by(-1.3749, 1);
    let expected = Expected::new(&layer, &x, 1);
    expected.check(&y, Some(&[0, 1]), "flip");
}

/// Forests of many short trees: at small batches the trees are split across threads (each
/// into its own outputs, summed), at larger ones rows of several trees share an output pass,
/// and the GEMM walk takes the top levels; every walk at 1 and 2 threads, batches 1 to 40.
#[test]
fn many_short_trees_on_every_walk() {
    for (trees, depth) in [(40, 0), (37, 1), (24, 3)] {
        let config = FffConfig::new(33, 19, depth, trees);
        let layer = random_layer(config, 300 + trees as u64);
        for batch in [1, 5, 40] {
            let x = normal_vec(&mut rng(301), batch * config.input_width);
            let expected = Expected::new(&layer, &x, batch);
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for (opts, kernel) in every_kernel() {
                    let (got, routes) = pool.install(|| run_kernel(&layer, &x, batch, opts));
                    let what = format!("{trees}x{depth} batch {batch} {threads}t {kernel}");
                    expected.check(&got, Some(&routes), &what);
                }
            }
        }
    }
}
