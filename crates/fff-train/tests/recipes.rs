//! The training recipe's ingredients (validation split, label smoothing, distillation) and the
//! frontier's resumable runs, each checked to do what it says: every test here fails when its
//! ingredient is switched off.

use fff_data::synthetic::spirals;
use fff_data::Split;
use fff_train::frontier::{
    ablations_of, check_grid, first_dataset_only, image_grid, run_dir, run_one, seeds_of,
    summarize, Entry, Recipe, ABLATED, DEFAULT_FAMILY,
};
use fff_train::trainer::{evaluate_rows, optimizer_for, train_from, Interrupted};
use fff_train::{train, Model, TrainConfig, TrainObserver};
use std::path::PathBuf;

fn config(epochs: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        lr: 1e-2,
        seed,
        ..TrainConfig::default()
    }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fff-recipes-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const NET: &str = "fff:2-16:d3:k2:identity, relu, linear:16-3";

/// With a validation set: training uses the other rows only, every epoch reports validation
/// figures of the held-out rows, and the test set is read once, after the last epoch.
#[test]
fn validation_is_held_out_and_the_test_set_is_read_once() {
    let data = spirals(3, 200, 0.05, 1);
    let n = data.train.len();
    let cfg = TrainConfig {
        validation: 120,
        ..config(3, 2)
    };
    let model = Model::new(NET, 2).unwrap();
    let mut opt = optimizer_for(&model, &cfg);
    let history = train_from(&model, &mut opt, &data, &cfg, vec![].into(), None, ()).unwrap();
    assert_eq!(opt.step_count(), 3 * (n - 120).div_ceil(32) as u64);
    for m in &history[..2] {
        assert!(
            m.val_accuracy.is_some() && m.test_accuracy.is_none(),
            "{m:?}"
        );
    }
    let last = history.last().unwrap();
    let (val_loss, val_accuracy) = evaluate_rows(&model, &data.train, n - 120..n).unwrap();
    assert_eq!(last.val_loss, Some(val_loss));
    assert_eq!(last.val_accuracy, Some(val_accuracy));
    assert!(last.test_accuracy.is_some());
    // Without one, every epoch reads the test set (the studies' protocol).
    let plain = train(&Model::new(NET, 2).unwrap(), &data, &config(2, 2), ()).unwrap();
    assert!(plain
        .iter()
        .all(|m| m.test_accuracy.is_some() && m.val_accuracy.is_none()));
    let err = train(
        &Model::new(NET, 2).unwrap(),
        &data,
        &TrainConfig {
            validation: n,
            ..config(1, 2)
        },
        (),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("leaves no training inputs"), "{err}");
}

