//! The chart in docs/benchmarks.md: one bar per (scenario, comparison),
//! each a ratio oriented so that higher is better for gaidaros, drawn from
//! the parity line (1.0) on a logarithmic axis, so 2x ahead and 2x behind
//! are the same length; each bar's target is a black tick and its value is
//! written on it. A reader sees at a glance where gaidaros is ahead, behind,
//! and short of its targets.

use std::path::Path;

use plotters::prelude::*;

/// One bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Scenario label under the group, e.g. `(a) 64 conns`.
    pub group: String,
    /// What the bar compares, e.g. `efficiency vs tokio`; one colour each.
    pub series: String,
    /// The ratio, higher is better for gaidaros.
    pub value: f64,
    /// The value the issue asks for, if any.
    pub target: Option<f64>,
}

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(214, 39, 40),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
];

/// Draw `bars` as a grouped bar chart into an SVG file at `path`.
pub fn draw(path: &Path, title: &str, bars: &[Bar]) -> Result<(), String> {
    let mut groups: Vec<&str> = Vec::new();
    let mut series: Vec<&str> = Vec::new();
    for b in bars {
        if !groups.contains(&b.group.as_str()) {
            groups.push(&b.group);
        }
        if !series.contains(&b.series.as_str()) {
            series.push(&b.series);
        }
    }
    if groups.is_empty() {
        return Err("nothing to draw".into());
    }
    let hi = bars
        .iter()
        .flat_map(|b| [b.value, b.target.unwrap_or(1.0)])
        .fold(2.0_f64, f64::max)
        * 1.6;
    let lo = bars
        .iter()
        .flat_map(|b| [b.value, b.target.unwrap_or(1.0)])
        .filter(|v| *v > 0.0)
        .fold(0.5_f64, f64::min)
        / 1.6;
    let root = SVGBackend::new(path, (1100, 560)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let n = groups.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    let labels: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&|x| {
            // Label only the group centres (k + 0.5).
            let k = (x - 0.5).round();
            if (x - 0.5 - k).abs() < 1e-6 && k >= 0.0 && (k as usize) < labels.len() {
                labels[k as usize].clone()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.2}x"))
        .y_desc("gaidaros ÷ peer, log scale (higher is better for gaidaros)")
        .draw()
        .map_err(|e| err(&e))?;
    // Where each bar goes: its group, and its place among that group's bars.
    let place = |b: &Bar| -> Option<(f64, f64)> {
        let g = groups.iter().position(|g| *g == b.group)?;
        let in_group: Vec<&Bar> = bars.iter().filter(|x| x.group == b.group).collect();
        let i = in_group.iter().position(|x| std::ptr::eq(*x, b))?;
        let width = 0.8 / in_group.len() as f64;
        Some((g as f64 + 0.1 + i as f64 * width, width))
    };
    for (si, name) in series.iter().enumerate() {
        let colour = COLOURS[si % COLOURS.len()];
        let mine: Vec<&Bar> = bars.iter().filter(|b| b.series == *name).collect();
        let rects = mine.iter().filter_map(|b| {
            let (x0, w) = place(b)?;
            Some(Rectangle::new(
                [(x0, 1.0), (x0 + w * 0.9, b.value.max(lo))],
                colour.filled(),
            ))
        });
        chart
            .draw_series(rects)
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        let values = mine.iter().filter_map(|b| {
            let (x0, _) = place(b)?;
            let y = if b.value >= 1.0 {
                b.value * 1.08
            } else {
                b.value / 1.25
            };
            Some(Text::new(
                format!("{:.2}", b.value),
                (x0, y.max(lo)),
                ("sans-serif", 11),
            ))
        });
        chart.draw_series(values).map_err(|e| err(&e))?;
        let targets = mine.iter().filter_map(|b| {
            let (x0, w) = place(b)?;
            let t = b.target?;
            Some(PathElement::new(
                vec![(x0 - w * 0.05, t), (x0 + w * 0.95, t)],
                BLACK.stroke_width(2),
            ))
        });
        chart.draw_series(targets).map_err(|e| err(&e))?;
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (n, 1.0)],
            RGBColor(80, 80, 80).stroke_width(1),
        )))
        .map_err(|e| err(&e))?
        .label("parity (1.0); black ticks: targets")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 10, y)], RGBColor(80, 80, 80)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_every_group() {
        let dir = std::env::temp_dir().join(format!("gaidaros-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        let bars = vec![
            Bar {
                group: "(a) 64 conns".into(),
                series: "efficiency vs tokio".into(),
                value: 1.3,
                target: Some(1.25),
            },
            Bar {
                group: "(f) forward".into(),
                series: "throughput vs socat".into(),
                value: 0.9,
                target: Some(1.0),
            },
        ];
        draw(&path, "test", &bars).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("(a) 64 conns") && svg.contains("(f) forward"));
        assert!(draw(&path, "empty", &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
