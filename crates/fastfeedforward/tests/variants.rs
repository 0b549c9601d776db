//! The original FFF against the `fastfeedforward` package's formulas (fixture written by
//! `tools/original_fff_reference.py`) and a plain f64 descent; the flat FFF's inference, routes,
//! training forward and gradients against a plain f64 reference of its definition.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{assert_excused_within_cap, is_near_tie, row_matches, tie_tolerance};
use fastfeedforward::ConditionalLayer;
use fastfeedforward::{FlatFff, FlatFffConfig, OriginalFff, OriginalFffConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Inference on flat buffers through the layer interface.
fn infer(
    layer: &dyn ConditionalLayer,
    x: &[f32],
    batch: usize,
) -> fastfeedforward::Result<Vec<f32>> {
    let mut y = vec![0f32; batch * layer.output_width()];
    layer.forward_infer_into(x, batch, &mut y, &mut fastfeedforward::Workspace::new())?;
    Ok(y)
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/original_fff")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// |got − want| ≤ 1e-5 + 1e-5·|want| everywhere (the fixture's recommended tolerance).
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 + 1e-5 * w.abs(),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

struct Case {
    name: String,
    layer: OriginalFff,
    x: Tensor,
    t: HashMap<String, Tensor>,
}

fn cases() -> Vec<Case> {
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("index.json")).unwrap())
            .unwrap();
    let list = index["cases"].as_array().expect("cases");
    assert!(list.len() >= 4);
    list.iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_string();
            let path = fixture_dir().join(format!("case_{name}.safetensors"));
            let t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
            let dims = |k: &str| c[k].as_u64().unwrap() as usize;
            let config = OriginalFffConfig::new(
                dims("input_width"),
                dims("leaf_width"),
                dims("output_width"),
                dims("depth"),
            );
            let layer = OriginalFff::from_tensors(config, &t, "", &path).unwrap();
            let x = t["x"].clone();
            Case { name, layer, x, t }
        })
        .collect()
}

#[test]
fn soft_training_forward_matches_the_package() {
    for c in cases() {
        let out = c.layer.forward_soft(&c.x, false, None).unwrap();
        assert_close(
            &format!("{} soft output", c.name),
            &values(&out.output),
            &values(&c.t["soft_output"]),
        );
        assert_close(
            &format!("{} mixture", c.name),
            &values(&out.mixture),
            &values(&c.t["soft_mixture"]),
        );
        assert_close(
            &format!("{} entropies", c.name),
            &values(&out.node_entropies),
            &values(&c.t["entropies"]),
        );
    }
}

#[test]
fn hard_training_forward_matches_the_package() {
    for c in cases() {
        let out = c.layer.forward_soft(&c.x, true, None).unwrap();
        assert_close(
            &format!("{} hard", c.name),
            &values(&out.output),
            &values(&c.t["hard_train_output"]),
        );
    }
}

