//! The paper's set-up and the scenarios named after its figures: which parameter each sweeps,
//! and the points that makes.

use std::fmt;

/// A pool member selection policy of the paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    Random,
    LeastUsed,
}

impl Policy {
    /// rsplib's name (as `pool-element --policy` takes it).
    pub fn rsplib_name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "RoundRobin",
            Policy::Random => "Random",
            Policy::LeastUsed => "LeastUsed",
        }
    }

    /// The paper's abbreviation.
    pub fn short(self) -> &'static str {
        match self {
            Policy::RoundRobin => "RR",
            Policy::Random => "RAND",
            Policy::LeastUsed => "LU",
        }
    }
}

/// One configuration of the pool, in the paper's (unscaled) units.
#[derive(Clone, Debug, PartialEq)]
pub struct Setup {
    pub pes: u32,
    pub pus: u32,
    /// Calculations per second of each PE.
    pub capacity: f64,
    /// Mean request size, calculations (negative-exponential).
    pub job_size: f64,
    pub utilization: f64,
    pub policy: Policy,
    /// Mean PE uptime in units of the average request handling time (size ÷ capacity);
    /// `None`: PEs never fail.
    pub mtbf: Option<f64>,
    pub clean_shutdown_probability: f64,
    /// Session keep-alive interval and timeout, seconds.
    pub session_keep_alive: f64,
    /// Endpoint (registrar to PE) keep-alive interval and timeout, seconds.
    pub endpoint_keep_alive: f64,
    pub max_bad_pe_reports: u32,
    /// Cookie interval as a fraction of the request size.
    pub cookie_fraction: f64,
    /// One-way network delay, seconds.
    pub network_delay: f64,
}

impl Default for Setup {
    /// The paper's §5: 10 PEs of 10^6 calculations/s, 100 PUs, requests of 10^7, 60 %,
    /// session keep-alives 1 s, endpoint keep-alives 5 s (rsplib), MAX-BAD-PE-REPORT 3,
    /// cookies every 10 % of a request, 10 ms delay; PEs that never fail.
    fn default() -> Self {
        Setup {
            pes: 10,
            pus: 100,
            capacity: 1e6,
            job_size: 1e7,
            utilization: 0.6,
            policy: Policy::RoundRobin,
            mtbf: None,
            clean_shutdown_probability: 1.0,
            session_keep_alive: 1.0,
            endpoint_keep_alive: 5.0,
            max_bad_pe_reports: 3,
            cookie_fraction: 0.1,
            network_delay: 0.010,
        }
    }
}

impl Setup {
    /// The average request handling time at a PE of its own, seconds.
    pub fn request_time(&self) -> f64 {
        self.job_size / self.capacity
    }
}

/// A parameter a scenario varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parameter {
    Policy,
    Mtbf,
    CleanShutdownProbability,
    SessionKeepAlive,
    EndpointKeepAlive,
    MaxBadPeReports,
    CookieFraction,
}

impl Parameter {
    pub fn name(self) -> &'static str {
        match self {
            Parameter::Policy => "policy",
            Parameter::Mtbf => "mtbf",
            Parameter::CleanShutdownProbability => "clean_shutdown_probability",
            Parameter::SessionKeepAlive => "session_keep_alive",
            Parameter::EndpointKeepAlive => "endpoint_keep_alive",
            Parameter::MaxBadPeReports => "max_bad_pe_reports",
            Parameter::CookieFraction => "cookie_fraction",
        }
    }

    /// The axis label of a plot.
    pub fn label(self) -> &'static str {
        match self {
            Parameter::Policy => "policy",
            Parameter::Mtbf => "PE MTBF [average request handling times]",
            Parameter::CleanShutdownProbability => "share of clean shutdowns",
            Parameter::SessionKeepAlive => "session keep-alive interval [s]",
            Parameter::EndpointKeepAlive => "endpoint keep-alive interval [s]",
            Parameter::MaxBadPeReports => "MAX-BAD-PE-REPORT",
            Parameter::CookieFraction => "cookie interval [share of request size]",
        }
    }
}

/// A value of a parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Policy(Policy),
    Number(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Policy(policy) => f.write_str(policy.short()),
            Value::Number(number) => write!(f, "{number}"),
        }
    }
}

impl Value {
    pub fn number(self) -> Option<f64> {
        match self {
            Value::Number(number) => Some(number),
            Value::Policy(_) => None,
        }
    }

    /// `setup` with `parameter` set to this value.
    pub fn apply(self, parameter: Parameter, setup: &mut Setup) {
        match (parameter, self) {
            (Parameter::Policy, Value::Policy(policy)) => setup.policy = policy,
            (Parameter::Mtbf, Value::Number(v)) => setup.mtbf = Some(v),
            (Parameter::CleanShutdownProbability, Value::Number(v)) => {
                setup.clean_shutdown_probability = v
            }
            (Parameter::SessionKeepAlive, Value::Number(v)) => setup.session_keep_alive = v,
            (Parameter::EndpointKeepAlive, Value::Number(v)) => setup.endpoint_keep_alive = v,
            (Parameter::MaxBadPeReports, Value::Number(v)) => setup.max_bad_pe_reports = v as u32,
            (Parameter::CookieFraction, Value::Number(v)) => setup.cookie_fraction = v,
            (parameter, value) => panic!("{value} is not a value of {}", parameter.name()),
        }
    }
}