/// The mean gap between each input's largest logit and the others'.
fn logit_spread(model: &Model, data: &Split) -> f64 {
    let x = candle_core::Tensor::from_vec(
        data.test.features.clone(),
        (data.test.len(), data.test.dim),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let logits = model.forward_infer(&x).unwrap().to_vec2::<f32>().unwrap();
    logits
        .iter()
        .map(|r| {
            let max = r.iter().cloned().fold(f32::MIN, f32::max);
            r.iter().map(|v| (max - v) as f64).sum::<f64>() / (r.len() - 1) as f64
        })
        .sum::<f64>()
        / logits.len() as f64
}

/// Label smoothing caps how confident the net gets: its logits spread far less.
#[test]
fn label_smoothing_keeps_logits_close() {
    let data = spirals(3, 200, 0.03, 3);
    let run = |smoothing| {
        let model = Model::new(NET, 4).unwrap();
        let cfg = TrainConfig {
            label_smoothing: smoothing,
            ..config(25, 4)
        };
        let h = train(&model, &data, &cfg, ()).unwrap();
        (
            logit_spread(&model, &data),
            h.last().unwrap().test_accuracy.unwrap(),
        )
    };
    let ((sharp, _), (smooth, accuracy)) = (run(0.0), run(0.3));
    assert!(
        smooth < 0.6 * sharp,
        "spread {smooth} with ε=0.3, {sharp} without"
    );
    assert!(accuracy > 0.6, "{accuracy}");
}

/// A student distilled with α = 0 learns its teacher's function, not the labels: a teacher
/// trained on rotated labels (class c taught as c+1) makes the student predict them too.
#[test]
fn distillation_teaches_the_teachers_function() {
    let data = spirals(3, 400, 0.03, 1);
    let mut rotated = data.clone();
    for set in [&mut rotated.train, &mut rotated.test] {
        set.labels.iter_mut().for_each(|y| *y = (*y + 1) % 3);
    }
    let dir = temp("teacher");
    let teacher = Model::new("fff:2-32:d4:k4:identity, relu, linear:32-3", 1).unwrap();
    let cfg = config(40, 1);
    let mut opt = optimizer_for(&teacher, &cfg);
    let h = train_from(
        &teacher,
        &mut opt,
        &rotated,
        &cfg,
        vec![].into(),
        Some((&dir, 1)),
        (),
    )
    .unwrap();
    let teacher_accuracy = h.last().unwrap().test_accuracy.unwrap();
    assert!(teacher_accuracy > 0.8, "teacher {teacher_accuracy}");
    let student = |distill| {
        let model = Model::new(NET, 7).unwrap();
        let cfg = TrainConfig {
            distill,
            ..config(25, 7)
        };
        // Trained on the true labels; with α = 0 the labels carry no weight.
        train(&model, &data, &cfg, ()).unwrap();
        let (_, on_rotated) = fff_train::trainer::evaluate(&model, &rotated.test).unwrap();
        on_rotated
    };
    let distilled = student(Some(fff_train::state::Distillation {
        teacher: dir.clone(),
        alpha: 0.0,
        temperature: 2.0,
    }));
    let undistilled = student(None);
    assert!(
        distilled > 0.7,
        "distilled student on the teacher's labels: {distilled}"
    );
    assert!(
        undistilled < 0.4,
        "undistilled student on the teacher's labels: {undistilled}"
    );
    // A teacher of other widths is refused by name.
    let wrong = Model::new("linear:2-4", 0).unwrap();
    let err = train(
        &wrong,
        &fff_data::synthetic::spirals(4, 20, 0.03, 0),
        &TrainConfig {
            distill: Some(fff_train::state::Distillation {
                teacher: dir.clone(),
                alpha: 0.5,
                temperature: 2.0,
            }),
            ..config(1, 0)
        },
        (),
    )
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("teacher") && err.contains("3 outputs"),
        "{err}"
    );
}

