//! bf16 and int8 weights: every walk at every SIMD level held to the plain reference of its
//! format, the cost of each format against f32 measured, and files that round-trip.

mod common;

use common::*;
use fastfeedforward::{
    Fff, FffConfig, InferOptions, QuantizedFff, SimdLevel, Strategy, WeightFormat, Workspace,
    W_IN_SCALE,
};

const QUANTIZED: [WeightFormat; 2] = [WeightFormat::Bf16, WeightFormat::Int8];

/// The f32 layer whose weights are exactly the stored ones widened (scales applied): the
/// reference of a format is the f32 reference of these weights.
fn widened(q: &QuantizedFff) -> Fff {
    let (w_in, b_in, w_out_t) = q.dequantized();
    Fff::from_node_major(*q.config(), w_in, b_in, w_out_t).unwrap()
}

fn run(q: &QuantizedFff, x: &[f32], batch: usize, opts: InferOptions) -> (Vec<f32>, Vec<u32>) {
    let mut y = vec![f32::NAN; batch * q.config().output_width];
    let mut ws = Workspace::new();
    let routes = q
        .forward_infer_routed(x, batch, &mut y, &mut ws, opts)
        .unwrap();
    let mut plain = vec![f32::NAN; y.len()];
    q.forward_infer_with(x, batch, &mut plain, &mut ws, opts)
        .unwrap();
    assert!(
        y.iter()
            .zip(&plain)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "recording routes changed the outputs ({opts:?})"
    );
    (y, routes)
}

fn every_kernel() -> impl Iterator<Item = InferOptions> {
    SimdLevel::available().into_iter().flat_map(|simd| {
        Strategy::ALL
            .into_iter()
            .map(move |strategy| InferOptions { strategy, simd })
    })
}

#[test]
fn every_format_matches_its_reference_on_random_shapes() {
    let mut rng = rng(21);
    let (mut flips, mut rows) = (0, 0);
    for case in 0..36 {
        let config = random_config(&mut rng, 11, 6);
        let layer = random_layer(config, 500 + case);
        let batch = [0, 1, 3, 9, 40, 260][case as usize % 6];
        let x = normal_vec(&mut rng, batch * config.input_width);
        for format in QUANTIZED {
            let q = layer.quantize(format).unwrap();
            assert_eq!(q.format(), format);
            let expected = Expected::new(&widened(&q), &x, batch);
            for opts in every_kernel() {
                let (got, routes) = run(&q, &x, batch, opts);
                let what = format!("case {case} {format} {opts:?} {config:?}");
                flips += expected.check(&got, Some(&routes), &what);
                rows += batch;
            }
            // The format's own plain reference agrees with the widened f32 reference.
            let mut y = vec![0f32; batch * config.output_width];
            q.forward_reference(&x, batch, &mut y).unwrap();
            expected.check(&y, None, &format!("case {case} {format} reference"));
        }
    }
    assert!(flips * 1000 <= rows.max(1), "{flips} flips in {rows} rows");
}

/// Large batches go through the bucketed walk's grouped buckets (two levels per pass, four
/// outputs at a time) and its streamed outputs, with more than one thread.
#[test]
fn large_batches_on_every_walk_and_thread_count() {
    let config = FffConfig::new(67, 45, 9, 2);
    let layer = random_layer(config, 31);
    let batch = 2500;
    let x = normal_vec(&mut rng(32), batch * config.input_width);
    for format in QUANTIZED {
        let q = layer.quantize(format).unwrap();
        let expected = Expected::new(&widened(&q), &x, batch);
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for strategy in Strategy::ALL {
                let opts = InferOptions {
                    strategy,
                    ..Default::default()
                };
                let (got, routes) = pool.install(|| run(&q, &x, batch, opts));
                expected.check(
                    &got,
                    Some(&routes),
                    &format!("{format} {threads}t {strategy:?}"),
                );
            }
        }
    }
}

/// What a format costs against f32 on the same inputs, and that it is neither nothing (the
/// weights really are stored narrower) nor more than a format of its width should cost.
#[test]
fn quantization_error_is_bounded_and_real() {
    let config = FffConfig::new(256, 128, 8, 2);
    let layer = random_layer(config, 41);
    let batch = 500;
    let x = normal_vec(&mut rng(42), batch * config.input_width);
    let mut f32_y = vec![0f32; batch * 128];
    layer
        .forward_infer_with(
            &x,
            batch,
            &mut f32_y,
            &mut Workspace::new(),
            Default::default(),
        )
        .unwrap();
    let f32_paths: Vec<Vec<u32>> = x.chunks(256).map(|r| layer.route(r).unwrap()).collect();
    for (format, max_rel) in [(WeightFormat::Bf16, 0.02), (WeightFormat::Int8, 0.05)] {
        let q = layer.quantize(format).unwrap();
        let mut y = vec![0f32; batch * 128];
        q.forward_infer_with(&x, batch, &mut y, &mut Workspace::new(), Default::default())
            .unwrap();
        let (mut moved, mut err_same_path, mut norm) = (0, 0f64, 0f64);
        for b in 0..batch {
            let path = q.route(&x[b * 256..(b + 1) * 256]).unwrap();
            if path != f32_paths[b] {
                moved += 1;
                continue;
            }
            for (a, w) in y[b * 128..(b + 1) * 128]
                .iter()
                .zip(&f32_y[b * 128..(b + 1) * 128])
            {
                err_same_path += ((a - w) as f64).powi(2);
                norm += (*w as f64).powi(2);
            }
        }
        let rel = (err_same_path / norm).sqrt();
        assert!(rel > 1e-6, "{format}: output identical to f32 ({rel:e})");
        assert!(
            rel < max_rel,
            "{format}: relative error {rel} on unmoved paths"
        );
        assert!(
            moved * 5 < batch,
            "{format}: {moved} of {batch} paths moved"
        );
    }
}

