//! A CalcApp pool user (rserpool's session layer + the job client) against CalcApp PEs, in
//! simulated time: failover from a cookie after a silent PE death, a clean shutdown's final
//! cookie, and a full PE's Reject.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fractal_protocol::calcapp::{
    CalcAppService, ClientAction, ClientConfig, JobClient, JobCookie, Message, PPID_CALCAPP,
    ServiceConfig, ServiceOutput, SessionId,
};
use rserpool::pu::{Action, FailureKind, PeCandidate, SessionConfig, SessionEvent, SessionState};
use rserpool::transport::{AssociationError, Frame, PPID_ASAP};
use rserpool::wire::{AsapMessage, PeId, Policy};

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

struct SimPe {
    service: CalcAppService,
    /// A dead PE neither answers nor computes: a crashed host.
    alive: bool,
}

/// One pool user with one job, and its pool.
struct Sim {
    now: Instant,
    pes: Vec<SimPe>,
    session: SessionState,
    client: JobClient,
    /// The PE (index) and service session the pool user is connected to.
    current: Option<(usize, SessionId)>,
    next_session: SessionId,
    avoided: HashMap<PeId, Instant>,
    reported: Vec<PeId>,
    events: Vec<SessionEvent>,
    completed: bool,
}

fn candidate(index: usize) -> PeCandidate {
    PeCandidate {
        id: PeId(index as u32 + 1),
        address: SocketAddr::from((Ipv4Addr::LOCALHOST, 9000 + index as u16)),
        policy: Policy::RoundRobin,
    }
}

impl Sim {
    fn new(pes: Vec<ServiceConfig>, job_size: u64, client: ClientConfig) -> Sim {
        let now = Instant::now();
        let session_config = SessionConfig {
            // The CalcApp keep-alives detect failures here.
            session_timeout: Duration::from_secs(3600),
            ..SessionConfig::default()
        };
        let client = JobClient::new(client, 7, job_size, now);
        let request = Frame::new(PPID_CALCAPP, client.request().encode().to_vec());
        Sim {
            now,
            pes: pes
                .into_iter()
                .map(|config| SimPe {
                    service: CalcAppService::new(config, now),
                    alive: true,
                })
                .collect(),
            session: SessionState::new(session_config, request),
            client,
            current: None,
            next_session: 1,
            avoided: HashMap::new(),
            reported: Vec::new(),
            events: Vec::new(),
            completed: false,
        }
    }

    fn start(&mut self) {
        self.client.start(self.now);
        self.session.start(self.now);
        self.pump();
    }

    /// The first PE (in order) that is not avoided: a registrar that lists them all.
    fn choose(&self) -> Option<PeCandidate> {
        (0..self.pes.len()).map(candidate).find(|pe| {
            self.avoided
                .get(&pe.id)
                .is_none_or(|until| *until <= self.now)
        })
    }

    fn deliver_to_pe(&mut self, frame: Frame) {
        let Some((index, session)) = self.current else {
            return;
        };
        let pe = &mut self.pes[index];
        if !pe.alive {
            return;
        }
        let now = self.now;
        if frame.ppid == PPID_CALCAPP {
            pe.service
                .handle_message(session, Message::decode(&frame.payload).unwrap(), now);
        } else if let Ok(decoded) = AsapMessage::decode(&frame.payload)
            && let AsapMessage::CookieEcho { cookie } = decoded.message
        {
            pe.service.handle_cookie_echo(session, &cookie, now);
        }
    }

    fn disconnect(&mut self) {
        if let Some((index, session)) = self.current.take()
            && self.pes[index].alive
        {
            self.pes[index].service.handle_closed(session, self.now);
        }
    }

