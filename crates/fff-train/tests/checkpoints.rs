//! Checkpoint sets under crashes, interrupts and tampering: a run stopped mid-epoch resumes to
//! the uninterrupted run's figures and weights; a folder mixing files of two saves, optimizer
//! state that is not finite, and states out of range are refused with the file named.

use fff_data::synthetic::spirals;
use fff_data::Split;
use fff_train::checkpoint::{check_target, load_model, load_optimizer, load_state};
use fff_train::optim::OptimizerKind;
use fff_train::trainer::{optimizer_for, train_from, Interrupted, StepProgress, TrainObserver};
use fff_train::{EpochMetrics, Model, TrainConfig};
use std::path::{Path, PathBuf};

const SPEC: &str = "fff:2-16:d3:k2:identity, relu, linear:16-3";

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fff-ckpt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(epochs: usize, optimizer: OptimizerKind) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        lr: 5e-3,
        seed: 11,
        optimizer,
        ..TrainConfig::default()
    }
}

/// Asks to stop once `after` steps (counted over the whole run) have finished.
struct StopAfter {
    after: usize,
    steps: usize,
}

impl TrainObserver for StopAfter {
    fn step_finished(&mut self, _: &StepProgress) {
        self.steps += 1;
    }
    fn stop_requested(&mut self) -> bool {
        self.steps >= self.after
    }
}

fn fresh(
    dir: &Path,
    data: &Split,
    cfg: &TrainConfig,
    observer: impl TrainObserver,
) -> anyhow::Result<(Model, Vec<EpochMetrics>)> {
    let model = Model::new(SPEC, 3).unwrap();
    let mut opt = optimizer_for(&model, cfg);
    let h = train_from(
        &model,
        &mut opt,
        data,
        cfg,
        Vec::new().into(),
        Some((dir, 3)),
        observer,
    )?;
    Ok((model, h))
}

fn resume(
    dir: &Path,
    data: &Split,
    cfg: &TrainConfig,
    observer: impl TrainObserver,
) -> anyhow::Result<(Model, Vec<EpochMetrics>)> {
    let state = load_state(dir)?;
    let model = load_model(dir, &state)?;
    let mut opt = optimizer_for(&model, &state.config);
    load_optimizer(dir, &state, &mut opt, model.vars().len())?;
    let h = train_from(
        &model,
        &mut opt,
        data,
        cfg,
        state.progress(),
        Some((dir, 3)),
        observer,
    )?;
    Ok((model, h))
}

fn weights(m: &Model) -> Vec<Vec<f32>> {
    m.vars()
        .iter()
        .map(|v| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

/// Epoch, train loss and accuracy, test loss and accuracy.
type Figures = (usize, f64, f64, Option<f64>, Option<f64>);

fn figures(h: &[EpochMetrics]) -> Vec<Figures> {
    h.iter()
        .map(|m| {
            (
                m.epoch,
                m.train_loss,
                m.train_accuracy,
                m.test_loss,
                m.test_accuracy,
            )
        })
        .collect()
}

#[test]
fn a_run_interrupted_mid_epoch_resumes_to_the_uninterrupted_run() {
    let data = spirals(3, 150, 0.05, 4);
    // Stop inside epoch 2, then at its end.
    let steps = data.train.len().div_ceil(32);
    for optimizer in [
        OptimizerKind::default(),
        OptimizerKind::Sgd { momentum: 0.9 },
    ] {
        let base = scratch(&format!(
            "interrupt-{}",
            matches!(optimizer, OptimizerKind::Sgd { .. })
        ));
        let cfg = config(3, optimizer);
        let (straight_model, straight) = fresh(&base.join("a"), &data, &cfg, ()).unwrap();
        let dir = base.join("b");
        let err = fresh(
            &dir,
            &data,
            &cfg,
            StopAfter {
                after: steps + 5,
                steps: 0,
            },
        )
        .unwrap_err();
        let stop = err
            .downcast_ref::<Interrupted>()
            .expect("an Interrupted error");
        assert_eq!(
            (stop.epoch, stop.step, stop.steps, stop.checkpointed),
            (2, 5, steps, true)
        );
        let state = load_state(&dir).unwrap();
        assert_eq!(state.epoch, 1);
        assert_eq!(state.partial.as_ref().unwrap().steps_done, 5);
        assert_eq!(state.optimizer_step, steps as u64 + 5);
        // Stopping on an epoch's last step checkpoints the whole epoch.
        let err = resume(
            &dir,
            &data,
            &cfg,
            StopAfter {
                after: steps - 5,
                steps: 0,
            },
        )
        .unwrap_err();
        let stop = err.downcast_ref::<Interrupted>().unwrap();
        assert_eq!((stop.epoch, stop.step), (2, steps));
        let state = load_state(&dir).unwrap();
        assert_eq!((state.epoch, state.partial.is_none()), (2, true));
        let (model, resumed) = resume(&dir, &data, &cfg, ()).unwrap();
        // Exact but for the last digit a JSON round trip of an f64 may move.
        let (a, b) = (figures(&resumed), figures(&straight));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.0, y.0);
            for (p, q) in [
                (x.1, y.1),
                (x.2, y.2),
                (x.3.unwrap(), y.3.unwrap()),
                (x.4.unwrap(), y.4.unwrap()),
            ] {
                assert!((p - q).abs() <= 1e-12 * q.abs().max(1.0), "{x:?} vs {y:?}");
            }
        }
        assert_eq!(weights(&model), weights(&straight_model));
        std::fs::remove_dir_all(&base).unwrap();
    }
}

