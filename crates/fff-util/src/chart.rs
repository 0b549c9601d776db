//! Line charts as PNG files, drawn with plotters and an embedded font (no system fonts needed),
//! written atomically.

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use std::path::Path;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// An error while drawing or writing a chart; the message names the file.
#[derive(Debug)]
pub struct ChartError(String);

impl std::fmt::Display for ChartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ChartError {}

impl From<std::io::Error> for ChartError {
    fn from(e: std::io::Error) -> Self {
        ChartError(e.to_string())
    }
}

/// One named line of points.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// `(x, y)` points, drawn in order.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed in black, without markers (a reference line).
    pub dashed: bool,
}

impl Series {
    /// A solid line with markers.
    pub fn line(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            label: label.into(),
            points,
            dashed: false,
        }
    }
}

/// Where the legend goes.
#[derive(Clone, Copy, Debug)]
pub enum Legend {
    /// Top left.
    UpperLeft,
    /// Bottom right.
    LowerRight,
}

/// Titles and axes of a chart.
#[derive(Clone, Debug)]
pub struct Chart<'a> {
    /// Caption.
    pub title: &'a str,
    /// X axis description.
    pub x_desc: &'a str,
    /// Y axis description.
    pub y_desc: &'a str,
    /// Logarithmic x axis (positive values only).
    pub log_x: bool,
    /// Logarithmic y axis (positive values only).
    pub log_y: bool,
    /// Where the legend goes.
    pub legend: Legend,
}

/// Draws `series` on `chart`'s axes into the PNG file `path`.
pub fn draw(path: &Path, chart: &Chart<'_>, series: &[Series]) -> Result<(), ChartError> {
    let named = |e: &dyn std::fmt::Display| ChartError(format!("{}: {e}", path.display()));
    // Registering twice is harmless.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let pts = || series.iter().flat_map(|s| s.points.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts() {
        if (chart.log_y && y <= 0.0) || (chart.log_x && x <= 0.0) {
            continue;
        }
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Err(named(&"nothing to plot"));
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let (xs, ys) = ((x0 - 0.2)..(x1 + 0.2), (y0 - pad)..(y1 + pad));
    // Log ranges from a power of ten to a power of ten, so that every decade is labelled.
    let decades =
        |lo: f64, hi: f64| 10f64.powf(lo.log10().floor())..10f64.powf((hi.log10() + 1e-9).ceil());
    let (log_xs, log_ys) = (decades(x0, x1), decades(y0, y1));
    crate::fs::write_with(path, |tmp| {
        let root = BitMapBackend::new(tmp, (900, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| named(&e))?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(chart.title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60);
        match (chart.log_x, chart.log_y) {
            (false, false) => mesh_and_series(&mut builder, xs, ys, chart, series),
            (false, true) => mesh_and_series(&mut builder, xs, log_ys.log_scale(), chart, series),
            (true, false) => mesh_and_series(&mut builder, log_xs.log_scale(), ys, chart, series),
            (true, true) => mesh_and_series(
                &mut builder,
                log_xs.log_scale(),
                log_ys.log_scale(),
                chart,
                series,
            ),
        }
        .map_err(|e| named(&e))?;
        root.present().map_err(|e| named(&e))
    })
}

/// Builds the axes of ranges `x` and `y`, draws the mesh and the series.
fn mesh_and_series<'a, X, Y>(
    builder: &mut ChartBuilder<'_, '_, BitMapBackend<'a>>,
    x: X,
    y: Y,
    chart: &Chart<'_>,
    series: &[Series],
) -> DrawResult
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut c = builder.build_cartesian_2d(x, y)?;
    // Log axes span decades, where plotters' labels (`300000.0`) run into each other.
    let x_label = |v: &f64| match chart.log_x {
        true => log_axis_label(*v),
        false => <X::CoordDescType as ValueFormatter<f64>>::format(v),
    };
    let y_label = |v: &f64| match chart.log_y {
        true => log_axis_label(*v),
        false => <Y::CoordDescType as ValueFormatter<f64>>::format(v),
    };
    c.configure_mesh()
        .x_desc(chart.x_desc)
        .y_desc(chart.y_desc)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style(("sans-serif", 14))
        .draw()?;
    draw_series(&mut c, chart.legend, series)
}

/// A short tick label for a log axis: `40k`, `1.5M`, `0.25`, `1.0e-3`.
fn log_axis_label(v: f64) -> String {
    let trim = |x: f64| {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    match v.abs() {
        a if a >= 1e9 => format!("{}G", trim(v / 1e9)),
        a if a >= 1e6 => format!("{}M", trim(v / 1e6)),
        a if a >= 1e3 => format!("{}k", trim(v / 1e3)),
        a if a >= 1e-2 || a == 0.0 => trim(v),
        _ => format!("{v:.1e}"),
    }
}

/// Named lines on linear axes, legend bottom right.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: impl IntoIterator<Item = (String, Vec<(f64, f64)>)>,
) -> Result<(), ChartError> {
    let chart = Chart {
        title,
        x_desc,
        y_desc,
        log_x: false,
        log_y: false,
        legend: Legend::LowerRight,
    };
    let series: Vec<Series> = series
        .into_iter()
        .map(|(label, points)| Series::line(label, points))
        .collect();
    draw(path, &chart, &series)
}

type DrawResult =
    Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

fn draw_series<'a, X, Y>(
    c: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    legend: Legend,
    series: &[Series],
) -> DrawResult
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, s) in series.iter().enumerate() {
        if s.dashed {
            c.draw_series(DashedLineSeries::new(
                s.points.clone(),
                6,
                4,
                BLACK.stroke_width(2),
            ))?
            .label(s.label.clone())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        c.draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        c.draw_series(s.points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    c.configure_series_labels()
        .position(match legend {
            Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
            Legend::LowerRight => SeriesLabelPosition::LowerRight,
        })
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_and_names_the_file_on_failure() {
        let dir = std::env::temp_dir().join(format!("fff-util-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.png");
        let chart = Chart {
            title: "t",
            x_desc: "x",
            y_desc: "y",
            log_x: true,
            log_y: true,
            legend: Legend::UpperLeft,
        };
        let series = [
            Series::line("a", vec![(0.0, 1.0), (1.0, 10.0)]),
            Series {
                label: "limit".into(),
                points: vec![(0.0, 2.0), (1.0, 20.0)],
                dashed: true,
            },
        ];
        draw(&path, &chart, &series).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[1..4], b"PNG");
        let bad = dir.join("no-such-folder").join("c.png");
        let err = draw(&bad, &chart, &series).unwrap_err();
        assert!(err.to_string().contains("no-such-folder"), "{err}");
        assert!(draw(&path, &chart, &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
