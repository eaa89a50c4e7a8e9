//! `pool-experiment`: the seed paper's experiments (Dreibholz & Rathgeb) on real processes.
//!
//! A scenario ([`scenario`]) sweeps one parameter of the paper's set-up for several values of
//! another (usually the policy); each point is run with a real registrar, CalcApp PEs and
//! pool users ([`runner`]), with every time divided by a time scale so that runs stay short
//! while the ratios stay the paper's; repetitions give means with 95 % confidence intervals
//! ([`stats`]); the result is a CSV row per point and a plot ([`plot`]).

pub mod plot;
pub mod process;
pub mod runner;
pub mod scenario;
pub mod stats;

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::runner::{RunConfig, RunResult, run_point};
use crate::scenario::{Parameter, Point, Scenario};
use crate::stats::{Estimate, estimate};

/// The estimates of one point over its repetitions.
#[derive(Clone, Debug)]
pub struct PointResult {
    pub point: Point,
    pub handling_speed: Estimate,
    pub utilization: Estimate,
    pub goodput: Estimate,
    pub failovers: Estimate,
    pub lost_calculations: Estimate,
    pub registrar_messages: Estimate,
    pub lost_per_job: Estimate,
    /// Lost per job ÷ CookieMaxCalcs/2 (statement (vi): about 1).
    pub lost_per_job_ratio: Estimate,
    pub jobs_per_failure: Estimate,
    pub goodput_ratio: Estimate,
    pub goodput_ratio_eq1: Estimate,
    pub jobs_incomplete: f64,
}

/// Summarises the repetitions of one point.
pub fn summarize(point: Point, runs: &[RunResult]) -> PointResult {
    let half_cookie = (point.setup.cookie_fraction * point.setup.job_size).max(1.0) / 2.0;
    let column = |f: fn(&RunResult) -> f64| estimate(&runs.iter().map(f).collect::<Vec<_>>());
    PointResult {
        point,
        handling_speed: column(|r| r.handling_speed),
        utilization: column(|r| r.utilization * 100.0),
        goodput: column(|r| r.goodput * 100.0),
        failovers: column(|r| r.failovers),
        lost_calculations: column(|r| r.lost_calculations),
        registrar_messages: column(|r| r.registrar_messages),
        lost_per_job: column(|r| r.lost_per_job),
        lost_per_job_ratio: estimate(
            &runs
                .iter()
                .map(|r| r.lost_per_job / (half_cookie))
                .collect::<Vec<_>>(),
        ),
        jobs_per_failure: column(|r| r.jobs_per_failure),
        goodput_ratio: column(|r| r.goodput_ratio * 100.0),
        goodput_ratio_eq1: column(|r| r.goodput_ratio_eq1 * 100.0),
        jobs_incomplete: runs.iter().map(|r| r.jobs_incomplete).sum(),
    }
}

/// A CSV metric: its column name, where its estimate is, the decimals written.
type CsvMetric = (&'static str, fn(&PointResult) -> Estimate, usize);

/// The CSV of a sweep: the parameters of each point, then each metric's mean and the
/// half-width of its 95 % confidence interval.
pub fn csv(results: &[PointResult]) -> String {
    let mut out = String::from(
        "policy,mtbf,clean_shutdown_probability,session_keep_alive,endpoint_keep_alive,max_bad_pe_reports,cookie_fraction,utilization_target",
    );
    let metrics: [CsvMetric; 11] = [
        ("handling_speed", |r| r.handling_speed, 3),
        ("utilization", |r| r.utilization, 3),
        ("goodput", |r| r.goodput, 3),
        ("failovers", |r| r.failovers, 2),
        ("lost_calculations", |r| r.lost_calculations, 0),
        ("registrar_messages", |r| r.registrar_messages, 2),
        ("lost_per_job", |r| r.lost_per_job, 0),
        ("lost_per_job_ratio", |r| r.lost_per_job_ratio, 3),
        ("jobs_per_failure", |r| r.jobs_per_failure, 3),
        ("goodput_ratio", |r| r.goodput_ratio, 3),
        ("goodput_ratio_eq1", |r| r.goodput_ratio_eq1, 3),
    ];
    for (name, _, _) in &metrics {
        let _ = write!(out, ",{name},{name}_ci");
    }
    out.push_str(",repetitions,jobs_incomplete\n");
    for r in results {
        let s = &r.point.setup;
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{}",
            s.policy.short(),
            s.mtbf.map_or(String::new(), |m| m.to_string()),
            s.clean_shutdown_probability,
            s.session_keep_alive,
            s.endpoint_keep_alive,
            s.max_bad_pe_reports,
            s.cookie_fraction,
            s.utilization,
        );
        for (_, metric, decimals) in &metrics {
            let estimate = metric(r);
            let _ = write!(
                out,
                ",{:.*},{:.*}",
                decimals, estimate.mean, decimals, estimate.half_width
            );
        }
        let _ = writeln!(out, ",{},{}", r.handling_speed.samples, r.jobs_incomplete);
    }
    out
}