#[test]
fn recipes_print_and_parse_back() {
    for s in [
        "epochs=10 lr=0.001 batch=64 schedule=constant val=5000",
        "epochs=15 lr=0.002 batch=128 schedule=cosine val=0 wd=0.01 warmup=100 smoothing=0.1 \
         shift=2 kd=dense:0.5:4",
    ] {
        let r: Recipe = s.parse().unwrap();
        assert_eq!(r.to_string(), s);
    }
    assert_eq!("".parse::<Recipe>().unwrap(), Recipe::default());
    for (bad, want) in [
        ("epochs=x", "a count"),
        ("speed=3", "unknown key `speed`"),
        ("kd=dense:0.5", "FAMILY:ALPHA:TEMPERATURE"),
        ("schedule=steep", "cosine"),
        ("lr", "key=value"),
    ] {
        let err = format!("{:#}", bad.parse::<Recipe>().unwrap_err());
        assert!(err.contains(want), "{bad}: {err}");
    }
    let grid = image_grid();
    check_grid(&grid).unwrap();
    for e in &grid {
        let back = Entry::parse(&e.family, &e.spec()).unwrap();
        assert_eq!(&back, e);
    }
    // The ablation tables' families are in the grid, one ingredient off their base.
    assert!(ABLATED.contains(&DEFAULT_FAMILY));
    for base in ABLATED.iter().copied() {
        let ablations = ablations_of(base);
        assert!(ablations.len() >= 5, "{base}");
        for (what, family) in ablations {
            assert!(
                grid.iter().any(|e| e.family == family),
                "{base} without {what}: `{family}` is not in the grid"
            );
        }
    }
    assert_eq!(
        ablations_of("forest-k5-64-kd-30ep")[0],
        ("30 epochs (15 instead)", "forest-k5-64-kd".to_string())
    );
    assert_eq!(
        ablations_of("forest-k16-256-d1-kd")[1].1,
        "ablate-constant-lr-k16-256-d1"
    );
    // A student before its teacher, or a family twice, is refused.
    let student = Entry::parse("s", "linear:2-3 | kd=t:0.5:4").unwrap();
    let teacher = Entry::parse("t", "linear:2-3 | epochs=1").unwrap();
    let teacher_copy = teacher.clone();
    assert!(check_grid(&[student.clone(), teacher.clone()]).is_err());
    check_grid(&[teacher.clone(), student]).unwrap();
    assert!(check_grid(&[teacher.clone(), teacher]).is_err());
    let twin = Entry::parse("twin", "linear:2-3 | epochs=1").unwrap();
    let err = format!("{:#}", check_grid(&[teacher_copy, twin]).unwrap_err());
    assert!(err.contains("same spec"), "{err}");
    // The scan of splits trains one seed on the first dataset; the ablations all seeds there.
    let scans: Vec<_> = grid
        .iter()
        .filter(|e| e.family.starts_with("scan-"))
        .collect();
    assert!(scans.len() >= 10);
    for e in scans {
        assert!(first_dataset_only(&e.family) && seeds_of(&e.family, 3) == 1);
    }
    assert!(
        first_dataset_only("ablate-one-tree-k5-64") && seeds_of("ablate-one-tree-k5-64", 3) == 3
    );
    assert!(!first_dataset_only(DEFAULT_FAMILY) && seeds_of(DEFAULT_FAMILY, 3) == 3);
}

/// Stops the run after `after` steps.
struct StopAfter(usize, usize);

impl TrainObserver for StopAfter {
    fn step_finished(&mut self, _: &fff_train::trainer::StepProgress) {
        self.1 += 1;
    }
    fn stop_requested(&mut self) -> bool {
        self.1 >= self.0
    }
}

