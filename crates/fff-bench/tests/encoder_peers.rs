//! The peers protocol of `fff bench encoder` end to end, with a stand-in peers script (Python's
//! standard library only) in place of tools/encoder_peers.py: what the engine sends, and that a
//! peer's timings and its embeddings of the texts it was given come back in order.

use fff_bench::encoder::{run_encoder, EncoderBenchOptions, PeersOptions, Shape, ENGINE};
use fff_bert::Pipeline;
use std::path::Path;
use std::process::Command;

/// Answers as encoder_peers.py does, for one runtime "stand-in": each shape and the workload
/// timed at 1 ms, and as the embedding of text `i` the vector `[i, len(text), -1]`.
const STAND_IN: &str = r#"
import json, struct, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
inputs = json.load(open(args["--inputs"]))
out = args["--out"]
entry = {"shapes": {s["name"]: {"times_s": [0.001] * int(args["--reps"]), "median_s": 0.001}
                    for s in inputs["shapes"]},
         "workload": {"times_s": [0.001], "median_s": 0.001},
         "check": {"passed": True, "texts": len(inputs["check"]["texts"])}}
texts = (inputs.get("embed") or {}).get("texts") or []
if texts:
    with open(out.rsplit("/", 1)[0] + "/stand-in.embeddings.f32", "wb") as f:
        for i, t in enumerate(texts):
            f.write(struct.pack("<3f", i, len(t), -1.0))
    entry["embeddings"] = {"file": "stand-in.embeddings.f32", "rows": len(texts), "dim": 3}
json.dump({"runtimes": {"stand-in": entry}, "threads": int(args["--threads"])}, open(out, "w"))
"#;

#[test]
fn a_peers_timings_and_embeddings_come_back_in_the_order_given() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: no python3 to run the stand-in peers script");
        return;
    }
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fff-bert/tests/fixtures/hf/tiny-st");
    let p = Pipeline::load(&model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("stand_in.py");
    std::fs::write(&script, STAND_IN).unwrap();
    let texts: Vec<String> = ["a cat", "the dog runs", "x"].map(String::from).to_vec();
    let opts = EncoderBenchOptions {
        model_dir: model.clone(),
        shapes: vec![Shape { batch: 2, seq: 8 }],
        workload: Some((texts.clone(), 2)),
        reps: 3,
        warmup: 1,
        workload_reps: 1,
        check_texts: 2,
        peers: Some(PeersOptions {
            command: vec!["python3".into(), script.display().to_string()],
            runtimes: vec!["stand-in".into()],
            cache_dir: None,
        }),
        embed_texts: texts.clone(),
        seed: 0,
    };
    let report = run_encoder(&p, &opts, |_| {}).unwrap();
    let peer = &report.runtimes["stand-in"];
    assert_eq!(peer.shapes["2x8"].times_s, vec![0.001; 3]);
    assert_eq!(peer.workload.as_ref().unwrap().median_s, 0.001);
    let want: Vec<Vec<f32>> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| vec![i as f32, t.len() as f32, -1.0])
        .collect();
    assert_eq!(peer.embeddings.as_ref().unwrap(), &want);
    // The engine was timed before and after the peers, on every shape.
    assert_eq!(report.runtimes[ENGINE].shapes["2x8"].times_s.len(), 6);
    assert!(report.runtimes[ENGINE].embeddings.is_none());

    // A peer that was given texts and returned no embeddings is an error, not a silent blank.
    let silent = dir.path().join("silent.py");
    std::fs::write(&silent, STAND_IN.replace("if texts:", "if False:")).unwrap();
    let opts = EncoderBenchOptions {
        peers: Some(PeersOptions {
            command: vec!["python3".into(), silent.display().to_string()],
            runtimes: vec!["stand-in".into()],
            cache_dir: None,
        }),
        ..opts
    };
    let e = run_encoder(&p, &opts, |_| {})
        .expect_err("refused")
        .to_string();
    assert!(e.contains("no embeddings"), "{e}");
}