/// Runs every point of `scenario` `repetitions` times, writing `DIR/NAME.csv` and
/// `DIR/NAME.svg`; returns the results.
pub fn run_scenario(
    scenario: &Scenario,
    quick: bool,
    repetitions: usize,
    config: &RunConfig,
    out: &Path,
) -> Result<Vec<PointResult>> {
    std::fs::create_dir_all(out)?;
    let points = scenario.points(quick);
    let total = points.len() * repetitions;
    let mut results = Vec::new();
    let mut done = 0;
    for point in points {
        let mut runs = Vec::new();
        for repetition in 0..repetitions {
            done += 1;
            let dir = out.join("runs").join(format!(
                "{}-{}-{}-{repetition}",
                scenario.name, point.series, point.x
            ));
            let run_config = RunConfig {
                seed: config.seed + repetition as u64,
                ..config.clone()
            };
            let run = run_point(&point.setup, &run_config, &dir).with_context(|| {
                format!("{} = {}, {}", scenario.x.name(), point.x, point.series)
            })?;
            eprintln!(
                "[{done}/{total}] {} {} = {}: handling speed {:.1} %, utilisation {:.1} %, {} failovers, {} jobs",
                point.series,
                scenario.x.name(),
                point.x,
                run.handling_speed,
                run.utilization * 100.0,
                run.failovers,
                run.jobs_completed,
            );
            runs.push(run);
        }
        results.push(summarize(point, &runs));
        // Written after every point: a long run that stops keeps what it measured.
        std::fs::write(out.join(format!("{}.csv", scenario.name)), csv(&results))?;
    }
    let lines = plot_lines(scenario, &results)?;
    plot::draw(
        &out.join(format!("{}.svg", scenario.name)),
        scenario.title,
        scenario.x.label(),
        scenario.metric.label(),
        scenario.x_log,
        &lines,
    )?;
    Ok(results)
}

/// The lines of the scenario's plot: its metric along x, one line per series (and per column
/// where the metric has several).
pub fn plot_lines(scenario: &Scenario, results: &[PointResult]) -> Result<Vec<plot::Line>> {
    lines_from_csv(scenario, &csv(results))
}

