//! The compression job end to end on a tiny random BERT (a sentence-transformers folder): the
//! written model loads and runs its FFF layers; a run stopped and resumed (in either stage)
//! writes exactly what an uninterrupted run writes; a dense student of the teacher's full width
//! started from the teacher reproduces it while a random one does not; bad inputs get errors
//! that name what is wrong.

use fastfeedforward::Activation;
use fff_bert::{Pipeline, Weights};
use fff_compress::job::{run, Job, Observer, Outcome, Progress, Quiet};
use fff_compress::{Recipe, Stage, Start, Student, Tune};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

fn teacher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fff-bert/tests/fixtures/hf/tiny-st")
}

const WORDS: [&str; 16] = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "hello",
    "world",
    "test",
    "of",
    "a",
    "tokenizer",
    "café",
    "naïve",
];

/// A text file of `lines` pseudo-random passages.
fn text(dir: &Path, lines: usize) -> PathBuf {
    let mut s = String::new();
    let mut x = 12345u64;
    for i in 0..lines {
        s.push_str(&format!("src{}\t", i % 3));
        for _ in 0..(3 + i % 9) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push_str(WORDS[(x >> 60) as usize]);
            s.push(' ');
        }
        s.push('\n');
    }
    let p = dir.join("text.tsv");
    std::fs::write(&p, s).unwrap();
    p
}

fn recipe(student: Student) -> Recipe {
    Recipe {
        layerwise_tokens: 1500,
        chained_tokens: 1500,
        joint_tokens: 1000,
        joint_step_tokens: 128,
        learning_rate: 3e-3,
        step_rows: 64,
        chunk_tokens: 256,
        max_tokens: 32,
        init_tokens: 512,
        holdout: 16,
        eval_every: 1000,
        ..Recipe::new(student)
    }
}

fn fff() -> Student {
    Student::Fff {
        trees: 3,
        depth: 2,
        activation: Activation::Gelu,
        branch: 0,
    }
}

/// Trees beside a dense branch of the teacher's activation.
fn hybrid(trees: usize, depth: usize, branch: usize) -> Student {
    Student::Fff {
        trees,
        depth,
        activation: Activation::Gelu,
        branch,
    }
}

fn job(dir: &Path, name: &str, recipe: Recipe) -> Job {
    Job {
        model: teacher(),
        texts: vec![text(dir, 400)],
        out: dir.join(name),
        work: dir.join(format!("{name}.work")),
        recipe,
        checkpoint_seconds: 1e9,
    }
}

/// Stops the job after `after` chunks of `stage`.
struct StopAt<'a> {
    stage: Stage,
    after: usize,
    seen: usize,
    flag: &'a AtomicBool,
}