/// A frontier run interrupted mid-epoch resumes from its checkpoint to the figures of an
/// uninterrupted one; a finished run is read back, not retrained; a student waits for its
/// teacher; a folder of another configuration is refused.
#[test]
fn frontier_runs_resume_and_are_read_back() {
    let data = spirals(3, 150, 0.05, 8);
    let entry = Entry::parse("net", &format!("{NET} | epochs=3 lr=0.01 batch=32 val=90")).unwrap();
    let work = temp("frontier");
    let straight = run_one(
        "s",
        &data,
        &entry,
        1,
        &run_dir(&work, "a", "net", 1),
        None,
        (),
    )
    .unwrap();
    let dir = run_dir(&work, "b", "net", 1);
    let err = run_one("s", &data, &entry, 1, &dir, None, StopAfter(5, 0)).unwrap_err();
    assert!(err.downcast_ref::<Interrupted>().is_some(), "{err:#}");
    assert!(!dir.join("result.json").exists());
    let resumed = run_one("s", &data, &entry, 1, &dir, None, ()).unwrap();
    let figures = |r: &fff_train::frontier::RunResult| {
        (
            r.val_accuracy,
            r.test_accuracy,
            r.multiply_adds_per_input,
            r.spec.clone(),
        )
    };
    assert_eq!(figures(&resumed), figures(&straight));
    // Read back: an observer that would stop at once never runs.
    let again = run_one("s", &data, &entry, 1, &dir, None, StopAfter(0, 0)).unwrap();
    assert_eq!(figures(&again), figures(&resumed));
    assert!((again.seconds_per_epoch - resumed.seconds_per_epoch).abs() < 1e-12);
    // Another configuration in the same folder is refused.
    let other = Entry::parse("net", &format!("{NET} | epochs=4 lr=0.01 batch=32 val=90")).unwrap();
    let err = format!(
        "{:#}",
        run_one("s", &data, &other, 1, &dir, None, ()).unwrap_err()
    );
    assert!(
        err.contains("epochs=3") && err.contains("epochs=4"),
        "{err}"
    );
    // A student whose teacher has not finished waits for it.
    let student = Entry::parse(
        "student",
        &format!("{NET} | epochs=1 lr=0.01 batch=32 val=90 kd=net:0.5:2"),
    )
    .unwrap();
    let missing = run_dir(&work, "c", "net", 1);
    let err = format!(
        "{:#}",
        run_one(
            "s",
            &data,
            &student,
            1,
            &run_dir(&work, "c", "student", 1),
            Some(&missing),
            ()
        )
        .unwrap_err()
    );
    assert!(err.contains("has not finished"), "{err}");
    let r = run_one(
        "s",
        &data,
        &student,
        1,
        &run_dir(&work, "b", "student", 1),
        Some(&dir),
        (),
    )
    .unwrap();
    let rows = summarize(&[straight.clone(), resumed, r]);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].seeds, vec![1, 1]);
    assert_eq!(rows[0].test_accuracy_std, 0.0);
    assert_eq!(rows[1].family, "student");
    // Every run names the CPU it trained on; a row names each of its runs' CPUs once.
    assert!(!straight.machine.is_empty() && !straight.machine.contains('\n'));
    assert_eq!(rows[0].machine, straight.machine);
    let mut elsewhere = straight.clone();
    elsewhere.machine = "Other CPU (AVX2)".into();
    let row = &summarize(&[straight.clone(), elsewhere.clone(), elsewhere])[0];
    assert_eq!(
        row.machine,
        format!("{} + Other CPU (AVX2)", straight.machine)
    );
}

/// Soft-to-hard training records its temperature and the accuracy it would lose by hardening
/// while it is soft, and ends hard: the last epoch trains the net it deploys.
#[test]
fn soft_to_hard_training_anneals_and_ends_hard() {
    let data = spirals(3, 200, 0.03, 9);
    let n = data.train.len();
    let cfg = TrainConfig {
        validation: 150,
        soft_routing: Some("2:2:0.05:0.25".parse().unwrap()),
        ..config(4, 9)
    };
    let model = Model::new(NET, 9).unwrap();
    let history = train(&model, &data, &cfg, ()).unwrap();
    let temps: Vec<Option<f64>> = history.iter().map(|m| m.temperature).collect();
    assert!(temps[..3].iter().all(Option::is_some), "{temps:?}");
    assert!(temps[0] > temps[1] && temps[1] > temps[2], "{temps:?}");
    assert_eq!(temps[3], None);
    assert!(history[..3].iter().all(|m| m.routing_gap.is_some()));
    assert!(history[3].routing_gap.is_none());
    // The soft forward at the recorded temperature is what the gap was measured with.
    let steps = (n - 150).div_ceil(32);
    let soft = cfg
        .soft_routing
        .unwrap()
        .at(3 * steps - 1, 4 * steps)
        .unwrap();
    assert_eq!(Some(soft.temperature), temps[2]);
    // Soft routing changes what is learnt: the same run trained hard ends elsewhere.
    let hard = Model::new(NET, 9).unwrap();
    let plain = train(
        &hard,
        &data,
        &TrainConfig {
            soft_routing: None,
            ..cfg.clone()
        },
        (),
    )
    .unwrap();
    assert_ne!(
        plain.last().unwrap().train_loss,
        history.last().unwrap().train_loss
    );
}