/// What a scenario's plot shows on its y axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// The paper's handling speed, % of a PE's capacity.
    HandlingSpeed,
    /// The registrar's ASAP messages per second (fig. 8's overhead).
    RegistrarMessages,
    /// Goodput ratio measured beside equation (1)'s prediction.
    Goodput,
}

impl Metric {
    pub fn label(self) -> &'static str {
        match self {
            Metric::HandlingSpeed => "handling speed [% of PE capacity]",
            Metric::RegistrarMessages => "registrar ASAP messages [1/s]",
            Metric::Goodput => "goodput ratio [%]",
        }
    }

    /// The CSV columns drawn, each as one line per series: (what the line shows, or empty
    /// for a single one; the mean's column; its confidence interval's column).
    pub fn columns(self) -> &'static [(&'static str, &'static str, &'static str)] {
        match self {
            Metric::HandlingSpeed => &[("", "handling_speed", "handling_speed_ci")],
            Metric::RegistrarMessages => &[("", "registrar_messages", "registrar_messages_ci")],
            Metric::Goodput => &[
                ("measured", "goodput_ratio", "goodput_ratio_ci"),
                ("eq. (1)", "goodput_ratio_eq1", "goodput_ratio_eq1_ci"),
            ],
        }
    }
}

/// A sweep: the x axis, the lines of a plot, the base set-up.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub title: &'static str,
    pub base: Setup,
    pub x: Parameter,
    pub x_values: Vec<f64>,
    pub x_values_quick: Vec<f64>,
    /// Plot the x axis logarithmically.
    pub x_log: bool,
    pub series: Parameter,
    pub series_values: Vec<Value>,
    pub metric: Metric,
}

/// One point of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub setup: Setup,
    pub x: f64,
    pub series: Value,
}

impl Scenario {
    /// Every point, series by series, x ascending.
    pub fn points(&self, quick: bool) -> Vec<Point> {
        let xs = if quick {
            &self.x_values_quick
        } else {
            &self.x_values
        };
        let mut points = Vec::new();
        for series in &self.series_values {
            for &x in xs {
                let mut setup = self.base.clone();
                series.apply(self.series, &mut setup);
                Value::Number(x).apply(self.x, &mut setup);
                points.push(Point {
                    setup,
                    x,
                    series: *series,
                });
            }
        }
        points
    }
}

/// Every scenario: the paper's figures 4 to 9, `goodput` (its equation (1)) and `smoke`.
pub fn scenarios() -> Vec<Scenario> {
    let policies = vec![
        Value::Policy(Policy::LeastUsed),
        Value::Policy(Policy::RoundRobin),
        Value::Policy(Policy::Random),
    ];
    // Failures that matter for keep-alives and cookies: PEs failing every 10 request times.
    let failing = |clean: f64| Setup {
        policy: Policy::LeastUsed,
        mtbf: Some(10.0),
        clean_shutdown_probability: clean,
        ..Setup::default()
    };
    let numbers = |values: &[f64]| values.iter().map(|v| Value::Number(*v)).collect();
    let fig7 = Scenario {
        name: "fig7",
        title: "Endpoint keep-alive interval and MAX-BAD-PE-REPORT (LU, unclean failures)",
        base: failing(0.0),
        x: Parameter::EndpointKeepAlive,
        x_values: vec![1.0, 5.0, 10.0, 30.0, 60.0],
        x_values_quick: vec![1.0, 10.0, 60.0],
        x_log: true,
        series: Parameter::MaxBadPeReports,
        series_values: numbers(&[1.0, 3.0, 5.0]),
        metric: Metric::HandlingSpeed,
    };
    vec![
        Scenario {
            name: "fig4",
            title: "Clean shutdowns: handling speed vs PE MTBF",
            base: Setup::default(),
            x: Parameter::Mtbf,
            x_values: vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0],
            x_values_quick: vec![2.0, 10.0, 50.0],
            x_log: true,
            series: Parameter::Policy,
            series_values: policies.clone(),
            metric: Metric::HandlingSpeed,
        },
        Scenario {
            name: "fig5",
            title: "Share of clean shutdowns and session keep-alive interval (LU)",
            base: failing(1.0),
            x: Parameter::CleanShutdownProbability,
            x_values: vec![0.0, 0.25, 0.5, 0.75, 1.0],
            x_values_quick: vec![0.0, 0.5, 1.0],
            x_log: false,
            series: Parameter::SessionKeepAlive,
            series_values: numbers(&[0.5, 1.0, 5.0]),
            metric: Metric::HandlingSpeed,
        },
        Scenario {
            name: "fig6",
            title: "Session vs endpoint keep-alive interval, 40 % load (LU, unclean failures)",
            base: Setup {
                utilization: 0.4,
                ..failing(0.0)
            },
            x: Parameter::SessionKeepAlive,
            x_values: vec![0.5, 1.0, 2.0, 5.0, 10.0],
            x_values_quick: vec![0.5, 2.0, 10.0],
            x_log: true,
            series: Parameter::EndpointKeepAlive,
            series_values: numbers(&[1.0, 5.0, 30.0]),
            metric: Metric::HandlingSpeed,
        },
        fig7.clone(),
        // The same runs as fig7, plotting what they cost the registrar (`pool-experiment plot
        // fig8 --csv DIR/fig7.csv` draws it from fig7's CSV without running them again).
        Scenario {
            name: "fig8",
            title: "Overhead of fig7: registrar messages per second (LU, unclean failures)",
            metric: Metric::RegistrarMessages,
            ..fig7
        },
        // Equation (1): lost work and goodput against the cookie interval, for two failure
        // rates.
        Scenario {
            name: "goodput",
            title: "Goodput ratio: measured and equation (1) (LU, unclean failures)",
            base: failing(0.0),
            x: Parameter::CookieFraction,
            x_values: vec![0.02, 0.05, 0.1, 0.2, 0.5],
            x_values_quick: vec![0.05, 0.2, 0.5],
            x_log: true,
            series: Parameter::Mtbf,
            series_values: numbers(&[2.0, 10.0]),
            metric: Metric::Goodput,
        },
        // Not the paper's: a small pool for a fast check that the whole chain works.
        Scenario {
            name: "smoke",
            title: "Smoke test: a small failing pool, LU and RAND",
            base: Setup {
                pes: 3,
                pus: 12,
                ..failing(0.5)
            },
            x: Parameter::Mtbf,
            x_values: vec![5.0],
            x_values_quick: vec![5.0],
            x_log: false,
            series: Parameter::Policy,
            series_values: vec![
                Value::Policy(Policy::LeastUsed),
                Value::Policy(Policy::Random),
            ],
            metric: Metric::HandlingSpeed,
        },
        Scenario {
            name: "fig9",
            title: "Cookie interval (LU, unclean failures)",
            base: failing(0.0),
            x: Parameter::CookieFraction,
            x_values: vec![0.01, 0.05, 0.1, 0.2, 0.5],
            x_values_quick: vec![0.05, 0.2, 0.5],
            x_log: true,
            series: Parameter::Policy,
            series_values: policies,
            metric: Metric::HandlingSpeed,
        },
    ]
}

