//! The simulation's application: a job of N items, computed one per interval by a PE, with an
//! ASAP Cookie naming the next item every few items, resumable from any such cookie.

use std::time::{Duration, Instant};

use crate::pu::session::SessionEvent;
use crate::transport::{Frame, PPID_ASAP};
use crate::wire::AsapMessage;

/// PPID of the counting service's messages (not a registered one: "SIM1").
pub const PPID_COUNTING: u32 = 0x5349_4d31;

const COOKIE_TAG: &[u8; 4] = b"SIM1";

/// The first message of a job of `items` items.
pub fn job_request(items: u32) -> Frame {
    Frame::new(PPID_COUNTING, items.to_be_bytes().to_vec())
}

/// The cookie of a job of `items` items whose items before `next` were sent.
pub fn cookie(items: u32, next: u32) -> Vec<u8> {
    let mut bytes = COOKIE_TAG.to_vec();
    bytes.extend_from_slice(&items.to_be_bytes());
    bytes.extend_from_slice(&next.to_be_bytes());
    bytes
}

fn read_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// How a hostile PE keeps a session busy without doing its work: one frame per item interval,
/// none of them new work, for ever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostility {
    /// The item it resumed at, again and again.
    RepeatData,
    /// Item frames without an item.
    EmptyData,
    /// A cookie naming the item it resumed at.
    CookieSpam,
    /// A cookie claiming the job is done: a PE resuming from it has nothing to send.
    CookieAhead,
}

/// The PE's side of one job.
#[derive(Clone, Debug)]
pub struct Serving {
    items: u32,
    next: u32,
    since_cookie: u32,
    next_at: Instant,
}

impl Serving {
    /// The job a session's first frame asks for: a job request, or a Cookie Echo resuming one;
    /// `None` for anything else (the PE aborts such a session).
    pub fn start(frame: &Frame, now: Instant, interval: Duration) -> Option<Serving> {
        let (items, next) = match frame.ppid {
            PPID_COUNTING => (read_u32(&frame.payload)?, 0),
            PPID_ASAP => match AsapMessage::decode(&frame.payload).ok()?.message {
                AsapMessage::CookieEcho { cookie } if cookie.len() == 12 => {
                    if &cookie[..4] != COOKIE_TAG {
                        return None;
                    }
                    (read_u32(&cookie[4..8])?, read_u32(&cookie[8..12])?)
                }
                _ => return None,
            },
            _ => return None,
        };
        Some(Serving {
            items,
            next: next.min(items),
            since_cookie: 0,
            next_at: now + interval,
        })
    }

    /// When the next item is due (`None` once all were sent).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.next < self.items).then_some(self.next_at)
    }

    /// Sends the items due by `now`, with a cookie after every `cookie_every` items and after
    /// the last one; a hostile PE sends its frame instead and never gets on.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        interval: Duration,
        cookie_every: u32,
        hostile: Option<Hostility>,
        out: &mut Vec<Frame>,
    ) {
        if let Some(hostility) = hostile {
            while self.next < self.items && self.next_at <= now {
                out.push(match hostility {
                    Hostility::RepeatData => {
                        Frame::new(PPID_COUNTING, self.next.to_be_bytes().to_vec())
                    }
                    Hostility::EmptyData => Frame::new(PPID_COUNTING, Vec::new()),
                    Hostility::CookieSpam => self.cookie_frame(),
                    Hostility::CookieAhead => cookie_frame(self.items, self.items),
                });
                self.next_at += interval;
            }
            return;
        }
        while self.next < self.items && self.next_at <= now {
            out.push(Frame::new(PPID_COUNTING, self.next.to_be_bytes().to_vec()));
            self.next += 1;
            self.since_cookie += 1;
            self.next_at += interval;
            if self.since_cookie >= cookie_every.max(1) || self.next == self.items {
                out.push(self.cookie_frame());
                self.since_cookie = 0;
            }
        }
    }

    /// The ASAP Cookie naming the next item.
    pub fn cookie_frame(&self) -> Frame {
        cookie_frame(self.items, self.next)
    }
}

/// The ASAP Cookie of a job of `items` items naming item `next`.
fn cookie_frame(items: u32, next: u32) -> Frame {
    let message = AsapMessage::Cookie {
        cookie: cookie(items, next),
    };
    Frame::new(
        PPID_ASAP,
        message.to_bytes().expect("a short cookie encodes"),
    )
}

/// The pool user's side of one job: what arrived, and the session's story.
#[derive(Clone, Debug)]
pub struct Job {
    /// How often each item arrived.
    pub received: Vec<u32>,
    /// The session finished (every item arrived) at this time.
    pub finished_at: Option<Instant>,
    /// The session's events, with their times.
    pub events: Vec<(Instant, SessionEvent)>,
    /// The item the current PE's next frame continues with, after its first item.
    stream_next: Option<u32>,
}

impl Job {
    pub(crate) fn new(items: u32) -> Self {
        Job {
            received: vec![0; items as usize],
            finished_at: None,
            events: Vec::new(),
            stream_next: None,
        }
    }

    /// A new PE serves the job.
    pub(crate) fn connected(&mut self) {
        self.stream_next = None;
    }

    /// Records an item frame; returns whether it is progress: an item that had not arrived, or
    /// the one after the PE's previous item (a PE resumed from a cookie sends again what came
    /// after that cookie: honest work, though not new). Repeats and empty frames are not.
    pub(crate) fn record(&mut self, frame: &Frame) -> bool {
        if frame.ppid == PPID_COUNTING
            && let Some(index) = read_u32(&frame.payload)
            && let Some(count) = self.received.get_mut(index as usize)
        {
            *count += 1;
            let continues = self.stream_next == Some(index);
            self.stream_next = Some(index + 1);
            return *count == 1 || continues;
        }
        false
    }

    /// Every item arrived at least once.
    pub fn is_complete(&self) -> bool {
        self.received.iter().all(|&count| count > 0)
    }

    /// Items that arrived more than once (work a failover redid).
    pub fn duplicates(&self) -> u32 {
        self.received
            .iter()
            .map(|&count| count.saturating_sub(1))
            .sum()
    }

    /// The session's events that match `pick`.
    pub fn events_where(&self, pick: impl Fn(&SessionEvent) -> bool) -> Vec<&SessionEvent> {
        self.events
            .iter()
            .map(|(_, event)| event)
            .filter(|event| pick(event))
            .collect()
    }
}