impl Observer for StopAt<'_> {
    fn progress(&mut self, p: &Progress) {
        if p.stage == self.stage {
            self.seen += 1;
            if self.seen == self.after {
                self.flag.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Runs `j` and stops it after `after` chunks of `stage`.
fn run_stopped_in(j: &Job, stage: Stage, after: usize) -> Outcome {
    let flag = AtomicBool::new(false);
    let mut stop = StopAt {
        stage,
        after,
        seen: 0,
        flag: &flag,
    };
    run(j, &mut stop, &flag).unwrap()
}

fn finished(o: Outcome) -> fff_compress::Report {
    match o {
        Outcome::Finished(r) => *r,
        other => panic!("expected a finished job, got {other:?}"),
    }
}

fn embeddings(p: &Pipeline) -> Vec<Vec<f32>> {
    let texts: Vec<String> = ["the quick brown fox", "hello world", "a", "naïve café test"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let pooling = p.pooling(None, None);
    p.embed(&texts, &pooling, 4)
        .unwrap()
        .into_iter()
        .map(|o| o.value)
        .collect()
}

fn gap(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max)
}

#[test]
fn a_compressed_model_loads_and_runs_its_fff_layers() {
    let dir = tempfile::tempdir().unwrap();
    let j = job(dir.path(), "out", recipe(fff()));
    let report = finished(run(&j, &mut Quiet, &AtomicBool::new(false)).unwrap());
    assert!(
        !j.work.exists(),
        "the finished job's checkpoints are removed"
    );
    let p = Pipeline::load(&j.out).unwrap();
    for i in 0..2 {
        let l = p.model.fff_layer(i).expect("an FFF layer");
        assert_eq!((l.config().trees, l.config().depth), (3, 2));
    }
    assert!(j.out.join("compression.json").exists());
    assert!(
        j.out.join("modules.json").exists(),
        "sentence-transformers files copied"
    );
    assert_eq!(report.neurons_per_token, (48, 9));
    assert!(report.written_gap < 1e-5);
    // init, one mid-stage and one end-of-stage measurement per stage (the joint stage is too
    // short for a mid-stage one)
    let stages: Vec<&str> = report.agreement.iter().map(|a| a.stage.as_str()).collect();
    assert_eq!(
        stages,
        [
            "init",
            "layerwise",
            "layerwise",
            "chained",
            "chained",
            "joint"
        ]
    );
    for a in &report.agreement {
        assert!(a.cosine_mean.is_finite() && a.cosine_p5 <= a.cosine_mean + 1e-12);
    }
    let original = Pipeline::load(&teacher()).unwrap();
    let e = embeddings(&p);
    assert!(gap(&e, &embeddings(&original)) > 0.0);
}

#[test]
fn a_run_stopped_and_resumed_in_either_stage_writes_what_an_uninterrupted_run_writes() {
    let dir = tempfile::tempdir().unwrap();
    let whole = job(dir.path(), "whole", recipe(fff()));
    finished(run(&whole, &mut Quiet, &AtomicBool::new(false)).unwrap());
    let want = std::fs::read(whole.out.join("model.safetensors")).unwrap();
    for (stage, after) in [
        (Stage::Layerwise, 2),
        (Stage::Chained, 3),
        (Stage::Joint, 2),
    ] {
        let name = format!("resumed-{}", stage.name());
        let j = job(dir.path(), &name, recipe(fff()));
        match run_stopped_in(&j, stage, after) {
            Outcome::Stopped { stage: s, tokens } => {
                assert_eq!(s, stage);
                assert!(tokens > 0);
            }
            other => panic!("expected a stop, got {other:?}"),
        }
        assert!(j.work.join("checkpoint/state.json").exists());
        assert!(!j.out.exists());
        finished(run(&j, &mut Quiet, &AtomicBool::new(false)).unwrap());
        let got = std::fs::read(j.out.join("model.safetensors")).unwrap();
        assert!(
            got == want,
            "stopped in {}: the resumed model differs",
            stage.name()
        );
    }
}

#[test]
fn a_full_width_dense_student_from_the_teacher_reproduces_it_and_a_random_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = recipe(Student::Dense { width: 48 });
    (r.layerwise_tokens, r.chained_tokens, r.joint_tokens) = (0, 0, 0);
    let j = job(dir.path(), "dense", r.clone());
    finished(run(&j, &mut Quiet, &AtomicBool::new(false)).unwrap());
    let p = Pipeline::load(&j.out).unwrap();
    assert!(
        p.model.fff_layer(0).is_none(),
        "written as a plain dense FFN"
    );
    let original = Pipeline::load(&teacher()).unwrap();
    let g = gap(&embeddings(&p), &embeddings(&original));
    assert!(g < 1e-5, "the teacher's own neurons, all of them: {g}");

    r.start = Start::Random;
    let j = job(dir.path(), "random", r);
    finished(run(&j, &mut Quiet, &AtomicBool::new(false)).unwrap());
    let g = gap(
        &embeddings(&Pipeline::load(&j.out).unwrap()),
        &embeddings(&original),
    );
    assert!(g > 1e-2, "a random dense FFN of the same width: {g}");

    // Narrower: written with the narrower intermediate size.
    let mut r = recipe(Student::Dense { width: 5 });
    (r.layerwise_tokens, r.chained_tokens, r.joint_tokens) = (300, 0, 300);
    let j = job(dir.path(), "narrow", r);
    finished(run(&j, &mut Quiet, &AtomicBool::new(false)).unwrap());
    let config = std::fs::read_to_string(j.out.join("config.json")).unwrap();
    assert!(config.contains("\"intermediate_size\": 5"), "{config}");
    Pipeline::load(&j.out).unwrap();
}

#[test]
fn a_dense_branch_beside_the_trees_is_trained_written_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    // Every teacher neuron once, 5 in the branch and 43 as depth-0 GELU trees: the original.
    let mut r = recipe(hybrid(43, 0, 5));
    (r.layerwise_tokens, r.chained_tokens, r.joint_tokens) = (0, 0, 0);
    let j = job(dir.path(), "all", r.clone());
    finished(run(&j, &mut Quiet, &AtomicBool::new(false)).unwrap());
    let p = Pipeline::load(&j.out).unwrap();
    let original = Pipeline::load(&teacher()).unwrap();
    let g = gap(&embeddings(&p), &embeddings(&original));
    assert!(
        g < 1e-5,
        "branch and trees of all the teacher's neurons: {g}"
    );
    // Without the branch's neurons the trees alone are far off: the branch is run.
    let mut cut = r.clone();
    cut.student = hybrid(43, 0, 0);
    let j = job(dir.path(), "cut", cut);
    finished(run(&j, &mut Quiet, &AtomicBool::new(false)).unwrap());
    let g = gap(
        &embeddings(&Pipeline::load(&j.out).unwrap()),
        &embeddings(&original),
    );
    assert!(g > 1e-3, "43 of the 48 neurons: {g}");

    // Trained, with a stop in the joint stage: the same bytes as an uninterrupted run, a
    // branch of 5 in every layer, and the shape in config.json.
    let whole = job(dir.path(), "whole", recipe(hybrid(3, 2, 5)));
    let report = finished(run(&whole, &mut Quiet, &AtomicBool::new(false)).unwrap());
    assert_eq!(report.neurons_per_token, (48, 14));
    assert_eq!(report.student, "fff 3x2 gelu + dense 5");
    let p = Pipeline::load(&whole.out).unwrap();
    for i in 0..2 {
        let b = p.model.fff_branch(i).expect("a dense branch");
        assert_eq!((b.config().trees, b.config().depth), (5, 0));
        assert_eq!(p.model.fff_layer(i).unwrap().config().trees, 3);
    }
    let config = std::fs::read_to_string(whole.out.join("config.json")).unwrap();
    assert!(config.contains("\"dense_branch\": 5"), "{config}");
    let j = job(dir.path(), "resumed", recipe(hybrid(3, 2, 5)));
    assert!(matches!(
        run_stopped_in(&j, Stage::Joint, 2),
        Outcome::Stopped { .. }
    ));
    finished(run(&j, &mut Quiet, &AtomicBool::new(false)).unwrap());
    assert!(
        std::fs::read(j.out.join("model.safetensors")).unwrap()
            == std::fs::read(whole.out.join("model.safetensors")).unwrap(),
        "stopped in the joint stage: the resumed model differs"
    );
}

#[test]
fn soft_routing_and_load_balancing_train_change_the_student_and_resume_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let plain = job(dir.path(), "plain", recipe(fff()));
    finished(run(&plain, &mut Quiet, &AtomicBool::new(false)).unwrap());
    let plain = std::fs::read(plain.out.join("model.safetensors")).unwrap();
    let with = |r: Recipe| Recipe {
        soft_routing: Some(fff_train::state::SoftSchedule {
            levels: 1,
            start_temperature: 1.0,
            end_temperature: 0.05,
            hard_fraction: 0.3,
        }),
        load_balance: 0.1,
        ..r
    };
    let whole = job(dir.path(), "whole", with(recipe(fff())));
    finished(run(&whole, &mut Quiet, &AtomicBool::new(false)).unwrap());
    let want = std::fs::read(whole.out.join("model.safetensors")).unwrap();
    assert!(
        want != plain,
        "soft routing and balancing left the student as it was"
    );
    Pipeline::load(&whole.out).unwrap();
    // Stopped while the routing is still soft (2 of about 6 chunks of the layer-wise stage).
    let j = job(dir.path(), "resumed", with(recipe(fff())));
    assert!(matches!(
        run_stopped_in(&j, Stage::Layerwise, 2),
        Outcome::Stopped { .. }
    ));
    let mut other = j.clone();
    other.recipe.soft_routing = None;
    let e = error(&other);
    assert!(e.contains("soft_routing"), "{e}");
    finished(run(&j, &mut Quiet, &AtomicBool::new(false)).unwrap());
    assert!(
        std::fs::read(j.out.join("model.safetensors")).unwrap() == want,
        "stopped while soft: the resumed model differs"
    );
}

