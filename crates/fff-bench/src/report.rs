//! Output of a run: a markdown table, a JSON file, and a plot.

use crate::runner::Record;
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

/// A duration in the most readable unit.
pub fn human_seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.2} µs", s * 1e6)
    }
}

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
            "| config | neurons total / used | implementation | median | GFLOP/s | speedup vs dense | dense baseline | limit |"
        );
        let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---|---:|");
        for r in records
            .iter()
            .filter(|r| r.threads == threads && r.batch == batch)
        {
            let _ = writeln!(
                out,
                "| {} | {} / {} | {} | {} | {:.1} | {:.1}x | {} ({}) | {:.0}x |",
                r.config,
                r.neurons_total,
                r.neurons_used,
                r.implementation,
                human_seconds(r.median_s),
                r.gflops,
                r.speedup_vs_dense,
                r.dense_baseline,
                human_seconds(r.dense_median_s),
                r.limit
            );
        }
    }
    out
}

/// Writes the records as JSON through a temporary file renamed into place.
pub fn write_json(path: &Path, records: &[Record]) -> Result<()> {
    let text = serde_json::to_string_pretty(records)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Draws speedup against depth for each batch size (fastest FFF implementation, most threads),
/// with the limit (neurons total / used) as a dashed line.
pub fn plot(path: &Path, records: &[Record]) -> Result<()> {
    // Registering twice is harmless; the font is embedded so no system fonts are needed.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let threads = records
        .iter()
        .map(|r| r.threads)
        .max()
        .context("no records")?;
    let fff: Vec<&Record> = records
        .iter()
        .filter(|r| {
            r.threads == threads && r.depth.is_some() && r.implementation.starts_with("fff (")
        })
        .collect();
    anyhow::ensure!(!fff.is_empty(), "no FFF records to plot");
    let max_depth = fff.iter().filter_map(|r| r.depth).max().unwrap_or(0);
    let y_max = fff
        .iter()
        .map(|r| r.speedup_vs_dense.max(r.limit))
        .fold(1.0f64, f64::max)
        * 2.0;
    let y_min = fff
        .iter()
        .map(|r| r.speedup_vs_dense)
        .fold(1.0f64, f64::min)
        .max(1e-3)
        / 2.0;
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("FFF speedup over the fastest dense FF ({threads} threads)"),
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(
                -0.5f64..(max_depth as f64 + 0.5),
                (y_min..y_max).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("depth D (config KxD)")
            .y_desc("speedup (log scale)")
            .label_style(("sans-serif", 14))
            .draw()?;
        let mut limit: Vec<(f64, f64)> = fff
            .iter()
            .map(|r| (r.depth.unwrap() as f64, r.limit))
            .collect();
        limit.sort_by(|a, b| a.0.total_cmp(&b.0));
        limit.dedup_by(|a, b| a.0 == b.0);
        chart
            .draw_series(DashedLineSeries::new(
                limit.clone(),
                6,
                4,
                BLACK.stroke_width(2),
            ))?
            .label("limit: neurons total / used")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
        let mut batches: Vec<usize> = fff.iter().map(|r| r.batch).collect();
        batches.sort();
        batches.dedup();
        for (i, batch) in batches.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut pts: Vec<(f64, f64)> = fff
                .iter()
                .filter(|r| r.batch == *batch)
                .map(|r| (r.depth.unwrap() as f64, r.speedup_vs_dense))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(format!("batch {batch}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Draws named series of (x, y) points as lines on linear axes, written atomically to `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    anyhow::ensure!(x0 <= x1, "nothing to plot");
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((x0 - 0.2)..(x1 + 0.2), (y0 - pad)..(y1 + pad))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, (label, p)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(p.clone(), color.stroke_width(2)))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(p.iter().map(|q| Circle::new(*q, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
        root.present()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
