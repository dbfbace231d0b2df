//! SVG charts with plotters:
//!
//! - `latency-<scenario>.svg`: the latency distribution of every runtime
//!   (x: percentile on a "nines" scale, y: ms on a log scale);
//! - `throughput.svg`: delivered events/s per scenario and runtime;
//! - `cpu-per-1k.svg`: server CPU-ms per 1,000 deliveries;
//! - `memory-per-viewer.svg`: RSS KiB per idle viewer.
//!
//! Text uses plotters' built-in size estimates (no font files needed);
//! the SVG viewer picks the font.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::{Record, Results};
use crate::args::{ALL_RUNTIMES, ScenarioName};

/// File names of the charts drawn, relative to the output directory.
#[derive(Debug, Default)]
pub struct Charts {
    /// (scenario, file)
    pub latency: Vec<(String, String)>,
    /// (title, file)
    pub overview: Vec<(String, String)>,
}

const SIZE: (u32, u32) = (960, 540);

pub fn draw_all(results: &Results, out: &Path) -> Result<Charts> {
    let mut charts = Charts::default();
    let runtimes = runtimes_in(results);

    for scenario in ScenarioName::ALL.map(ScenarioName::as_str) {
        let with_latency: Vec<&Record> = results
            .records
            .iter()
            .filter(|r| r.scenario == scenario && r.latency_percentiles.len() > 1)
            .collect();
        if with_latency.is_empty() {
            continue;
        }
        let file = format!("latency-{scenario}.svg");
        latency_chart(&out.join(&file), scenario, &with_latency, &runtimes)?;
        charts.latency.push((scenario.to_string(), file));
    }

    let overview = [
        (
            "delivered events/s",
            "throughput.svg",
            (|r: &Record| r.delivered_per_sec) as fn(&Record) -> Option<f64>,
        ),
        (
            "server CPU-ms per 1,000 deliveries",
            "cpu-per-1k.svg",
            |r: &Record| r.server_cpu_ms_per_1k,
        ),
        (
            "server RSS KiB per idle viewer",
            "memory-per-viewer.svg",
            |r: &Record| r.rss_kib_per_viewer,
        ),
    ];
    for (title, file, metric) in overview {
        if bar_chart(&out.join(file), title, results, &runtimes, metric)? {
            charts.overview.push((title.to_string(), file.to_string()));
        }
    }
    Ok(charts)
}

/// The runtimes of the run, in the usual order first.
fn runtimes_in(results: &Results) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in &results.records {
        if !names.contains(&r.runtime) {
            names.push(r.runtime.clone());
        }
    }
    names.sort_by_key(|n| {
        ALL_RUNTIMES
            .iter()
            .position(|r| r == n)
            .unwrap_or(usize::MAX)
    });
    names
}

fn color(runtimes: &[String], runtime: &str) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    let i = runtimes.iter().position(|r| r == runtime).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

/// Percentile `p` (0–100) as "nines": 90 % → 1, 99 % → 2, 99.9 % → 3.
fn nines(p: f64) -> f64 {
    let rest = (1.0 - p / 100.0).max(1e-6);
    -rest.log10()
}

