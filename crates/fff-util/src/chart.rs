//! Line charts as PNG or SVG files (the format chosen by the file name's extension), drawn with
//! plotters and an embedded font (no system fonts needed), written atomically.

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

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

/// The file formats a chart is drawn in, chosen by the file name's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A 900×600 bitmap (`.png`).
    Png,
    /// Vector graphics (`.svg`).
    Svg,
}

/// The extensions a chart's file name may end in, for messages.
pub const EXTENSIONS: &str = ".png or .svg";

/// The format of a chart written to `path`, by its extension (any case); `None` for another or
/// none.
pub fn format_of(path: &Path) -> Option<Format> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "png" => Some(Format::Png),
        "svg" => Some(Format::Svg),
        _ => None,
    }
}

/// Checks, before any work is done, that a chart can later be written at `path` (given with
/// `flag`): its name ends in one of [`EXTENSIONS`], its folder exists and it is not a folder.
/// The error names the flag, the path and what is expected.
pub fn check_file(path: &Path, flag: &str) -> std::io::Result<()> {
    if format_of(path).is_none() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{flag} {}: a chart's file name must end in {EXTENSIONS}, which chooses its \
                 format",
                path.display()
            ),
        ));
    }
    crate::fs::check_output_file(path, flag)
}

/// A second chart's path beside `path`: `<stem>_<suffix>` with `path`'s extension (`.png`
/// where it has none), e.g. `bench.svg` → `bench_floor.svg`.
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path
        .extension()
        .map_or("png".into(), |e| e.to_string_lossy());
    path.with_file_name(format!("{stem}_{suffix}.{ext}"))
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

/// Draws `series` on `chart`'s axes into the file `path`, a PNG or an SVG by its extension
/// (see [`format_of`]).
pub fn draw(path: &Path, chart: &Chart<'_>, series: &[Series]) -> Result<(), ChartError> {
    let named = |e: &dyn std::fmt::Display| ChartError(format!("{}: {e}", path.display()));
    let format = format_of(path).ok_or_else(|| {
        named(&format!(
            "a chart's file name must end in {EXTENSIONS}, which chooses its format"
        ))
    })?;
    // Registering twice is harmless.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    // The temporary name keeps the extension, from which plotters' bitmap writer picks PNG.
    crate::fs::write_with(path, |tmp| {
        match format {
            Format::Png => render(
                BitMapBackend::new(tmp, SIZE).into_drawing_area(),
                chart,
                series,
            ),
            Format::Svg => render(
                SVGBackend::new(tmp, SIZE).into_drawing_area(),
                chart,
                series,
            ),
        }
        .map_err(|e| named(&e))
    })
}

/// Pixels of a chart.
const SIZE: (u32, u32) = (900, 600);

/// Draws the chart on `root` and writes it out; the error is plotters' own, in words.
fn render<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    chart: &Chart<'_>,
    series: &[Series],
) -> Result<(), String> {
    let pts = || series.iter().flat_map(|s| s.points.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts() {
        if (chart.log_y && y <= 0.0) || (chart.log_x && x <= 0.0) {
            continue;
        }
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Err("nothing to plot".into());
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let (xs, ys) = ((x0 - 0.2)..(x1 + 0.2), (y0 - pad)..(y1 + pad));
    // Log ranges from a power of ten to a power of ten, so that every decade is labelled.
    let decades =
        |lo: f64, hi: f64| 10f64.powf(lo.log10().floor())..10f64.powf((hi.log10() + 1e-9).ceil());
    let (log_xs, log_ys) = (decades(x0, x1), decades(y0, y1));
    let text = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(text)?;
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
    .map_err(text)?;
    root.present().map_err(text)
}

/// Builds the axes of ranges `x` and `y`, draws the mesh and the series.
fn mesh_and_series<DB: DrawingBackend, X, Y>(
    builder: &mut ChartBuilder<'_, '_, DB>,
    x: X,
    y: Y,
    chart: &Chart<'_>,
    series: &[Series],
) -> DrawResult<DB>
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

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_series<'a, DB: DrawingBackend + 'a, X, Y>(
    c: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    legend: Legend,
    series: &[Series],
) -> DrawResult<DB>
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
    fn chart_files_are_checked_by_extension_before_the_work() {
        assert_eq!(format_of(Path::new("a/b.png")), Some(Format::Png));
        assert_eq!(format_of(Path::new("b.Svg")), Some(Format::Svg));
        assert_eq!(format_of(Path::new("b.tmp")), None);
        assert_eq!(format_of(Path::new("out")), None);
        check_file(Path::new("x.png"), "--plot").unwrap();
        check_file(Path::new("x.svg"), "--plot").unwrap();
        for bad in ["/tmp/x.tmp", "out", "x.png.bak"] {
            let err = check_file(Path::new(bad), "--plot")
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!(
                    "--plot {bad}: a chart's file name must end in .png or .svg, which chooses \
                     its format"
                )
            );
        }
        // The folder is checked too.
        let err = check_file(Path::new("/no/such/folder/x.png"), "--plot").unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert_eq!(
            beside(Path::new("d/f.svg"), "mnist"),
            Path::new("d/f_mnist.svg")
        );
        assert_eq!(
            beside(Path::new("d/f.png"), "floor"),
            Path::new("d/f_floor.png")
        );
        assert_eq!(beside(Path::new("f"), "floor"), Path::new("f_floor.png"));
    }

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
        // The format follows the extension, in any case.
        let svg = dir.join("c.SVG");
        draw(&svg, &chart, &series).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg") && text.contains("limit"), "{text}");
        for name in ["c.tmp", "c"] {
            let err = draw(&dir.join(name), &chart, &series)
                .unwrap_err()
                .to_string();
            assert!(err.contains(name) && err.contains(".png or .svg"), "{err}");
        }
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["c.SVG", "c.png"], "temporaries left behind");
        let bad = dir.join("no-such-folder").join("c.png");
        let err = draw(&bad, &chart, &series).unwrap_err();
        assert!(err.to_string().contains("no-such-folder"), "{err}");
        assert!(draw(&path, &chart, &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
