//! Line charts as inline SVG (plotters' SVG backend), with their legend in HTML beside them so
//! that long phase names never cover a curve.

use std::fmt::Write as _;

use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;

use super::escape;

/// Tableau 10: distinguishable, and readable on white.
const PALETTE: [(u8, u8, u8); 10] = [
    (0x4e, 0x79, 0xa7),
    (0xf2, 0x8e, 0x2b),
    (0xe1, 0x57, 0x59),
    (0x76, 0xb7, 0xb2),
    (0x59, 0xa1, 0x4f),
    (0xed, 0xc9, 0x48),
    (0xb0, 0x7a, 0xa1),
    (0xff, 0x9d, 0xa7),
    (0x9c, 0x75, 0x5f),
    (0xba, 0xb0, 0xac),
];

/// At most this many points of a series are drawn (evenly strided, the last one kept).
const MAX_POINTS: usize = 600;

/// Series with at most this many points get a marker on each.
const MARKED_BELOW: usize = 24;

/// One line of a chart.
#[derive(Debug, Clone)]
pub(super) struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    pub markers: bool,
}

/// A chart's axes and size (pixels).
#[derive(Debug, Clone)]
pub(super) struct Spec {
    pub x_desc: String,
    pub y_desc: String,
    pub width: u32,
    pub height: u32,
    /// Draw x on a log scale when every x is positive and they span a factor of 4 or more.
    pub log_x: bool,
}

/// A tick label: at most four decimals, trailing zeros dropped.
fn tick(v: f64) -> String {
    let v = if v.abs() < 1e-12 { 0.0 } else { v }; // never `-0`
    if v.abs() >= 1e4 || v.fract() == 0.0 {
        return format!("{v:.0}");
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `[lo, hi]` of the values, widened so that neither is on the frame.
fn span(vals: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if log {
        return (lo / 1.15, hi * 1.15);
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5f64.max(0.05 * hi.abs()) };
    (lo - pad, hi + pad)
}

/// Whether values are all positive and span at least `factor`.
fn wants_log(vals: &[f64], factor: f64) -> bool {
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    lo > 0.0 && hi / lo >= factor
}

fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let stride = points.len().div_ceil(MAX_POINTS).max(1);
    let mut v: Vec<(f64, f64)> = points.iter().copied().step_by(stride).collect();
    if let (Some(last), Some(kept)) = (points.last(), v.last()) {
        if last != kept {
            v.push(*last);
        }
    }
    v
}

/// The chart as an SVG followed by its HTML legend; a chart plotters cannot draw is a note
/// saying why, not an error (the rest of the report stands).
pub(super) fn render(spec: &Spec, series: &[Series]) -> String {
    let series: Vec<Series> = series
        .iter()
        .map(|s| Series {
            points: thin(&s.points).into_iter().filter(|p| p.0.is_finite() && p.1.is_finite()).collect(),
            ..s.clone()
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    if series.is_empty() {
        return String::new();
    }
    let xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    let ys: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).collect();
    // Log y only over two decades or more: plotters labels only its powers of ten.
    let (log_x, log_y) = (spec.log_x && wants_log(&xs, 4.0), wants_log(&ys, 100.0));
    let (x0, x1) = span(xs.iter().copied(), log_x);
    let (y0, y1) = span(ys.iter().copied(), log_y);
    let mut svg = String::new();
    let drawn = match (log_x, log_y) {
        (false, false) => draw(&mut svg, spec, &series, x0..x1, y0..y1),
        (true, false) => draw(&mut svg, spec, &series, (x0..x1).log_scale(), y0..y1),
        (false, true) => draw(&mut svg, spec, &series, x0..x1, (y0..y1).log_scale()),
        (true, true) => draw(&mut svg, spec, &series, (x0..x1).log_scale(), (y0..y1).log_scale()),
    };
    if let Err(e) = drawn {
        return format!("<p class=\"note\">chart not drawn: {}</p>\n", escape(&e));
    }
    let mut o = format!("<div class=\"chart\">{svg}</div>\n<div class=\"legend\">");
    for (i, s) in series.iter().enumerate() {
        let (r, g, b) = PALETTE[i % PALETTE.len()];
        let class = if s.dashed { "sw dash" } else { "sw" };
        let _ = write!(
            o,
            "<span><span class=\"{class}\" style=\"background:#{r:02x}{g:02x}{b:02x};border-color:#{r:02x}{g:02x}{b:02x}\"></span>{}</span>",
            escape(&s.label)
        );
    }
    if log_y {
        o += "<span class=\"note\">(log-scale y)</span>";
    }
    o + "</div>\n"
}

fn draw<X, Y>(svg: &mut String, spec: &Spec, series: &[Series], x: X, y: Y) -> Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::with_string(svg, (spec.width, spec.height)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(|x| e(&x))?;
    let grid = RGBColor(0xe3, 0xe7, 0xee);
    chart
        .configure_mesh()
        .max_light_lines(0)
        .bold_line_style(grid)
        .axis_style(RGBColor(0x8a, 0x93, 0xa0))
        .x_labels(8)
        .y_labels(7)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 17))
        .x_desc(spec.x_desc.as_str())
        .y_desc(spec.y_desc.as_str())
        .draw()
        .map_err(|x| e(&x))?;
    for (i, s) in series.iter().enumerate() {
        let (r, g, b) = PALETTE[i % PALETTE.len()];
        let color = RGBColor(r, g, b);
        let style = color.stroke_width(2);
        if s.dashed {
            chart.draw_series(DashedLineSeries::new(s.points.clone(), 8, 5, style)).map_err(|x| e(&x))?;
        } else {
            chart.draw_series(LineSeries::new(s.points.clone(), style)).map_err(|x| e(&x))?;
        }
        // Few points (a short phase, a sweep): each one marked, so that one point still shows.
        if s.markers || (!s.dashed && s.points.len() <= MARKED_BELOW) {
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(|x| e(&x))?;
        }
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_svg_with_one_path_per_series_and_an_escaped_legend() {
        let s = |label: &str, k: f64| Series {
            label: label.into(),
            points: (1..=50).map(|i| (i as f64, k / (i * i) as f64)).collect(),
            dashed: false,
            markers: false,
        };
        let spec = Spec { x_desc: "step".into(), y_desc: "loss".into(), width: 600, height: 300, log_x: false };
        let html = render(&spec, &[s("kd <T=2>", 4.0), s("scratch", 2.0)]);
        assert!(html.starts_with("<div class=\"chart\"><svg"), "{html}");
        assert_eq!(html.matches("stroke-width=\"2\"").count(), 2, "{html}");
        assert!(html.contains("stroke=\"#4E79A7\"") || html.contains("stroke=\"#4e79a7\""), "{html}");
        assert!(html.contains("kd &lt;T=2&gt;") && !html.contains("kd <T"));
        // Spans a factor of 5,000 on y, all positive: log scale.
        assert!(html.contains("(log-scale y)"));
    }

    #[test]
    fn long_series_are_thinned_keeping_the_last_point() {
        let pts: Vec<(f64, f64)> = (0..10_001).map(|i| (i as f64, 1.0)).collect();
        let t = thin(&pts);
        assert!(t.len() <= MAX_POINTS + 1, "{}", t.len());
        assert_eq!(t.last(), Some(&(10_000.0, 1.0)));
        assert_eq!(tick(0.30000000000000004), "0.3");
        assert_eq!(tick(2814.0), "2814");
        assert_eq!(tick(-0.0), "0");
    }
}