/// The plot lines of a CSV written by [`csv`] (also to draw a finished run again). Points
/// without a value (NaN) are left out.
pub fn lines_from_csv(scenario: &Scenario, text: &str) -> Result<Vec<plot::Line>> {
    let mut rows = text.lines().map(|line| line.split(',').collect::<Vec<_>>());
    let header = rows.next().context("empty CSV")?;
    let column = |name: &str| {
        header
            .iter()
            .position(|c| *c == name)
            .with_context(|| format!("no column {name}"))
    };
    let (x, series, samples) = (
        column(scenario.x.name())?,
        column(scenario.series.name())?,
        column("repetitions")?,
    );
    // (what the line shows, mean's column, interval's column), looked up once.
    let metric_columns = scenario
        .metric
        .columns()
        .iter()
        .map(|(what, mean, half_width)| Ok((*what, column(mean)?, column(half_width)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut lines: Vec<plot::Line> = Vec::new();
    for row in rows {
        let field = |i: usize| row.get(i).copied().context("short row");
        let series_label = match scenario.series {
            Parameter::Policy => field(series)?.to_string(),
            other => format!("{} = {}", other.name(), field(series)?),
        };
        for &(what, mean, half_width) in &metric_columns {
            let estimate = Estimate {
                mean: field(mean)?.parse()?,
                half_width: field(half_width)?.parse()?,
                samples: field(samples)?.parse()?,
            };
            if estimate.mean.is_nan() {
                continue;
            }
            let label = if what.is_empty() {
                series_label.clone()
            } else {
                format!("{series_label}, {what}")
            };
            let point = (field(x)?.parse::<f64>()?, estimate);
            match lines.iter_mut().find(|line| line.label == label) {
                Some(line) => line.points.push(point),
                None => lines.push(plot::Line {
                    label,
                    points: vec![point],
                }),
            }
        }
    }
    Ok(lines)
}

/// Draws `NAME.svg` of `scenario` from a CSV of its run.
pub fn replot(scenario: &Scenario, csv_path: &Path, svg_path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(csv_path)
        .with_context(|| format!("reading {}", csv_path.display()))?;
    let lines = lines_from_csv(scenario, &text)?;
    plot::draw(
        svg_path,
        scenario.title,
        scenario.x.label(),
        scenario.metric.label(),
        scenario.x_log,
        &lines,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::scenario;

    fn run(speed: f64) -> RunResult {
        RunResult {
            handling_speed: speed,
            utilization: 0.6,
            goodput: 0.59,
            failovers: 3.0,
            lost_calculations: 1e6,
            jobs_completed: 100.0,
            jobs_incomplete: 0.0,
            registrar_messages: 40.0 + speed,
            lost_per_job: 5e5,
            jobs_per_failure: 2.0,
            goodput_ratio: 0.98,
            goodput_ratio_eq1: 0.975,
        }
    }

    #[test]
    fn points_summarise_into_csv_rows_and_plot_lines() {
        let fig4 = scenario("fig4").unwrap();
        let results: Vec<PointResult> = fig4
            .points(true)
            .into_iter()
            .map(|point| {
                let base = point.x;
                summarize(point, &[run(50.0 + base), run(52.0 + base)])
            })
            .collect();
        let text = csv(&results);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 9);
        assert!(lines[0].starts_with("policy,mtbf,"));
        assert!(lines[1].starts_with("LU,2,1,"), "{}", lines[1]);
        // Mean 53, half-width t(1) * s / sqrt(2) = 12.706 * 1.414 / 1.414.
        assert!(lines[1].contains(",53.000,12.706,"), "{}", lines[1]);
        assert!(
            lines[1].contains(",60.000,0.000,"),
            "utilisation in %: {}",
            lines[1]
        );
        let plot = plot_lines(&fig4, &results).unwrap();
        // The CSV gives the same lines back.
        let again = lines_from_csv(&fig4, &text).unwrap();
        assert_eq!(again.len(), 3);
        assert_eq!(again[1].label, "RR");
        assert_eq!(again[1].points.len(), 3);
        assert_eq!(again[1].points[2].0, 50.0);
        assert!((again[1].points[2].1.mean - plot[1].points[2].1.mean).abs() < 1e-3);
        assert_eq!(plot.len(), 3);
        assert_eq!(plot[1].label, "RR");
        assert_eq!(
            plot[1].points.iter().map(|(x, _)| *x).collect::<Vec<_>>(),
            vec![2.0, 10.0, 50.0]
        );
        let dir = std::env::temp_dir().join(format!("pool-experiment-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let svg = dir.join("fig4.svg");
        plot::draw(&svg, fig4.title, fig4.x.label(), "speed", true, &plot).unwrap();
        let drawn = std::fs::read_to_string(&svg).unwrap();
        assert!(drawn.contains("<svg") && drawn.contains("RAND"));
        let _ = std::fs::remove_dir_all(&dir);
        // Half a cookie interval (10 % of 10^7) is 5 × 10^5: the ratio is 1.
        assert!(
            lines[1].contains(",500000,0,1.000,0.000,2.000,"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn other_metrics_draw_their_own_columns() {
        let fig8 = scenario("fig8").unwrap();
        let results: Vec<PointResult> = fig8
            .points(true)
            .into_iter()
            .map(|point| summarize(point, &[run(0.0), run(2.0)]))
            .collect();
        let lines = plot_lines(&fig8, &results).unwrap();
        assert_eq!(lines[0].label, "max_bad_pe_reports = 1");
        assert!((lines[0].points[0].1.mean - 41.0).abs() < 1e-9);
        let goodput = scenario("goodput").unwrap();
        let results: Vec<PointResult> = goodput
            .points(true)
            .into_iter()
            .map(|point| summarize(point, &[run(0.0)]))
            .collect();
        let lines = plot_lines(&goodput, &results).unwrap();
        let labels: Vec<&str> = lines.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "mtbf = 2, measured",
                "mtbf = 2, eq. (1)",
                "mtbf = 10, measured",
                "mtbf = 10, eq. (1)"
            ]
        );
        assert!((lines[1].points[0].1.mean - 97.5).abs() < 1e-9);
        // A metric a run could not measure (NaN) leaves its point out.
        let mut nan = run(0.0);
        nan.goodput_ratio = f64::NAN;
        let point = goodput.points(true).remove(0);
        let lines = plot_lines(&goodput, &[summarize(point, &[nan])]).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].label, "mtbf = 2, eq. (1)");
    }
}
