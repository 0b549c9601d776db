//! `fff bench layer` end to end on a tiny shape: records, JSON fields, plot.

use fff_bench::report::{markdown_table, plot, write_json};
use fff_bench::{run, BenchOptions, ConfigSpec};
use std::time::Duration;

#[test]
fn config_names_parse_and_bad_ones_are_explained() {
    assert_eq!(
        "1x11".parse::<ConfigSpec>().unwrap(),
        ConfigSpec::Fff {
            trees: 1,
            depth: 11
        }
    );
    assert_eq!(
        "dense4095".parse::<ConfigSpec>().unwrap(),
        ConfigSpec::Dense { neurons: 4095 }
    );
    assert_eq!("3072x0".parse::<ConfigSpec>().unwrap().neurons(), 3072);
    assert_eq!("1x11".parse::<ConfigSpec>().unwrap().neurons(), 4095);
    assert_eq!("1x11".parse::<ConfigSpec>().unwrap().used(), 12);
    for bad in ["1x", "x3", "dense", "densex", "1x99", "0x3", "hello"] {
        let err = bad.parse::<ConfigSpec>().unwrap_err().to_string();
        assert!(err.contains(bad), "{bad}: {err}");
    }
}

#[test]
fn tiny_run_produces_checked_records_json_and_plot() {
    let opts = BenchOptions {
        width: 19,
        configs: "2x3,1x4,dense30"
            .split(',')
            .map(|c| c.parse().unwrap())
            .collect(),
        batches: vec![1, 37],
        threads: vec![1, 2],
        reps: 3,
        budget: Duration::ZERO,
        ..BenchOptions::default()
    };
    let records = run(&opts, &mut ()).unwrap();
    // Per (threads, batch): dense30 with gemm, faer, level2, level1 = 4 rows (dense31 for 1x4
    // is measured as a baseline only), and 3 FFF rows per FFF config.
    assert_eq!(records.len(), 2 * 2 * (4 + 2 * 3), "{records:#?}");
    fff_bench::report::ensure_checked(&records).unwrap();
    for r in &records {
        assert!(r.median_s > 0.0 && r.median_s.is_finite(), "{r:?}");
        assert!(
            r.speedup_vs_dense > 0.0 && r.speedup_vs_dense.is_finite(),
            "{r:?}"
        );
        assert!(r.runs >= 3);
        // Every row of the warm-up and of the last timed output is compared at these batches.
        assert_eq!(r.check.rows, 2 * r.batch, "{r:?}");
    }
    // At batch 37 the kernel runs (and is checked on) the walk Auto picks there, which is not
    // the per-token one; the row is labelled with it.
    let config = fastfeedforward::FffConfig::new(19, 19, 4, 1);
    let chosen = fastfeedforward::internal::resolve_strategy(
        fastfeedforward::Strategy::Auto,
        &config,
        37,
        fastfeedforward::WeightFormat::F32,
    );
    assert_ne!(chosen, fastfeedforward::Strategy::PerToken);
    let label = format!("fff ({})", chosen.name());
    assert!(records
        .iter()
        .any(|r| r.config == "1x4" && r.batch == 37 && r.implementation == label));
    let r = records.iter().find(|r| r.config == "2x3").unwrap();
    assert_eq!((r.neurons_total, r.neurons_used), (30, 8));
    assert!((r.limit - 30.0 / 8.0).abs() < 1e-12);
    let r = records.iter().find(|r| r.config == "1x4").unwrap();
    assert_eq!(r.neurons_total, 31);
    assert!(r.dense_baseline.starts_with("dense-"));
    // The baseline of a dense config is its own fastest correct run, loops included: speedup
    // exactly 1 there, at every (threads, batch), and no dense run beats it.
    for threads in [1, 2] {
        for batch in [1, 37] {
            let dense: Vec<_> = records
                .iter()
                .filter(|r| r.config == "dense30" && r.threads == threads && r.batch == batch)
                .collect();
            let best = dense.iter().map(|r| r.speedup_vs_dense).fold(0.0, f64::max);
            assert!((best - 1.0).abs() < 1e-12, "{dense:#?}");
            let fastest = dense
                .iter()
                .min_by(|a, b| a.median_s.total_cmp(&b.median_s))
                .unwrap();
            assert_eq!(fastest.dense_baseline, fastest.implementation);
        }
    }

    let table = markdown_table(&records);
    assert!(table.contains("| 2x3 | 30 / 8 |") && table.contains("batch 37, 2 threads"));

    let dir = std::env::temp_dir().join(format!("fff-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    write_json(&json, &records).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let first = &parsed.as_array().unwrap()[0];
    for field in [
        "config",
        "impl",
        "batch",
        "threads",
        "median_s",
        "speedup_vs_dense",
        "limit",
    ] {
        assert!(first.get(field).is_some(), "JSON lacks `{field}`: {first}");
    }
    let png = dir.join("bench.png");
    plot(&png, &records).unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.len() > 1000 && bytes.starts_with(b"\x89PNG"),
        "not a PNG"
    );
}

#[test]
fn nothing_to_measure_is_an_error() {
    let opts = BenchOptions {
        batches: vec![],
        ..BenchOptions::default()
    };
    assert!(run(&opts, &mut ()).is_err());
    let opts = BenchOptions {
        threads: vec![0],
        ..BenchOptions::default()
    };
    assert!(run(&opts, &mut ())
        .unwrap_err()
        .to_string()
        .contains("thread"));
}