#[test]
fn hard_inference_matches_the_package_with_b2_and_routes_alike() {
    for c in cases() {
        let b = c.x.dim(0).unwrap();
        let x = values(&c.x);
        let fast = infer(&c.layer, &x, b).unwrap();
        assert_close(
            &format!("{} eval", c.name),
            &fast,
            &values(&c.t["eval_output"]),
        );
        let reference: Vec<f32> = c
            .layer
            .forward_reference(&x, b)
            .unwrap()
            .iter()
            .map(|&v| v as f32)
            .collect();
        assert_close(
            &format!("{} reference", c.name),
            &reference,
            &values(&c.t["eval_output"]),
        );
        // The package's naive evaluation drops b2; ours does not, and the difference is b2.
        let naive = values(&c.t["eval_naive_without_b2"]);
        let leaves = c.t["leaves"]
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec1::<i64>()
            .unwrap();
        let b2 = values(&c.t["b2s"]);
        let cout = c.layer.config().output_width;
        let cin = c.layer.config().input_width;
        for i in 0..b {
            let (leaf, _) = c.layer.route(&x[i * cin..(i + 1) * cin]).unwrap();
            assert_eq!(leaf as i64, leaves[i], "{}: input {i} leaf", c.name);
            for o in 0..cout {
                let diff = fast[i * cout + o] - naive[i * cout + o];
                assert!((diff - b2[leaf * cout + o]).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn region_leak_and_hardening_terms_behave() {
    let config = OriginalFffConfig {
        region_leak: 1.0,
        ..OriginalFffConfig::new(6, 3, 2, 3)
    };
    let layer = OriginalFff::new(config, 7).unwrap();
    let x = Tensor::randn(0f32, 1.0, (5, 6), &Device::Cpu).unwrap();
    let plain = layer.forward_soft(&x, false, None).unwrap();
    let leaked = layer.forward_soft(&x, false, Some(1)).unwrap();
    // A leak of 1 flips every decision: the same as negating every node's logit.
    let mut named: HashMap<String, Tensor> = layer.named_tensors("").unwrap().into_iter().collect();
    for k in ["node_weights", "node_biases"] {
        let t = named[k].neg().unwrap();
        named.insert(k.into(), t);
    }
    let negated = OriginalFff::from_tensors(config, &named, "", Path::new("mem")).unwrap();
    let mirrored = negated.forward_soft(&x, false, None).unwrap();
    assert_close(
        "leak 1",
        &values(&leaked.mixture),
        &values(&mirrored.mixture),
    );
    assert_close(
        "leak 1 output",
        &values(&leaked.output),
        &values(&mirrored.output),
    );
    let m = values(&plain.mixture);
    assert!(values(&leaked.mixture) != m, "the leak changed nothing");
    // Mixtures are distributions, and entropies are within [0, ln 2].
    for b in 0..5 {
        let s: f32 = m[b * 8..(b + 1) * 8].iter().sum();
        assert!((s - 1.0).abs() < 1e-5);
    }
    for e in values(&plain.node_entropies) {
        assert!((0.0..=std::f32::consts::LN_2 + 1e-6).contains(&e));
    }
    // The soft output is differentiable with respect to every parameter.
    let grads = plain.output.sum_all().unwrap().backward().unwrap();
    for v in layer.vars() {
        assert!(grads.get(v.as_tensor()).is_some());
    }
}

#[test]
fn bad_original_configs_and_shapes_are_errors() {
    assert!(OriginalFff::new(OriginalFffConfig::new(0, 1, 1, 1), 0).is_err());
    let mut c = OriginalFffConfig::new(3, 1, 1, 1);
    c.region_leak = 1.5;
    assert!(OriginalFff::new(c, 0).is_err());
    let layer = OriginalFff::new(OriginalFffConfig::new(3, 2, 2, 2), 0).unwrap();
    assert!(infer(&layer, &[0.0; 5], 2).is_err());
    let x = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(layer.forward_soft(&x, false, None).is_err());
    let named: HashMap<String, Tensor> = layer.named_tensors("").unwrap().into_iter().collect();
    let mut broken = named.clone();
    broken.insert(
        "w1s".into(),
        Tensor::zeros((4, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let err = OriginalFff::from_tensors(*layer.config(), &broken, "", Path::new("m.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("w1s") && err.contains("m.safetensors"),
        "{err}"
    );
    broken.remove("w1s");
    assert!(OriginalFff::from_tensors(*layer.config(), &broken, "", Path::new("m")).is_err());
}

/// The flat FFF by its definition (the community's "flat structure" FFF, `FFF_v2`): with `X`
/// `[in, D]` and `Y` `[2^D − 1, out]`, `λ_d = Σ_i x_i·X[i][d]`; the path starts at node 0 and
/// turns right after level `d` iff `λ_d > 0` (a tie and NaN go left); `y = Σ_d λ_d·Y[node_d]`.
/// Scalar loops in f64 over the layer's parameters, nothing shared with the layer's code.
struct FlatReference {
    cin: usize,
    cout: usize,
    depth: usize,
    /// `X`, `[in, D]`.
    planes: Vec<f64>,
    /// `Y`, `[2^D − 1, out]`.
    rows: Vec<f64>,
}

impl FlatReference {
    fn of(layer: &FlatFff) -> Self {
        let c = layer.config();
        let named: HashMap<String, Tensor> = layer.named_tensors("").unwrap().into_iter().collect();
        let f64s = |t: &Tensor| values(t).into_iter().map(f64::from).collect();
        FlatReference {
            cin: c.input_width,
            cout: c.output_width,
            depth: c.depth,
            planes: f64s(&named["X"]),
            rows: f64s(&named["Y"]),
        }
    }

    /// `λ` of one input, exact in f64.
    fn lambdas(&self, x: &[f32]) -> Vec<f64> {
        (0..self.depth)
            .map(|d| {
                (0..self.cin)
                    .map(|i| x[i] as f64 * self.planes[i * self.depth + d])
                    .sum()
            })
            .collect()
    }

    /// How far an f32 evaluation of each `λ_d` may be from the exact one ([`tie_tolerance`]).
    fn tolerances(&self, x: &[f32]) -> Vec<f64> {
        (0..self.depth)
            .map(|d| {
                let plane: Vec<f32> = (0..self.cin)
                    .map(|i| self.planes[i * self.depth + d] as f32)
                    .collect();
                tie_tolerance(&plane, 0.0, x)
            })
            .collect()
    }

    /// The nodes visited when the turn after level `d` is right iff `right[d]`.
    fn path(&self, right: &[bool]) -> Vec<usize> {
        let mut node = 0;
        let mut path = Vec::with_capacity(self.depth);
        for &r in &right[..self.depth] {
            path.push(node);
            node = 2 * node + 1 + usize::from(r);
        }
        path
    }

    /// `Σ_d λ_d·Y[path_d]`.
    fn output(&self, lambdas: &[f64], path: &[usize]) -> Vec<f64> {
        (0..self.cout)
            .map(|o| {
                lambdas
                    .iter()
                    .zip(path)
                    .map(|(l, &n)| l * self.rows[n * self.cout + o])
                    .sum()
            })
            .collect()
    }

    /// The sign patterns a correct implementation may read from `x`'s `λ`: the rule's first,
    /// then every other choice at the levels whose `λ_d` is within rounding of 0.
    fn admissible_signs(&self, x: &[f32]) -> Vec<Vec<bool>> {
        let (lambdas, tolerances) = (self.lambdas(x), self.tolerances(x));
        let rule: Vec<bool> = lambdas.iter().map(|&l| l > 0.0).collect();
        let near: Vec<usize> = (0..self.depth)
            .filter(|&d| is_near_tie(lambdas[d], tolerances[d]))
            .collect();
        assert!(near.len() <= 6, "{} near ties in one input", near.len());
        (0..1usize << near.len())
            .map(|flips| {
                let mut signs = rule.clone();
                for (k, &d) in near.iter().enumerate() {
                    signs[d] ^= flips >> k & 1 == 1;
                }
                signs
            })
            .collect()
    }

    /// Holds `got` (`[batch, out]`) to the outputs along admissible paths; returns how many
    /// rows took another path than the rule's, within the shared cap.
    fn check(&self, x: &[f32], got: &[f32], what: &str) -> usize {
        let batch = got.len() / self.cout;
        assert_eq!(x.len(), batch * self.cin, "{what}: batch");
        let mut excused = 0;
        for b in 0..batch {
            let xb = &x[b * self.cin..(b + 1) * self.cin];
            let g = &got[b * self.cout..(b + 1) * self.cout];
            let lambdas = self.lambdas(xb);
            let outputs: Vec<Vec<f32>> = self
                .admissible_signs(xb)
                .iter()
                .map(|s| {
                    let y = self.output(&lambdas, &self.path(s));
                    y.into_iter().map(|v| v as f32).collect()
                })
                .collect();
            match outputs.iter().position(|o| row_matches(g, o, self.cin)) {
                Some(0) => {}
                Some(_) => excused += 1,
                None => panic!(
                    "{what}: row {b} is {g:?}, not the reference's {:?} nor a near-tie \
                     alternative",
                    outputs[0]
                ),
            }
        }
        assert_excused_within_cap(excused, batch, what);
        excused
    }

    /// Gradients of `Σ y ⊙ g` along each input's path: `∂/∂X[i][d] = Σ_b x_bi·(g_b·Y[node_bd])`,
    /// `∂/∂Y[n] = Σ_b Σ_{d: node_bd = n} λ_bd·g_b`, `∂/∂x_bi = Σ_d X[i][d]·(g_b·Y[node_bd])`.
    fn gradients(&self, x: &[f32], g: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let batch = g.len() / self.cout;
        let (mut dx_planes, mut dy_rows) =
            (vec![0.0; self.planes.len()], vec![0.0; self.rows.len()]);
        let mut dx = vec![0.0; x.len()];
        for b in 0..batch {
            let xb = &x[b * self.cin..(b + 1) * self.cin];
            let gb = &g[b * self.cout..(b + 1) * self.cout];
            let lambdas = self.lambdas(xb);
            let right: Vec<bool> = lambdas.iter().map(|&l| l > 0.0).collect();
            for (d, &n) in self.path(&right).iter().enumerate() {
                let row = &self.rows[n * self.cout..(n + 1) * self.cout];
                let g_dot_row: f64 = gb.iter().zip(row).map(|(&a, &r)| a as f64 * r).sum();
                for i in 0..self.cin {
                    dx_planes[i * self.depth + d] += xb[i] as f64 * g_dot_row;
                    dx[b * self.cin + i] += self.planes[i * self.depth + d] * g_dot_row;
                }
                for o in 0..self.cout {
                    dy_rows[n * self.cout + o] += lambdas[d] * gb[o] as f64;
                }
            }
        }
        (dx_planes, dy_rows, dx)
    }

    /// `Σ y ⊙ g` over the batch, for finite differences of [`FlatReference::gradients`].
    fn loss(&self, x: &[f32], g: &[f32]) -> f64 {
        x.chunks(self.cin)
            .zip(g.chunks(self.cout))
            .map(|(xb, gb)| {
                let lambdas = self.lambdas(xb);
                let right: Vec<bool> = lambdas.iter().map(|&l| l > 0.0).collect();
                let y = self.output(&lambdas, &self.path(&right));
                y.iter().zip(gb).map(|(y, &g)| y * g as f64).sum::<f64>()
            })
            .sum()
    }
}

fn flat_layer(cin: usize, cout: usize, depth: usize, seed: u64) -> FlatFff {
    let config = FlatFffConfig {
        input_width: cin,
        output_width: cout,
        depth,
    };
    FlatFff::new(config, seed).unwrap()
}

/// The layer's own routes: each input's nodes must follow the signs of its own `λ`, which must
/// be within rounding of the exact ones, and make an admissible sign pattern; `route_batch`
/// reports the same `λ` and the sign pattern as the region, first level most significant.
fn check_flat_routes(layer: &FlatFff, reference: &FlatReference, x: &[f32], what: &str) {
    let cin = reference.cin;
    let batch = x.len() / cin;
    let routing = layer
        .route_batch(x, batch)
        .unwrap()
        .expect("the flat FFF routes");
    assert_eq!(routing.routes.len(), batch, "{what}");
    assert_eq!(
        (routing.regions, routing.levels),
        (1 << reference.depth, reference.depth)
    );
    for (b, xb) in x.chunks(cin).enumerate() {
        let (nodes, lambdas) = layer.route(xb).unwrap();
        let (exact, tolerances) = (reference.lambdas(xb), reference.tolerances(xb));
        for d in 0..reference.depth {
            assert!(
                (lambdas[d] as f64 - exact[d]).abs() <= tolerances[d],
                "{what}: input {b} λ_{d} = {} vs {}",
                lambdas[d],
                exact[d]
            );
        }
        let signs: Vec<bool> = lambdas.iter().map(|&l| l > 0.0).collect();
        assert!(
            reference.admissible_signs(xb).contains(&signs),
            "{what}: input {b} signs {signs:?}"
        );
        let want: Vec<u32> = reference.path(&signs).iter().map(|&n| n as u32).collect();
        assert_eq!(nodes, want, "{what}: input {b} nodes");
        let route = &routing.routes[b][0];
        let region = signs.iter().fold(0u32, |r, &s| r << 1 | u32::from(s));
        assert_eq!(
            (route.region, &route.z),
            (region, &lambdas),
            "{what}: input {b}"
        );
    }
}

#[test]
fn flat_fff_matches_the_f64_reference_on_random_shapes() {
    use rand::{Rng, SeedableRng};
    const WIDTHS: [usize; 11] = [1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 100];
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let (mut flips, mut rows) = (0, 0);
    for case in 0..48 {
        let (cin, cout) = (
            WIDTHS[rng.random_range(0..WIDTHS.len())],
            WIDTHS[rng.random_range(0..WIDTHS.len())],
        );
        // Depth 1 (one node, one plane) in every fourth case.
        let depth = if case % 4 == 0 {
            1
        } else {
            rng.random_range(1..=12)
        };
        let batch = [0, 1, 2, 5, 33, 200][case % 6];
        let layer = flat_layer(cin, cout, depth, case as u64);
        let reference = FlatReference::of(&layer);
        let x: Vec<f32> = (0..batch * cin)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        let what = format!("case {case} flat {cin}-{cout} d{depth} batch {batch}");
        let fast = infer(&layer, &x, batch).unwrap();
        flips += reference.check(&x, &fast, &format!("{what} infer"));
        let train = layer
            .forward_train(&Tensor::from_vec(x.clone(), (batch, cin), &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(train.dims(), [batch, cout], "{what}");
        flips += reference.check(&x, &values(&train), &format!("{what} train"));
        check_flat_routes(&layer, &reference, &x, &what);
        rows += 2 * batch;
    }
    assert!(
        flips * 1000 <= rows,
        "{flips} near-tie flips in {rows} rows"
    );
}

#[test]
fn flat_fff_gradients_match_the_reference() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(32);
    for (case, (cin, cout, depth, batch)) in
        [(1, 1, 1, 1), (9, 5, 3, 7), (17, 10, 6, 33), (63, 3, 9, 20)]
            .into_iter()
            .enumerate()
    {
        let layer = flat_layer(cin, cout, depth, 40 + case as u64);
        let reference = FlatReference::of(&layer);
        // Inputs away from every boundary that decides a node, so the gradient is the one of a
        // fixed path and finite differences of size 1e-6 cannot cross a boundary.
        let mut x = Vec::new();
        while x.len() < batch * cin {
            let xb: Vec<f32> = (0..cin).map(|_| rng.random_range(-2.0..2.0)).collect();
            let lambdas = reference.lambdas(&xb);
            if lambdas[..depth - 1].iter().all(|l| l.abs() > 1e-3) {
                x.extend(xb);
            }
        }
        let g: Vec<f32> = (0..batch * cout)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let xv = Var::from_vec(x.clone(), (batch, cin), &Device::Cpu).unwrap();
        let gt = Tensor::from_vec(g.clone(), (batch, cout), &Device::Cpu).unwrap();
        let y = layer.forward_train(xv.as_tensor()).unwrap();
        let grads = (y * gt).unwrap().sum_all().unwrap().backward().unwrap();
        let [planes, rows] =
            [0, 1].map(|i| values(grads.get(layer.vars()[i].as_tensor()).unwrap()));
        let dx = values(grads.get(xv.as_tensor()).unwrap());
        let (want_planes, want_rows, want_dx) = reference.gradients(&x, &g);
        for (name, got, want) in [
            ("X", &planes, &want_planes),
            ("Y", &rows, &want_rows),
            ("x", &dx, &want_dx),
        ] {
            assert_eq!(got.len(), want.len(), "case {case} d{name}");
            for (i, (&a, &b)) in got.iter().zip(want.iter()).enumerate() {
                assert!(
                    (a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "case {case}: d{name}[{i}] = {a}, reference {b}"
                );
            }
        }
        // The reference's gradients are those of its own forward (central differences in f64,
        // exact for a loss linear in each parameter along a fixed path).
        let h = 1e-6;
        for k in 0..8 {
            let i = rng.random_range(0..reference.planes.len());
            let mut r = FlatReference::of(&layer);
            r.planes[i] += h;
            let up = r.loss(&x, &g);
            r.planes[i] -= 2.0 * h;
            let fd = (up - r.loss(&x, &g)) / (2.0 * h);
            assert!(
                (fd - want_planes[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "case {case} {k}: dX[{i}] {fd} vs {}",
                want_planes[i]
            );
            let j = rng.random_range(0..reference.rows.len());
            let mut r = FlatReference::of(&layer);
            r.rows[j] += h;
            let up = r.loss(&x, &g);
            r.rows[j] -= 2.0 * h;
            let fd = (up - r.loss(&x, &g)) / (2.0 * h);
            assert!(
                (fd - want_rows[j]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "case {case} {k}: dY[{j}] {fd} vs {}",
                want_rows[j]
            );
        }
    }
}

/// A plane of zeros makes its `λ_d` exactly 0 for every input: a tie, whose rounding bound is 0,
/// so no row may be excused and every such turn must go left, in inference, routes and
/// training alike. A zero input ties every level; a NaN in the input makes every `λ` NaN, which
/// goes left too.
#[test]
fn flat_fff_ties_and_nan_go_left() {
    let (cin, cout, depth, batch) = (9, 6, 5, 64);
    let base = flat_layer(cin, cout, depth, 5);
    let mut named: HashMap<String, Tensor> = base.named_tensors("").unwrap().into_iter().collect();
    let mut planes = values(&named["X"]);
    for i in 0..cin {
        for d in [0, 2, 3] {
            planes[i * depth + d] = 0.0;
        }
    }
    named.insert(
        "X".into(),
        Tensor::from_vec(planes, (cin, depth), &Device::Cpu).unwrap(),
    );
    let layer = FlatFff::from_tensors(*base.config(), &named, "", Path::new("mem")).unwrap();
    let reference = FlatReference::of(&layer);
    let x = values(&Tensor::randn(0f32, 1.0, (batch, cin), &Device::Cpu).unwrap());
    for xb in x.chunks(cin) {
        let (nodes, _) = layer.route(xb).unwrap();
        for d in [0, 2, 3] {
            assert_eq!(
                nodes[d + 1],
                2 * nodes[d] + 1,
                "a tie at level {d} went right"
            );
        }
    }
    assert_eq!(
        reference.check(&x, &infer(&layer, &x, batch).unwrap(), "ties infer"),
        0
    );
    let train = layer
        .forward_train(&Tensor::from_vec(x.clone(), (batch, cin), &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(reference.check(&x, &values(&train), "ties train"), 0);
    check_flat_routes(&layer, &reference, &x, "ties");

    let zero = vec![0.0; cin];
    assert_eq!(layer.route(&zero).unwrap().0, [0, 1, 3, 7, 15]);
    assert_eq!(infer(&layer, &zero, 1).unwrap(), vec![0.0; cout]);
    let mut poisoned = x[..cin].to_vec();
    poisoned[4] = f32::NAN;
    assert_eq!(layer.route(&poisoned).unwrap().0, [0, 1, 3, 7, 15]);
    assert!(infer(&layer, &poisoned, 1)
        .unwrap()
        .iter()
        .all(|v| v.is_nan()));
}

/// Depth 0 would leave no plane and no node; the layer refuses it, and depths past 24.
#[test]
fn flat_fff_rejects_depths_outside_1_to_24() {
    for depth in [0, 25] {
        let config = FlatFffConfig {
            input_width: 3,
            output_width: 2,
            depth,
        };
        let err = FlatFff::new(config, 0).unwrap_err().to_string();
        assert!(err.contains("depth"), "{err}");
    }
    assert!(infer(&flat_layer(3, 2, 2, 0), &[0.0; 5], 2).is_err());
}

/// Leaves a correct hard descent of the original FFF may reach for `x`: the f64 descent's
/// (right iff `z ≥ 0`, as the package), first, then those that leave it only at near ties.
fn admissible_leaves(layer: &OriginalFff, x: &[f32]) -> Vec<usize> {
    let c = layer.config();
    let named: HashMap<String, Tensor> = layer.named_tensors("").unwrap().into_iter().collect();
    let (nw, nb) = (
        values(&named["node_weights"]),
        values(&named["node_biases"]),
    );
    let cin = c.input_width;
    let mut leaves = Vec::new();
    let mut stack = vec![(0usize, 0usize)];
    while let Some((node, level)) = stack.pop() {
        if level == c.depth {
            leaves.push(node - c.nodes());
            continue;
        }
        let w = &nw[node * cin..(node + 1) * cin];
        let z = w
            .iter()
            .zip(x)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum::<f64>()
            + nb[node] as f64;
        let right = 2 * node + 2;
        let (taken, other) = if z >= 0.0 {
            (right, right - 1)
        } else {
            (right - 1, right)
        };
        if is_near_tie(z, tie_tolerance(w, nb[node], x)) {
            stack.push((other, level + 1));
        }
        stack.push((taken, level + 1));
    }
    leaves
}

#[test]
fn original_fff_fast_inference_matches_the_f64_reference_on_random_shapes() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for case in 0..24 {
        let config = OriginalFffConfig::new(
            rng.random_range(1..40),
            rng.random_range(1..20),
            rng.random_range(1..35),
            rng.random_range(0..6),
        );
        let layer = OriginalFff::new(config, case).unwrap();
        let batch = [0, 1, 2, 17, 64][case as usize % 5];
        let x: Vec<f32> = (0..batch * config.input_width)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        let fast = infer(&layer, &x, batch).unwrap();
        let reference = layer.forward_reference(&x, batch).unwrap();
        assert_eq!(fast.len(), batch * config.output_width);
        let mut excused = 0;
        for i in 0..batch {
            let xi = &x[i * config.input_width..(i + 1) * config.input_width];
            let (leaf, _) = layer.route(xi).unwrap();
            let admissible = admissible_leaves(&layer, xi);
            // A leaf other than the f64 descent's only where a decision on the way is within
            // rounding of its boundary; such a row runs another leaf's MLP and is counted.
            match admissible.iter().position(|&l| l == leaf) {
                Some(0) => {}
                Some(_) => {
                    excused += 1;
                    continue;
                }
                None => panic!("case {case}: input {i} reached leaf {leaf}, not {admissible:?}"),
            }
            let o = config.output_width;
            let want: Vec<f32> = reference[i * o..(i + 1) * o]
                .iter()
                .map(|&v| v as f32)
                .collect();
            assert!(
                row_matches(&fast[i * o..(i + 1) * o], &want, config.input_width),
                "case {case}: input {i}: {:?} vs {want:?}",
                &fast[i * o..(i + 1) * o]
            );
        }
        assert_excused_within_cap(excused, batch, &format!("case {case}"));
    }
    // A tie (z = 0 exactly) goes right, as in the package: a zero input with zero biases.
    let config = OriginalFffConfig::new(3, 2, 2, 2);
    let layer = OriginalFff::new(config, 0).unwrap();
    let mut named: HashMap<String, Tensor> = layer.named_tensors("").unwrap().into_iter().collect();
    named.insert(
        "node_biases".into(),
        Tensor::zeros((3, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    let tied = OriginalFff::from_tensors(config, &named, "", Path::new("mem")).unwrap();
    assert_eq!(
        tied.route(&[0.0; 3]).unwrap().0,
        3,
        "right, right: the last leaf"
    );
}