    /// Carries out everything the machines want until none wants anything.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut busy = false;
            while let Some(action) = self.session.poll_action() {
                busy = true;
                let now = self.now;
                match action {
                    Action::Resolve { .. } => {
                        let pe = self.choose();
                        self.session.handle_resolved(now, pe, None);
                    }
                    Action::Connect(pe) => {
                        let index = pe.id.0 as usize - 1;
                        if self.pes[index].alive {
                            self.current = Some((index, self.next_session));
                            self.next_session += 1;
                            self.session.handle_connected(now);
                        } else {
                            self.session.handle_connect_failed(now, "dead".into());
                        }
                    }
                    Action::Send(frame) => self.deliver_to_pe(frame),
                    Action::Abort | Action::Close => self.disconnect(),
                    Action::ReportUnreachable { pe_id } => self.reported.push(pe_id),
                    Action::Avoid { pe_id, duration } => {
                        self.avoided.insert(pe_id, now + duration);
                    }
                    Action::Event(event) => {
                        match &event {
                            SessionEvent::Connected { .. } => self.client.handle_connected(now),
                            SessionEvent::Data { frame, .. } => {
                                let message = Message::decode(&frame.payload).unwrap();
                                self.client.handle_message(now, message);
                            }
                            SessionEvent::CookieStored { .. } => self.client.handle_cookie(now),
                            SessionEvent::FailoverStarted { .. } => {
                                self.client.handle_disconnected(true)
                            }
                            SessionEvent::Refused { .. } => self.client.handle_disconnected(false),
                            _ => {}
                        }
                        self.events.push(event);
                    }
                }
            }
            while let Some(action) = self.client.poll_action() {
                busy = true;
                let now = self.now;
                match action {
                    ClientAction::Send(message) => {
                        self.deliver_to_pe(Frame::new(PPID_CALCAPP, message.encode().to_vec()))
                    }
                    ClientAction::Progress => self.session.handle_progress(now),
                    ClientAction::FailOver(_) => self.session.fail(now, FailureKind::DataSilence),
                    ClientAction::Rejected => self.session.reject(now),
                    ClientAction::Completed => {
                        self.completed = true;
                        self.session.finish(now);
                    }
                }
            }
            for index in 0..self.pes.len() {
                while let Some(output) = self.pes[index].service.poll_output() {
                    busy = true;
                    if !self.pes[index].alive {
                        continue;
                    }
                    let now = self.now;
                    let ours = |session: SessionId| self.current == Some((index, session));
                    match output {
                        ServiceOutput::Send { session, message } if ours(session) => {
                            let frame = Frame::new(PPID_CALCAPP, message.encode().to_vec());
                            self.session.handle_frame(now, frame);
                        }
                        ServiceOutput::Cookie { session, cookie } if ours(session) => {
                            let bytes = AsapMessage::Cookie {
                                cookie: cookie.encode().to_vec(),
                            }
                            .to_bytes()
                            .unwrap();
                            self.session.handle_frame(now, Frame::new(PPID_ASAP, bytes));
                        }
                        ServiceOutput::Abort { session, .. } if ours(session) => {
                            self.current = None;
                            self.session.handle_closed(now, &AssociationError::Reset);
                        }
                        _ => {}
                    }
                }
            }
            if !busy {
                return;
            }
        }
        panic!("the machines did not settle");
    }

    fn next_deadline(&self) -> Option<Instant> {
        let alive = self
            .pes
            .iter()
            .filter(|pe| pe.alive)
            .filter_map(|pe| pe.service.poll_timeout());
        [self.session.poll_timeout(), self.client.poll_timeout()]
            .into_iter()
            .flatten()
            .chain(alive)
            .min()
    }

    /// Advances simulated time to `until`, firing every timer on the way.
    fn run_until(&mut self, until: Instant) {
        for _ in 0..100_000 {
            match self.next_deadline() {
                Some(due) if due <= until => {
                    self.now = self.now.max(due);
                    let now = self.now;
                    self.session.handle_timeout(now);
                    self.client.handle_timeout(now);
                    for pe in self.pes.iter_mut().filter(|pe| pe.alive) {
                        pe.service.handle_timeout(now);
                    }
                    self.pump();
                }
                _ => {
                    self.now = self.now.max(until);
                    return;
                }
            }
        }
        panic!("timers did not settle");
    }

    /// Cookies stored before the session resumed at another PE.
    fn cookies_before_resuming(&self) -> Vec<JobCookie> {
        self.events
            .iter()
            .take_while(|event| !matches!(event, SessionEvent::Connected { resumed: true, .. }))
            .filter_map(|event| match event {
                SessionEvent::CookieStored { cookie, .. } => {
                    Some(JobCookie::decode(cookie).unwrap())
                }
                _ => None,
            })
            .collect()
    }
}

fn pe_config() -> ServiceConfig {
    ServiceConfig {
        capacity: 1e6,
        max_jobs: 4,
        keep_alive_interval: ms(1000),
        keep_alive_timeout: ms(1000),
        cookie_max_calculations: 1_000_000,
        cookie_max_time: Duration::from_secs(100),
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        keep_alive_interval: ms(500),
        keep_alive_timeout: ms(500),
    }
}

