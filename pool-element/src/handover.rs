//! A session's outputs as its connection sends them, encoded by the computing thread that
//! produced them: the values are still in that core's cache, each message's buffer is freed by
//! the thread that allocated it, and the protocol thread only queues bytes.

use fractal_protocol::message::PPID_FGP;
use rserpool::transport::frame::HEADER_LEN;
use rserpool::transport::{FrameBatch, FrameMark, PPID_ASAP};
use rserpool::wire::AsapMessage;

use crate::session::Output;

/// How a session ends with a hand-over, for the log.
pub type Ending = &'static str;

/// Encoded outputs of a session, in order, up to the first that ends it.
#[derive(Debug, Default)]
pub struct Handover {
    frames: FrameBatch,
    /// Where the batch ended after each Data message with points (not the finalizer), so that
    /// `--crash-after` can send exactly up to one.
    data_marks: Vec<FrameMark>,
    /// Data messages, the finalizer included.
    data_frames: usize,
    ending: Option<Ending>,
}

impl Handover {
    /// An empty hand-over with room for `bytes` bytes of frames.
    pub fn with_capacity(bytes: usize) -> Handover {
        Handover {
            frames: FrameBatch::with_capacity(bytes),
            ..Handover::default()
        }
    }

    /// Encodes `output` after those before it; nothing more is taken once the session ended.
    pub fn push(&mut self, output: Output) {
        if self.ending.is_some() {
            return;
        }
        match output {
            Output::Data(message) => {
                let finalizer = message.is_finalizer();
                if self
                    .frames
                    .try_push_with(PPID_FGP, |out| message.encode_into(out))
                    .is_err()
                {
                    self.ending = Some("encode-error");
                    return;
                }
                self.data_frames += 1;
                if !finalizer {
                    self.data_marks.push(self.frames.mark());
                }
            }
            Output::Cookie(cookie) => {
                let message = AsapMessage::Cookie {
                    cookie: cookie.encode().to_vec(),
                };
                match message.to_bytes() {
                    Ok(bytes) => self.frames.push(PPID_ASAP, &bytes),
                    Err(_) => self.ending = Some("encode-error"),
                }
            }
            Output::Finished => self.ending = Some("completed"),
            Output::FailureInjected => self.ending = Some("fail-after"),
        }
    }

    /// Data messages so far, the finalizer included.
    pub fn data_frames(&self) -> usize {
        self.data_frames
    }

    /// Whether there is nothing to send and the session does not end with it.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.ending.is_none()
    }

    /// The frames, where each Data message with points ends in them, and how the session ends
    /// with them (if it does).
    pub fn into_parts(self) -> (FrameBatch, Vec<FrameMark>, Option<Ending>) {
        (self.frames, self.data_marks, self.ending)
    }
}

impl From<Vec<Output>> for Handover {
    fn from(outputs: Vec<Output>) -> Handover {
        let mut handover = Handover::with_capacity(outputs.len() * (HEADER_LEN + 64));
        for output in outputs {
            handover.push(output);
        }
        handover
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use fractal_protocol::cookie::Cookie;
    use fractal_protocol::message::{AlgorithmId, Data, Parameter};
    use rserpool::transport::{Frame, FrameDecoder};

    fn cookie() -> Cookie {
        Cookie {
            parameter: Parameter {
                width: 10,
                height: 10,
                max_iterations: 100,
                algorithm: AlgorithmId::MANDELBROT,
                c1_real: -2.0,
                c1_imag: 1.0,
                c2_real: 1.0,
                c2_imag: -1.0,
                n: 2.0,
            },
            current_x: 3,
            current_y: 4,
        }
    }

    /// The frames of `batch`, decoded.
    pub(crate) fn frames_of(batch: &FrameBatch) -> Vec<Frame> {
        let mut decoder = FrameDecoder::default();
        let mut input = bytes::BytesMut::from(batch.as_bytes());
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode_buf(&mut input).expect("valid frames") {
            frames.push(frame);
        }
        frames
    }

    #[test]
    fn outputs_become_their_frames_in_order_up_to_the_ending() {
        let data = Data::new(0, 0, vec![1, 2, 3]);
        let handover = Handover::from(vec![
            Output::Data(data.clone()),
            Output::Cookie(cookie()),
            Output::Data(Data::finalizer()),
            Output::Finished,
            // After the ending: not sent.
            Output::Data(data.clone()),
        ]);
        assert_eq!(handover.data_frames(), 2);
        let (frames, marks, ending) = handover.into_parts();
        assert_eq!(ending, Some("completed"));
        let decoded = frames_of(&frames);
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[0].ppid, PPID_FGP);
        assert_eq!(Data::decode(&decoded[0].payload).expect("Data"), data);
        assert_eq!(decoded[1].ppid, PPID_ASAP);
        match AsapMessage::decode(&decoded[1].payload).map(|d| d.message) {
            Ok(AsapMessage::Cookie { cookie: bytes }) => {
                assert_eq!(Cookie::decode(&bytes).expect("cookie"), cookie())
            }
            other => panic!("not a cookie: {other:?}"),
        }
        assert!(
            Data::decode(&decoded[2].payload)
                .expect("Data")
                .is_finalizer()
        );
        // One mark, after the first Data (the finalizer has none).
        assert_eq!(marks.len(), 1);
        let mut cut = frames.clone();
        cut.truncate(marks[0]);
        assert_eq!(frames_of(&cut), decoded[..1]);
    }

    #[test]
    fn an_injected_failure_ends_after_the_cookie() {
        let handover = Handover::from(vec![
            Output::Data(Data::new(0, 0, vec![5; 7])),
            Output::Cookie(cookie()),
            Output::FailureInjected,
        ]);
        assert!(!handover.is_empty());
        let (frames, marks, ending) = handover.into_parts();
        assert_eq!(
            (frames.len(), marks.len(), ending),
            (2, 1, Some("fail-after"))
        );
        assert!(Handover::default().is_empty());
    }
}
