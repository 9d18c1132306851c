//! Time-series plots for benchmarks: a PNG with one panel per metric, one line per peer and
//! vertical marks for events (a migration's start, switchover and end), drawn with `plotters`.
use std::path::Path;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// Where Debian's fonts-dejavu-core puts the font the labels use.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One line: a name and its (time s, value) points; `None` values leave a gap.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, Option<f64>)>,
}

/// One panel: a y-axis label and its lines.
pub struct Panel {
    pub y_label: String,
    pub lines: Vec<Line>,
}

/// A vertical mark at `t` seconds.
pub struct Mark {
    pub label: String,
    pub t: f64,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {e}")
}

/// Draws `panels` stacked over a shared time axis into a PNG at `path`.
pub fn draw(path: &Path, title: &str, panels: &[Panel], marks: &[Mark]) -> anyhow::Result<()> {
    let font = std::fs::read(FONT).map_err(|e| {
        anyhow::anyhow!("cannot read {FONT} (apt-get install fonts-dejavu-core): {e}")
    })?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, font).map_err(|_| err("bad font file"))?;
    let height = 360 * panels.len().max(1) as u32 + 40;
    let root = BitMapBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 24)).map_err(err)?;
    let x_max = panels
        .iter()
        .flat_map(|p| &p.lines)
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    for (panel, area) in panels.iter().zip(root.split_evenly((panels.len(), 1))) {
        let y_max = panel
            .lines
            .iter()
            .flat_map(|l| l.points.iter().filter_map(|p| p.1))
            .fold(1.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&area)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc(panel.y_label.as_str())
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        for (i, m) in marks.iter().enumerate() {
            chart
                .draw_series(LineSeries::new(
                    [(m.t, 0.0), (m.t, y_max)],
                    BLACK.stroke_width(1),
                ))
                .map_err(err)?;
            chart
                .draw_series([Text::new(
                    m.label.clone(),
                    (m.t, y_max * (0.97 - 0.07 * i as f64)),
                    ("sans-serif", 13),
                )])
                .map_err(err)?;
        }
        for (i, line) in panel.lines.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            // Split at gaps so a missing value is not drawn as a slope.
            let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
            for &(t, v) in &line.points {
                match v {
                    Some(v) => segments.last_mut().map(|s| s.push((t, v))).unwrap_or(()),
                    None => segments.push(Vec::new()),
                }
            }
            let mut first = true;
            for seg in segments.into_iter().filter(|s| !s.is_empty()) {
                let series = chart
                    .draw_series(LineSeries::new(seg, color.stroke_width(2)))
                    .map_err(err)?;
                if first {
                    series.label(line.name.clone()).legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                    first = false;
                }
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