#[test]
fn a_silent_pe_death_is_found_by_keep_alives_and_the_job_resumes_from_its_cookie() {
    let mut sim = Sim::new(vec![pe_config(), pe_config()], 10_000_000, client_config());
    let t0 = sim.now;
    sim.start();
    sim.run_until(t0 + ms(3550));
    let progress = sim.pes[0].service.job_progress(1, sim.now).unwrap();
    assert!((progress - 3.55e6).abs() < 10.0, "{progress}");
    // PE 1 dies without a word.
    sim.pes[0].alive = false;
    sim.run_until(t0 + Duration::from_secs(30));
    assert!(sim.completed, "{:#?}", sim.events);
    // Found within one keep-alive interval plus its timeout, and reported.
    let failover_at = sim
        .events
        .iter()
        .position(|e| matches!(e, SessionEvent::FailoverStarted { .. }));
    assert!(failover_at.is_some());
    assert_eq!(sim.reported, vec![PeId(1)]);
    assert_eq!(sim.client.failovers(), 1);
    // PE 2 resumed from the last cookie (3 M) and did exactly the rest.
    let resumed_from = sim.cookies_before_resuming().last().unwrap().completed;
    assert_eq!(resumed_from, 3_000_000);
    let second = sim.pes[1].service.stats();
    assert_eq!((second.accepted, second.completed), (1, 1));
    assert!(
        (second.used_calculations - 7e6).abs() < 10.0,
        "{}",
        second.used_calculations
    );
    // Lost work: what PE 1 did after its last cookie, less than one cookie interval.
    let lost = progress - resumed_from as f64;
    assert!(lost > 0.0 && lost <= 1e6, "{lost}");
    // Handling time: 3.55 s, detection (<= 1 s), 7 s at PE 2.
    let handling = sim.client.times().handling_time().unwrap();
    assert!(
        handling >= ms(10_550) && handling <= ms(11_600),
        "{handling:?}"
    );
}

#[test]
fn a_clean_shutdown_hands_over_its_exact_progress() {
    let mut sim = Sim::new(vec![pe_config(), pe_config()], 10_000_000, client_config());
    let t0 = sim.now;
    sim.start();
    sim.run_until(t0 + ms(3550));
    // rsplib's clean shutdown: a final cookie, then the association closes.
    let left = sim.pes[0].service.shutdown(true, sim.now);
    assert_eq!(left.len(), 1);
    sim.pump();
    let now = sim.now;
    sim.current = None;
    sim.session
        .handle_closed(now, &AssociationError::ClosedByPeer);
    sim.pes[0].alive = false;
    sim.pump();
    sim.run_until(t0 + Duration::from_secs(30));
    assert!(sim.completed);
    assert_eq!(
        sim.cookies_before_resuming().last().unwrap().completed,
        3_550_000
    );
    assert!(
        sim.reported.is_empty(),
        "a clean close is not a failure to report"
    );
    let second = sim.pes[1].service.stats();
    assert!(
        (second.used_calculations - 6.45e6).abs() < 10.0,
        "{}",
        second.used_calculations
    );
    // No time lost to detection: done at 3.55 + 6.45 s.
    let handling = sim.client.times().handling_time().unwrap();
    assert!(handling.abs_diff(ms(10_000)) <= ms(2), "{handling:?}");
}

#[test]
fn a_full_pe_rejects_and_the_job_runs_on_another_without_a_report() {
    let full = ServiceConfig {
        max_jobs: 1,
        ..pe_config()
    };
    let mut sim = Sim::new(vec![full, pe_config()], 2_000_000, client_config());
    let t0 = sim.now;
    // Another pool user's job fills PE 1.
    sim.pes[0]
        .service
        .handle_message(99, Message::request(1, 100_000_000), t0);
    while sim.pes[0].service.poll_output().is_some() {}
    sim.start();
    sim.run_until(t0 + Duration::from_secs(30));
    assert!(sim.completed);
    assert_eq!(sim.client.rejects(), 1);
    assert_eq!(sim.client.failovers(), 0);
    assert!(sim.reported.is_empty());
    assert_eq!(sim.pes[0].service.stats().rejected, 1);
    assert_eq!(sim.pes[1].service.stats().completed, 1);
    let handling = sim.client.times().handling_time().unwrap();
    assert!(handling.abs_diff(ms(2000)) <= ms(2), "{handling:?}");
}