#[test]
fn files_round_trip_every_format() {
    let dir = std::env::temp_dir().join(format!("fff-quantized-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = FffConfig::new(19, 7, 3, 2);
    let layer = random_layer(config, 51);
    let x = normal_vec(&mut rng(52), 5 * 19);
    for format in WeightFormat::ALL {
        let q = layer.quantize(format).unwrap();
        let path = dir.join(format!("layer-{format}.safetensors"));
        q.save(&path).unwrap();
        let back = QuantizedFff::load(&path, None).unwrap();
        assert_eq!(back.format(), format);
        assert_eq!(back.dequantized(), q.dequantized(), "{format}");
        let (mut y1, mut y2) = (vec![0f32; 35], vec![0f32; 35]);
        let opts = InferOptions::default();
        q.forward_infer_with(&x, 5, &mut y1, &mut Workspace::new(), opts)
            .unwrap();
        back.forward_infer_with(&x, 5, &mut y2, &mut Workspace::new(), opts)
            .unwrap();
        assert_eq!(y1, y2, "{format}");
        if format == WeightFormat::Int8 {
            // The f32 loader names what it found instead of misreading int8 bytes.
            let err = Fff::load(&path, None).unwrap_err().to_string();
            assert!(err.contains("int8"), "{err}");
        }
    }
    // An f32 file of `Fff::save` loads as f32.
    let path = dir.join("plain.safetensors");
    layer.save(&path).unwrap();
    assert_eq!(
        QuantizedFff::load(&path, None).unwrap().format(),
        WeightFormat::F32
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_files_and_weights_are_errors() {
    let dir = std::env::temp_dir().join(format!("fff-quantized-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = FffConfig::new(8, 4, 2, 1);
    let layer = random_layer(config, 61);
    let q = layer.quantize(WeightFormat::Int8).unwrap();
    let path = dir.join("q.safetensors");
    q.save(&path).unwrap();
    // A file missing its scales names the tensor and the file.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != W_IN_SCALE)
        .collect();
    let cut = dir.join("no-scale.safetensors");
    safetensors::serialize_to_file(kept, header.metadata().clone(), &cut).unwrap();
    let err = QuantizedFff::load(&cut, None).unwrap_err().to_string();
    assert!(
        err.contains(W_IN_SCALE) && err.contains("no-scale"),
        "{err}"
    );
    // A wrong configuration names the shapes.
    let err = QuantizedFff::load(&path, Some(FffConfig::new(8, 4, 3, 1)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("linear_in"), "{err}");
    // Truncated file.
    let short = dir.join("short.safetensors");
    std::fs::write(&short, &bytes[..bytes.len() / 2]).unwrap();
    assert!(QuantizedFff::load(&short, None).is_err());
    // Non-finite weights cannot be scaled to int8.
    let mut w_in = flat(layer.w_in());
    w_in[3] = f32::INFINITY;
    let bad =
        Fff::from_node_major(config, w_in, flat(layer.b_in()), flat(layer.w_out_t())).unwrap();
    let err = bad.quantize(WeightFormat::Int8).unwrap_err().to_string();
    assert!(err.contains("linear_in.weight"), "{err}");
    // Wrong input lengths are errors, not panics.
    let mut y = vec![0f32; 4];
    assert!(q
        .forward_infer_with(
            &[0.0; 7],
            1,
            &mut y,
            &mut Workspace::new(),
            Default::default()
        )
        .is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tie at z = 0 goes left in every format (zero weights quantize to zero exactly).
#[test]
fn ties_go_left_in_every_format() {
    let config = FffConfig::new(10, 3, 4, 2);
    let rows = config.total_nodes();
    let w_in = vec![0f32; rows * 10];
    let w_out_t: Vec<f32> = (0..rows * 3).map(|i| i as f32 * 0.01).collect();
    let layer = Fff::from_node_major(config, w_in, vec![0.0; rows], w_out_t).unwrap();
    let x = normal_vec(&mut rng(71), 17 * 10);
    for format in WeightFormat::ALL {
        let q = layer.quantize(format).unwrap();
        for opts in every_kernel() {
            let (_, routes) = run(&q, &x, 17, opts);
            let left: Vec<u32> = (0..2).flat_map(|_| (0..5).map(|l| (1 << l) - 1)).collect();
            for r in routes.chunks(10) {
                assert_eq!(r, &left[..], "{format} {opts:?}");
            }
        }
    }
}