/// Entropy in bits of how the test inputs spread over layer 0's leaves (tree 0).
fn leaf_entropy(model: &Model, data: &Split) -> f64 {
    let routing = model.layers[0]
        .route_batch(&data.test.features, data.test.len())
        .unwrap()
        .expect("an FFF layer routes");
    let mut counts = vec![0f64; routing.regions];
    for r in &routing.routes {
        counts[r[0].region as usize] += 1.0;
    }
    let n: f64 = counts.iter().sum();
    counts
        .iter()
        .filter(|&&c| c > 0.0)
        .map(|&c| -(c / n) * (c / n).log2())
        .sum()
}

/// The load-balancing loss spreads the inputs over more of the leaves.
#[test]
fn load_balancing_spreads_inputs_over_the_leaves() {
    let data = spirals(3, 200, 0.03, 10);
    let net = "fff:2-16:d4:identity:init=normal(0.5), relu, linear:16-3";
    let run = |weight| {
        let model = Model::new(net, 10).unwrap();
        let cfg = TrainConfig {
            load_balance: weight,
            ..config(15, 10)
        };
        train(&model, &data, &cfg, ()).unwrap();
        leaf_entropy(&model, &data)
    };
    let (plain, balanced) = (run(0.0), run(2.0));
    assert!(
        balanced > plain + 0.3,
        "leaf entropy {balanced:.3} bits balanced, {plain:.3} without (of 4)"
    );
}

/// A master leaf adds a dense branch: counted in the compute, trained, saved and loaded
/// under its own names, and the same at inference as in training.
#[test]
fn a_master_leaf_trains_saves_and_counts() {
    use fastfeedforward::MasterLeafFff;
    let spec = "fff:2-16:d3:k2:identity:master=8, relu, linear:16-3";
    let model = Model::new(spec, 3).unwrap();
    assert!(model.layer_as::<MasterLeafFff>(0).is_some());
    assert_eq!(
        model.multiply_adds_per_input(),
        2 * 4 * (2 + 16) + 8 * 2 + 8 * 16 + 16 * 3
    );
    let data = spirals(3, 150, 0.03, 3);
    let h = train(&model, &data, &config(20, 3), ()).unwrap();
    let (first, last) = (&h[0], h.last().unwrap());
    assert!(
        last.train_loss < 0.75 * first.train_loss,
        "{first:?} -> {last:?}"
    );
    let x = candle_core::Tensor::from_vec(
        data.test.features.clone(),
        (data.test.len(), 2),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let (a, b) = (
        model.forward(&x).unwrap().to_vec2::<f32>().unwrap(),
        model.forward_infer(&x).unwrap().to_vec2::<f32>().unwrap(),
    );
    for (ra, rb) in a.iter().zip(&b) {
        for (p, q) in ra.iter().zip(rb) {
            assert!((p - q).abs() < 1e-4, "{p} vs {q}");
        }
    }
    let names: Vec<String> = model
        .named_tensors()
        .unwrap()
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert!(
        names.contains(&"layers.0.master.hidden.weight".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"layers.0.linear_in.weight".to_string()),
        "{names:?}"
    );
    let tensors: std::collections::HashMap<_, _> =
        model.named_tensors().unwrap().into_iter().collect();
    let mut fresh = Model::new(spec, 99).unwrap();
    fresh
        .load_tensors(&tensors, std::path::Path::new("m.safetensors"))
        .unwrap();
    assert_eq!(
        fresh.forward_infer(&x).unwrap().to_vec2::<f32>().unwrap(),
        b
    );
    // Without the master leaf's tensors, loading names the missing one.
    let mut partial = tensors.clone();
    partial.remove("layers.0.master.output.bias");
    let err = format!(
        "{:#}",
        fresh
            .load_tensors(&partial, std::path::Path::new("m.safetensors"))
            .unwrap_err()
    );
    assert!(err.contains("master.output.bias"), "{err}");
}