fn nines_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    if x.fract().abs() > 1e-9 {
        return String::new();
    }
    if p < 1e-9 {
        "0%".into()
    } else {
        format!("{}%", trim_float(p))
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn latency_chart(
    path: &Path,
    scenario: &str,
    records: &[&Record],
    runtimes: &[String],
) -> Result<()> {
    let points = |r: &Record| -> Vec<(f64, f64)> {
        r.latency_percentiles
            .iter()
            .map(|[p, ms]| (nines(*p), ms.max(0.001)))
            .collect()
    };
    let x_max = records
        .iter()
        .flat_map(|r| points(r))
        .map(|(x, _)| x)
        .fold(1.0, f64::max)
        .ceil();
    let (y_min, y_max) = records
        .iter()
        .flat_map(|r| points(r))
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), (_, y)| {
            (lo.min(y), hi.max(y))
        });

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{scenario}: publish-to-delivery latency"),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, (y_min * 0.8..y_max * 1.25).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|y| trim_float(*y))
        .draw()?;

    for r in records {
        let c = color(runtimes, &r.runtime);
        chart
            .draw_series(LineSeries::new(points(r), c.stroke_width(2)))?
            .label(r.runtime.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Grouped bars: one group per scenario that has the metric, one bar
/// per runtime; log scale when values span more than 100×. Returns
/// whether anything was drawn.
fn bar_chart(
    path: &Path,
    title: &str,
    results: &Results,
    runtimes: &[String],
    metric: fn(&Record) -> Option<f64>,
) -> Result<bool> {
    let groups: Vec<&str> = ScenarioName::ALL
        .map(ScenarioName::as_str)
        .into_iter()
        .filter(|s| {
            results
                .records
                .iter()
                .any(|r| r.scenario == *s && metric(r).is_some())
        })
        .collect();
    let values: Vec<f64> = results
        .records
        .iter()
        .filter_map(metric)
        .filter(|v| *v > 0.0)
        .collect();
    if groups.is_empty() || values.is_empty() {
        return Ok(false);
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let x_range = -0.5f64..groups.len() as f64 - 0.5;
    let label = |x: &f64| -> String {
        let g = x.round();
        if (x - g).abs() < 1e-6 && g >= 0.0 {
            groups
                .get(g as usize)
                .map(|s| s.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    let bars = bar_rects(&groups, results, runtimes, metric);

    if hi / lo > 100.0 {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(80)
            .build_cartesian_2d(x_range, (lo * 0.5..hi * 2.0).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len())
            .x_label_formatter(&label)
            .y_desc(title)
            .draw()?;
        let floor = lo * 0.5;
        draw_bars(&mut chart, &bars, floor, runtimes)?;
        legend(&mut chart)?;
    } else {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(80)
            .build_cartesian_2d(x_range, 0f64..hi * 1.15)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len())
            .x_label_formatter(&label)
            .y_desc(title)
            .draw()?;
        draw_bars(&mut chart, &bars, 0.0, runtimes)?;
        legend(&mut chart)?;
    }
    root.present()?;
    Ok(true)
}

/// One bar: runtime, left x, right x, value.
type Bar = (String, f64, f64, f64);

fn bar_rects(
    groups: &[&str],
    results: &Results,
    runtimes: &[String],
    metric: fn(&Record) -> Option<f64>,
) -> Vec<Bar> {
    let width = 0.8 / runtimes.len().max(1) as f64;
    let mut bars = Vec::new();
    for (g, scenario) in groups.iter().enumerate() {
        for (i, runtime) in runtimes.iter().enumerate() {
            let value = results
                .records
                .iter()
                .find(|r| r.scenario == *scenario && &r.runtime == runtime)
                .and_then(metric);
            if let Some(v) = value.filter(|v| *v > 0.0) {
                let left = g as f64 - 0.4 + i as f64 * width;
                bars.push((runtime.clone(), left, left + width * 0.9, v));
            }
        }
    }
    bars
}

fn draw_bars<'a, DB, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    bars: &[Bar],
    floor: f64,
    runtimes: &[String],
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64>,
{
    for runtime in runtimes {
        let c = color(runtimes, runtime);
        let mine: Vec<&Bar> = bars.iter().filter(|b| &b.0 == runtime).collect();
        if mine.is_empty() {
            continue;
        }
        chart
            .draw_series(
                mine.iter()
                    .map(|(_, l, r, v)| Rectangle::new([(*l, floor), (*r, *v)], c.filled())),
            )
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label(runtime.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
    }
    Ok(())
}

fn legend<'a, DB, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_map_percentiles_to_integers() {
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(0.5), "");
    }
}