/// The scenario called `name`.
pub fn scenario(name: &str) -> Option<Scenario> {
    scenarios().into_iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fig4_sweeps_mtbf_for_each_policy_from_the_papers_setup() {
        let fig4 = scenario("fig4").unwrap();
        let quick = fig4.points(true);
        assert_eq!(quick.len(), 3 * 3);
        assert_eq!(quick[0].setup.policy, Policy::LeastUsed);
        assert_eq!(quick[0].setup.mtbf, Some(2.0));
        assert_eq!(quick[2].setup.mtbf, Some(50.0));
        assert_eq!(quick[3].setup.policy, Policy::RoundRobin);
        assert!(
            quick
                .iter()
                .all(|p| p.setup.clean_shutdown_probability == 1.0)
        );
        assert!(
            quick
                .iter()
                .all(|p| p.setup.pus == 100 && p.setup.pes == 10)
        );
        assert_eq!(fig4.points(false).len(), 3 * 7);
        assert_eq!(Setup::default().request_time(), 10.0);
    }

    #[test]
    fn every_scenario_has_points_and_unique_names() {
        let all = scenarios();
        let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        for scenario in &all {
            let quick = scenario.points(true);
            assert!(!quick.is_empty() && quick.len() <= 9, "{}", scenario.name);
            assert!(scenario.points(false).len() >= quick.len());
        }
        let (fig7, fig8) = (scenario("fig7").unwrap(), scenario("fig8").unwrap());
        assert_eq!(
            fig7.points(false),
            fig8.points(false),
            "fig8 plots fig7's runs"
        );
        let goodput = scenario("goodput").unwrap().points(true);
        assert!(goodput.iter().all(|p| p.setup.mtbf.is_some()));
        let fig6 = scenario("fig6").unwrap().points(true);
        assert!(fig6.iter().all(|p| p.setup.utilization == 0.4));
        assert!(
            fig6.iter()
                .all(|p| p.setup.clean_shutdown_probability == 0.0)
        );
        assert_eq!(fig6[0].setup.endpoint_keep_alive, 1.0);
        assert_eq!(fig6[0].setup.session_keep_alive, 0.5);
    }

    #[test]
    fn values_land_in_their_parameter() {
        let mut setup = Setup::default();
        Value::Number(0.25).apply(Parameter::CookieFraction, &mut setup);
        Value::Number(3.0).apply(Parameter::SessionKeepAlive, &mut setup);
        Value::Number(1.0).apply(Parameter::MaxBadPeReports, &mut setup);
        Value::Policy(Policy::Random).apply(Parameter::Policy, &mut setup);
        assert_eq!(setup.cookie_fraction, 0.25);
        assert_eq!(setup.session_keep_alive, 3.0);
        assert_eq!(setup.max_bad_pe_reports, 1);
        assert_eq!(setup.policy, Policy::Random);
    }
}
