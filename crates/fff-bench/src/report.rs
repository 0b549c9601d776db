//! Output of a run: a markdown table, a JSON file, and a plot.

use crate::runner::Record;
use anyhow::{Context, Result};
use fff_util::chart::{draw, Chart, Legend, Series};
use fff_util::fs::write_atomic;
use fff_util::timing::human_seconds;
use std::fmt::Write as _;
use std::path::Path;

/// The results as a markdown table, grouped by threads and batch.
pub fn markdown_table(records: &[Record]) -> String {
    let mut out = String::new();
    let mut keys: Vec<(usize, usize)> = records.iter().map(|r| (r.threads, r.batch)).collect();
    keys.dedup();
    keys.sort();
    keys.dedup();
    for (threads, batch) in keys {
        let _ = writeln!(
            out,
            "\n**batch {batch}, {threads} thread{}**\n",
            if threads == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            out,
            "| config | neurons total / used | implementation | weights | median | GFLOP/s | speedup vs dense | dense baseline | limit | traffic floor | time / floor | check |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---|---|---:|---:|---:|---|---:|---:|---:|---|"
        );
        for r in records
            .iter()
            .filter(|r| r.threads == threads && r.batch == batch)
        {
            let median = if r.median_s.is_finite() {
                human_seconds(r.median_s)
            } else {
                "not timed".into()
            };
            let (gflops, speedup) = if r.passed() {
                (
                    format!("{:.1}", r.gflops),
                    format!("{:.1}x", r.speedup_vs_dense),
                )
            } else {
                ("—".into(), "—".into())
            };
            let baseline = if r.dense_median_s.is_finite() {
                format!("{} ({})", r.dense_baseline, human_seconds(r.dense_median_s))
            } else {
                "none correct".into()
            };
            let (floor, over) = match &r.floor {
                Some(f) => (
                    human_seconds(f.floor_s),
                    format!("{:.2}", f.time_over_floor),
                ),
                None => ("".into(), "".into()),
            };
            let _ = writeln!(
                out,
                "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {:.0}x | {} | {} | {} |",
                r.config,
                r.neurons_total,
                r.neurons_used,
                r.implementation,
                r.weights,
                median,
                gflops,
                speedup,
                baseline,
                r.limit,
                floor,
                over,
                check_cell(r)
            );
        }
    }
    let failed: Vec<&Record> = records.iter().filter(|r| !r.passed()).collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\n**Failed checks:**\n");
        for r in failed {
            let _ = writeln!(out, "- {}", failure_line(r));
        }
    }
    out
}

/// The check column: rows compared (and excused), or FAILED.
fn check_cell(r: &Record) -> String {
    match (r.passed(), r.check.excused) {
        (false, _) => "**FAILED**".into(),
        (true, 0) => format!("ok, {} rows", r.check.rows),
        (true, e) => format!("ok, {} rows ({e} near ties)", r.check.rows),
    }
}

fn failure_line(r: &Record) -> String {
    format!(
        "{} {} batch {} threads {}: {}",
        r.config,
        r.implementation,
        r.batch,
        r.threads,
        r.check.failure.as_deref().unwrap_or("passed")
    )
}

/// An error naming every row whose check failed, or `Ok` when all passed: what makes
/// `fff bench layer` exit non-zero after printing and writing what it measured.
pub fn ensure_checked(records: &[Record]) -> Result<()> {
    let failed: Vec<String> = records
        .iter()
        .filter(|r| !r.passed())
        .map(failure_line)
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} implementations failed their check against the reference:\n  {}",
        failed.len(),
        records.len(),
        failed.join("\n  ")
    );
    Ok(())
}

/// Writes the records as JSON, atomically.
pub fn write_json(path: &Path, records: &[Record]) -> Result<()> {
    let text = serde_json::to_string_pretty(records)?;
    Ok(write_atomic(path, text.as_bytes())?)
}

/// Draws speedup against depth for each batch size and weight format (the kernel's own walk,
/// most threads), with the limit (neurons total / used) as a dashed line; and, beside it
/// (`<name>_floor.<ext>`, the same format), each kernel row's time over its traffic floor.
pub fn plot(path: &Path, records: &[Record]) -> Result<()> {
    let threads = records
        .iter()
        .map(|r| r.threads)
        .max()
        .context("no records")?;
    let fff: Vec<&Record> = records
        .iter()
        .filter(|r| {
            r.threads == threads
                && r.depth.is_some()
                && r.implementation.starts_with("fff (")
                && r.passed()
                && r.speedup_vs_dense.is_finite()
        })
        .collect();
    anyhow::ensure!(!fff.is_empty(), "no FFF records to plot");
    let depth = |r: &Record| r.depth.unwrap_or(0) as f64;
    let mut limit: Vec<(f64, f64)> = fff.iter().map(|r| (depth(r), r.limit)).collect();
    limit.sort_by(|a, b| a.0.total_cmp(&b.0));
    limit.dedup_by(|a, b| a.0 == b.0);
    let mut series = vec![Series {
        label: "limit: neurons total / used".into(),
        points: limit,
        dashed: true,
    }];
    let mut floor_series = Vec::new();
    let mut keys: Vec<(usize, String)> = fff.iter().map(|r| (r.batch, r.weights.clone())).collect();
    keys.sort();
    keys.dedup();
    for (batch, weights) in keys {
        let rows: Vec<&&Record> = fff
            .iter()
            .filter(|r| r.batch == batch && r.weights == weights)
            .collect();
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (depth(r), r.speedup_vs_dense))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        series.push(Series::line(format!("batch {batch}, {weights}"), pts));
        let mut over: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| r.floor.as_ref().map(|f| (depth(r), f.time_over_floor)))
            .collect();
        over.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !over.is_empty() {
            floor_series.push(Series::line(format!("batch {batch}, {weights}"), over));
        }
    }
    let title = format!("FFF speedup over the fastest f32 dense FF ({threads} threads)");
    let chart = Chart {
        title: &title,
        x_desc: "depth D (config KxD)",
        y_desc: "speedup (log scale)",
        log_x: false,
        log_y: true,
        legend: Legend::UpperLeft,
    };
    draw(path, &chart, &series)?;
    if !floor_series.is_empty() {
        let floor_path = fff_util::chart::beside(path, "floor");
        let title = format!("FFF kernel time over its traffic floor ({threads} threads)");
        let chart = Chart {
            title: &title,
            x_desc: "depth D (config KxD)",
            y_desc: "time / floor (log scale; 1 = at the floor)",
            log_x: false,
            log_y: true,
            legend: Legend::UpperLeft,
        };
        draw(&floor_path, &chart, &floor_series)?;
    }
    Ok(())
}