#[test]
fn a_joint_stage_that_tunes_the_trunk_writes_it_and_resumes_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let tuned = |r: Recipe| Recipe {
        joint_tune: Tune::All,
        ..r
    };
    let whole = job(dir.path(), "whole", tuned(recipe(fff())));
    // The run itself checks that the written folder embeds as the trained student does.
    let report = finished(run(&whole, &mut Quiet, &AtomicBool::new(false)).unwrap());
    assert!(report.written_gap < 1e-4);
    let written = Weights::from_dir(&whole.out).unwrap();
    let original = Weights::from_dir(&teacher()).unwrap();
    let values = |w: &Weights, name: &str| -> Vec<f32> {
        let t = w.get_stored(name).unwrap();
        t.flatten_all().unwrap().to_vec1().unwrap()
    };
    let changed = |name: &str| values(&written, name) != values(&original, name);
    for name in [
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.1.attention.output.dense.bias",
        "encoder.layer.1.output.LayerNorm.weight",
    ] {
        assert!(changed(name), "{name} was not tuned");
    }
    // The embeddings are no block's trunk: never tuned.
    assert!(!changed("embeddings.LayerNorm.weight"));
    let j = job(dir.path(), "resumed", tuned(recipe(fff())));
    assert!(matches!(
        run_stopped_in(&j, Stage::Joint, 2),
        Outcome::Stopped { .. }
    ));
    assert!(j.work.join("checkpoint/trunk.safetensors").exists());
    finished(run(&j, &mut Quiet, &AtomicBool::new(false)).unwrap());
    assert!(
        std::fs::read(j.out.join("model.safetensors")).unwrap()
            == std::fs::read(whole.out.join("model.safetensors")).unwrap(),
        "stopped in the joint stage: the resumed model differs"
    );
}

