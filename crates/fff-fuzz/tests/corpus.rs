//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through its entry point: each
//! input must return without panicking. Inputs that once found a bug stay here for good.

use std::path::Path;

#[test]
fn every_corpus_input_runs_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (name, target) in fff_fuzz::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; every target has a seed corpus", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{}: empty corpus", dir.display());
        for input in &inputs {
            let bytes = std::fs::read(input).expect("corpus file");
            let outcome = std::panic::catch_unwind(|| target(&bytes));
            assert!(outcome.is_ok(), "{name}: {} panicked", input.display());
        }
        eprintln!("{name}: {} inputs", inputs.len());
    }
}
