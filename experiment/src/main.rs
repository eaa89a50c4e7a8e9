//! `pool-experiment run SCENARIO [--quick] --out DIR`: see the library docs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pool_experiment::runner::RunConfig;
use pool_experiment::scenario::{scenario, scenarios};

#[derive(Parser, Debug)]
#[command(
    name = "pool-experiment",
    about = "The seed paper's experiments on real RSerPool processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Lists the scenarios.
    List,
    /// Draws a scenario's plot again from the CSV of a run.
    Plot {
        scenario: String,
        #[arg(long, value_name = "FILE")]
        csv: PathBuf,
        #[arg(long, value_name = "FILE")]
        svg: PathBuf,
    },
    /// Runs a scenario: DIR/SCENARIO.csv and DIR/SCENARIO.svg.
    Run {
        scenario: String,
        /// Fewer points, one repetition, short runs.
        #[arg(long)]
        quick: bool,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Repetitions of each point [default: 1 with --quick, else 3].
        #[arg(long)]
        repetitions: Option<usize>,
        /// Seconds of requests per run, wall clock [default: 30 with --quick, else 45].
        #[arg(long)]
        runtime: Option<f64>,
        /// Every time is divided by this and the capacity multiplied.
        #[arg(long, default_value_t = 10.0)]
        time_scale: f64,
        /// Where the programs are [default: next to this one].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> Result<()> {
    program_setup::init();
    match Cli::parse().command {
        Command::List => {
            for s in scenarios() {
                println!("{:8} {}", s.name, s.title);
            }
            Ok(())
        }
        Command::Plot {
            scenario: name,
            csv,
            svg,
        } => {
            let scenario = scenario(&name).with_context(|| format!("no scenario `{name}`"))?;
            pool_experiment::replot(&scenario, &csv, &svg)
        }
        Command::Run {
            scenario: name,
            quick,
            out,
            repetitions,
            runtime,
            time_scale,
            bin_dir,
            seed,
        } => {
            let scenario = scenario(&name).with_context(|| {
                format!("no scenario `{name}` (pool-experiment list shows them)")
            })?;
            let bin_dir = match bin_dir {
                Some(dir) => dir,
                None => std::env::current_exe()?
                    .parent()
                    .context("binary directory")?
                    .to_path_buf(),
            };
            let config = RunConfig {
                time_scale,
                runtime: runtime.unwrap_or(if quick { 30.0 } else { 45.0 }),
                bin_dir,
                seed,
            };
            let repetitions = repetitions.unwrap_or(if quick { 1 } else { 3 }).max(1);
            let results =
                pool_experiment::run_scenario(&scenario, quick, repetitions, &config, &out)?;
            print!("{}", pool_experiment::csv(&results));
            eprintln!(
                "wrote {} and {}",
                out.join(format!("{name}.csv")).display(),
                out.join(format!("{name}.svg")).display()
            );
            Ok(())
        }
    }
}