fn error(j: &Job) -> String {
    format!(
        "{:#}",
        run(j, &mut Quiet, &AtomicBool::new(false)).unwrap_err()
    )
}

#[test]
fn bad_inputs_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // A model that is not a Hugging Face BERT.
    let mut j = job(dir.path(), "a", recipe(fff()));
    j.model = dir.path().join("nothing-here");
    assert!(error(&j).contains("nothing-here"), "{}", error(&j));
    // Empty and binary text.
    let mut j = job(dir.path(), "b", recipe(fff()));
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    j.texts = vec![empty];
    let e = error(&j);
    assert!(e.contains("empty.txt") && e.contains("no text"), "{e}");
    let binary = dir.path().join("data.bin");
    std::fs::write(&binary, [0u8, 159, 146, 150]).unwrap();
    j.texts = vec![binary];
    let e = error(&j);
    assert!(e.contains("data.bin") && e.contains("binary"), "{e}");
    // A shape the teacher cannot give.
    let j = job(dir.path(), "c", recipe(Student::Dense { width: 49 }));
    let e = error(&j);
    assert!(e.contains("1..=48"), "{e}");
    // A learning rate that is no learning rate.
    let mut r = recipe(fff());
    r.learning_rate = 1e30;
    let e = error(&job(dir.path(), "d", r));
    assert!(e.contains("--lr"), "{e}");
    // An output folder that holds something.
    let j = job(dir.path(), "e", recipe(fff()));
    std::fs::create_dir_all(&j.out).unwrap();
    std::fs::write(j.out.join("keep.txt"), "x").unwrap();
    let e = error(&j);
    assert!(e.contains("not empty"), "{e}");
    // A compressed model is not compressed again.
    let j = job(dir.path(), "f", {
        let mut r = recipe(fff());
        (r.layerwise_tokens, r.chained_tokens, r.joint_tokens) = (0, 0, 0);
        r
    });
    finished(run(&j, &mut Quiet, &AtomicBool::new(false)).unwrap());
    let mut again = job(dir.path(), "g", recipe(fff()));
    again.model = j.out.clone();
    let e = error(&again);
    assert!(e.contains("already"), "{e}");
}

#[test]
fn resuming_with_other_settings_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let j = job(dir.path(), "out", recipe(fff()));
    assert!(matches!(
        run_stopped_in(&j, Stage::Layerwise, 1),
        Outcome::Stopped { .. }
    ));
    let mut other = j.clone();
    other.recipe.learning_rate = 1e-2;
    let e = error(&other);
    assert!(
        e.contains("learning_rate") && e.contains("0.003") && e.contains("0.01"),
        "{e}"
    );
    let mut other = j.clone();
    other.recipe.student = Student::Fff {
        trees: 4,
        depth: 2,
        activation: Activation::Gelu,
        branch: 0,
    };
    let e = error(&other);
    assert!(e.contains("`student`"), "{e}");
    let mut other = j.clone();
    let elsewhere = dir.path().join("other");
    std::fs::create_dir_all(&elsewhere).unwrap();
    other.texts = vec![text(&elsewhere, 300)];
    let e = error(&other);
    assert!(e.contains("other text files"), "{e}");
    // The same settings resume.
    finished(run(&j, &mut Quiet, &AtomicBool::new(false)).unwrap());
}