#[test]
fn a_folder_mixing_two_saves_is_refused_and_other_files_are_kept() {
    let data = spirals(3, 100, 0.05, 5);
    let base = scratch("mixed");
    let (one, two) = (base.join("one"), base.join("two"));
    fresh(&one, &data, &config(1, OptimizerKind::default()), ()).unwrap();
    fresh(&two, &data, &config(2, OptimizerKind::default()), ()).unwrap();
    // What a crash between renames used to leave: epoch-2 weights beside epoch-1 state.
    std::fs::copy(two.join("model.safetensors"), one.join("model.safetensors")).unwrap();
    let state = load_state(&one).unwrap();
    let err = format!("{:#}", load_model(&one, &state).err().unwrap());
    assert!(
        err.contains("model.safetensors") && err.contains("does not belong"),
        "{err}"
    );

    // A save replaces the set whole and carries the run's other files over.
    std::fs::write(two.join("routing.json"), "[]").unwrap();
    let state = load_state(&two).unwrap();
    let (_, h) = resume(&two, &data, &config(3, OptimizerKind::default()), ()).unwrap();
    assert_eq!(h.len(), 3);
    assert_eq!(
        std::fs::read_to_string(two.join("routing.json")).unwrap(),
        "[]"
    );
    assert_eq!(load_state(&two).unwrap().epoch, state.epoch + 1);
    let names: Vec<String> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "temporary folders left behind: {names:?}");

    // A folder that holds other things is never replaced.
    let busy = base.join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), "mine").unwrap();
    let err = check_target(&busy).unwrap_err().to_string();
    assert!(err.contains("no checkpoint"), "{err}");
    let err = format!(
        "{:#}",
        fresh(&busy, &data, &config(1, OptimizerKind::default()), ()).unwrap_err()
    );
    assert!(err.contains("no checkpoint"), "{err}");
    assert_eq!(
        std::fs::read_to_string(busy.join("notes.txt")).unwrap(),
        "mine"
    );
    std::fs::remove_dir_all(&base).unwrap();
}

/// Rewrites `file` in `dir` and its digest in state.json, so only the check under test fires.
fn tamper(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn bad_optimizer_state_and_out_of_range_states_are_refused() {
    let data = spirals(3, 100, 0.05, 6);
    let base = scratch("bad-state");
    let dir = base.join("run");
    let cfg = config(2, OptimizerKind::default());
    fresh(&dir, &data, &cfg, ()).unwrap();
    let pristine: Vec<(String, Vec<u8>)> = ["state.json", "optimizer.safetensors"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read(dir.join(n)).unwrap()))
        .collect();
    let restore = || {
        for (n, b) in &pristine {
            std::fs::write(dir.join(n), b).unwrap();
        }
    };
    let err_of = || {
        format!(
            "{:#}",
            resume(&dir, &data, &config(3, OptimizerKind::default()), ()).unwrap_err()
        )
    };

    // NaN and negative moments, written as a valid safetensors file with its digest updated.
    for (name, value) in [("first.0", f32::NAN), ("second.1", -1.0)] {
        restore();
        let path = dir.join("optimizer.safetensors");
        let (mut tensors, _) = fastfeedforward::checkpoint::load(&path).unwrap();
        let t = &tensors[name];
        let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[0] = value;
        let shape = t.shape().clone();
        tensors.insert(
            name.into(),
            candle_core::Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap(),
        );
        let list: Vec<(String, candle_core::Tensor)> = tensors.into_iter().collect();
        fastfeedforward::checkpoint::save(&path, &list, Default::default()).unwrap();
        tamper(&dir, |v| {
            v["files"]
                .as_object_mut()
                .unwrap()
                .remove("optimizer.safetensors");
        });
        let err = err_of();
        assert!(
            err.contains("optimizer.safetensors") && err.contains(name),
            "{err}"
        );
    }
    // Settings and counters out of range.
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 4] = [
        ("beta1", |v| v["config"]["optimizer"]["beta1"] = 5.0.into()),
        ("epoch is 1000000", |v| v["epoch"] = 1_000_000.into()),
        ("optimizer_step", |v| v["optimizer_step"] = 3.into()),
        ("lr", |v| v["config"]["lr"] = (-1.0).into()),
    ];
    for (field, edit) in cases {
        restore();
        tamper(&dir, edit);
        let err = err_of();
        assert!(err.contains(field), "{field}: {err}");
    }
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn a_model_must_output_one_score_per_class() {
    let data = spirals(3, 50, 0.05, 7);
    let model = Model::new("linear:2-4", 0).unwrap();
    let cfg = config(1, OptimizerKind::default());
    let mut opt = optimizer_for(&model, &cfg);
    let err = train_from(&model, &mut opt, &data, &cfg, Vec::new().into(), None, ()).unwrap_err();
    assert!(
        err.to_string().contains("3 classes, the model outputs 4"),
        "{err}"
    );
}

#[test]
fn huge_layers_are_refused_before_allocating() {
    for spec in [
        "fff:4611686018427387904-4:d1",
        "linear:2-100000000000",
        "fff:2-3:d4:k1000000000",
        "fff:784-10:d40",
    ] {
        let Err(err) = Model::new(spec, 0) else {
            panic!("{spec} was built");
        };
        let err = format!("{err:#}");
        assert!(
            err.contains("too large") || err.contains("depth"),
            "{spec}: {err}"
        );
    }
    // The ordinary sizes still build.
    Model::new("fff:784-500:d8:identity, relu, fff:500-10:d8:identity", 0).unwrap();
}
