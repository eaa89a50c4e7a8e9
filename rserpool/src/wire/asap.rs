//! ASAP messages (RFC 5352 §2.2), with rsplib's extensions.
//!
//! rsplib extensions we read and write: the Handle Resolution option (0x803f, `items`) in
//! HANDLE_RESOLUTION, a PE Identifier after the pool handle in ENDPOINT_KEEP_ALIVE, and an
//! overall policy in BUSINESS_CARD.
//!
//! Flag bit 0 of HANDLE_RESOLUTION_RESPONSE is the RFC's **A** bit ("automatic updates
//! accepted"). rsplib's header names the same bit `AHF_HANDLE_RESOLUTION_REJECT`, but its
//! creator always sends 0 and nothing reads it; we follow the RFC. A negative answer is told by
//! the presence of an Operation Error, as RFC 5352 §2.2.6 says.

use super::buf::{Reader, Writer, encode_atomically};
use super::error::{Decoded, EncodeError, Frame, WireError};
use super::param::{
    Ctx, OperationError, Params, PeId, PoolElement, PoolHandle, TransportAddress,
    is_transport_type, param_type, parse_tlvs, read_handle_resolution, read_pe_id, write_cookie,
    write_handle_resolution, write_pe_id,
};
use super::policy::Policy;

/// ASAP message type codes (RFC 5352 §2.2).
pub mod msg_type {
    pub const REGISTRATION: u8 = 0x01;
    pub const DEREGISTRATION: u8 = 0x02;
    pub const REGISTRATION_RESPONSE: u8 = 0x03;
    pub const DEREGISTRATION_RESPONSE: u8 = 0x04;
    pub const HANDLE_RESOLUTION: u8 = 0x05;
    pub const HANDLE_RESOLUTION_RESPONSE: u8 = 0x06;
    pub const ENDPOINT_KEEP_ALIVE: u8 = 0x07;
    pub const ENDPOINT_KEEP_ALIVE_ACK: u8 = 0x08;
    pub const ENDPOINT_UNREACHABLE: u8 = 0x09;
    pub const SERVER_ANNOUNCE: u8 = 0x0a;
    pub const COOKIE: u8 = 0x0b;
    pub const COOKIE_ECHO: u8 = 0x0c;
    pub const BUSINESS_CARD: u8 = 0x0d;
    pub const ERROR: u8 = 0x0e;
}

/// ASAP message flags (all in bit 0 of their message type).
pub mod flags {
    /// REGISTRATION_RESPONSE: R, registration rejected.
    pub const REJECT: u8 = 0x01;
    /// HANDLE_RESOLUTION: S, send updates for the life of the association.
    pub const SUBSCRIBE: u8 = 0x01;
    /// HANDLE_RESOLUTION_RESPONSE: A, automatic updates accepted.
    pub const ACCEPTED: u8 = 0x01;
    /// ENDPOINT_KEEP_ALIVE: H, the sender wants to be the PE's home ENRP server.
    pub const HOME: u8 = 0x01;
}

/// An ASAP message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AsapMessage {
    /// 0x01, PE to its home ENRP server.
    Registration {
        pool_handle: PoolHandle,
        pool_element: PoolElement,
    },
    /// 0x02.
    Deregistration {
        pool_handle: PoolHandle,
        pe_id: PeId,
    },
    /// 0x03; `rejected` is the R flag, `error` explains a rejection or warns.
    RegistrationResponse {
        rejected: bool,
        pool_handle: PoolHandle,
        pe_id: PeId,
        error: Option<OperationError>,
    },
    /// 0x04.
    DeregistrationResponse {
        pool_handle: PoolHandle,
        pe_id: PeId,
        error: Option<OperationError>,
    },
    /// 0x05; `subscribe` is the S flag; `items` is rsplib's Handle Resolution option
    /// (how many PEs are wanted, [`super::param::HANDLE_RESOLUTION_ALL`] = all).
    HandleResolution {
        subscribe: bool,
        pool_handle: PoolHandle,
        items: Option<u32>,
    },
    /// 0x06; `accepted` is the A flag; no `policy` means round robin; an `error` means the
    /// answer is negative.
    HandleResolutionResponse {
        accepted: bool,
        pool_handle: PoolHandle,
        policy: Option<Policy>,
        pool_elements: Vec<PoolElement>,
        error: Option<OperationError>,
    },
    /// 0x07; `home` is the H flag; `pe_id` is rsplib's optional PE Identifier.
    EndpointKeepAlive {
        home: bool,
        server_id: u32,
        pool_handle: PoolHandle,
        pe_id: Option<PeId>,
    },
    /// 0x08.
    EndpointKeepAliveAck {
        pool_handle: PoolHandle,
        pe_id: PeId,
    },
    /// 0x09.
    EndpointUnreachable {
        pool_handle: PoolHandle,
        pe_id: PeId,
    },
    /// 0x0a; no transports means "SCTP, the announce's source address, port 3863" (rsplib
    /// sends none and takes address and port from the UDP source).
    ServerAnnounce {
        server_id: u32,
        transports: Vec<TransportAddress>,
    },
    /// 0x0b, PE to PU.
    Cookie { cookie: Vec<u8> },
    /// 0x0c, PU to a new PE after failover.
    CookieEcho { cookie: Vec<u8> },
    /// 0x0d; RFC: pool handle and PEs in failover order; rsplib adds the pool's policy.
    BusinessCard {
        pool_handle: PoolHandle,
        policy: Option<Policy>,
        pool_elements: Vec<PoolElement>,
    },
    /// 0x0e.
    Error { error: OperationError },
}

impl AsapMessage {
    /// The message type code.
    pub fn message_type(&self) -> u8 {
        use msg_type as t;
        match self {
            AsapMessage::Registration { .. } => t::REGISTRATION,
            AsapMessage::Deregistration { .. } => t::DEREGISTRATION,
            AsapMessage::RegistrationResponse { .. } => t::REGISTRATION_RESPONSE,
            AsapMessage::DeregistrationResponse { .. } => t::DEREGISTRATION_RESPONSE,
            AsapMessage::HandleResolution { .. } => t::HANDLE_RESOLUTION,
            AsapMessage::HandleResolutionResponse { .. } => t::HANDLE_RESOLUTION_RESPONSE,
            AsapMessage::EndpointKeepAlive { .. } => t::ENDPOINT_KEEP_ALIVE,
            AsapMessage::EndpointKeepAliveAck { .. } => t::ENDPOINT_KEEP_ALIVE_ACK,
            AsapMessage::EndpointUnreachable { .. } => t::ENDPOINT_UNREACHABLE,
            AsapMessage::ServerAnnounce { .. } => t::SERVER_ANNOUNCE,
            AsapMessage::Cookie { .. } => t::COOKIE,
            AsapMessage::CookieEcho { .. } => t::COOKIE_ECHO,
            AsapMessage::BusinessCard { .. } => t::BUSINESS_CARD,
            AsapMessage::Error { .. } => t::ERROR,
        }
    }

    /// The RFC's name of the message type.
    pub fn name(&self) -> &'static str {
        message_name(self.message_type())
    }

    fn flags(&self) -> u8 {
        let bit = |b: bool| u8::from(b);
        match self {
            AsapMessage::RegistrationResponse { rejected, .. } => bit(*rejected) * flags::REJECT,
            AsapMessage::HandleResolution { subscribe, .. } => bit(*subscribe) * flags::SUBSCRIBE,
            AsapMessage::HandleResolutionResponse { accepted, .. } => {
                bit(*accepted) * flags::ACCEPTED
            }
            AsapMessage::EndpointKeepAlive { home, .. } => bit(*home) * flags::HOME,
            _ => 0,
        }
    }

    /// Appends the message, including its final padding (the length field excludes it).
    /// On error `out` is unchanged.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_atomically(out, |w| self.write(w))
    }

    /// The message as bytes, including its final padding.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let start = w.begin_message(self.message_type(), self.flags());
        match self {
            AsapMessage::Registration {
                pool_handle,
                pool_element,
            } => {
                pool_handle.write(w)?;
                pool_element.write(w)?;
            }
            AsapMessage::Deregistration { pool_handle, pe_id }
            | AsapMessage::EndpointKeepAliveAck { pool_handle, pe_id }
            | AsapMessage::EndpointUnreachable { pool_handle, pe_id } => {
                pool_handle.write(w)?;
                write_pe_id(w, *pe_id)?;
            }
            AsapMessage::RegistrationResponse {
                pool_handle,
                pe_id,
                error,
                ..
            }
            | AsapMessage::DeregistrationResponse {
                pool_handle,
                pe_id,
                error,
            } => {
                pool_handle.write(w)?;
                write_pe_id(w, *pe_id)?;
                if let Some(e) = error {
                    e.write(w)?;
                }
            }
            AsapMessage::HandleResolution {
                pool_handle, items, ..
            } => {
                pool_handle.write(w)?;
                if let Some(items) = items {
                    write_handle_resolution(w, *items)?;
                }
            }
            AsapMessage::HandleResolutionResponse {
                pool_handle,
                policy,
                pool_elements,
                error,
                ..
            } => {
                pool_handle.write(w)?;
                if let Some(p) = policy {
                    p.write(w)?;
                }
                for pe in pool_elements {
                    pe.write(w)?;
                }
                if let Some(e) = error {
                    e.write(w)?;
                }
            }
            AsapMessage::EndpointKeepAlive {
                server_id,
                pool_handle,
                pe_id,
                ..
            } => {
                w.u32(*server_id);
                pool_handle.write(w)?;
                if let Some(id) = pe_id {
                    write_pe_id(w, *id)?;
                }
            }
            AsapMessage::ServerAnnounce {
                server_id,
                transports,
            } => {
                w.u32(*server_id);
                for t in transports {
                    t.write(w)?;
                }
            }
            AsapMessage::Cookie { cookie } | AsapMessage::CookieEcho { cookie } => {
                write_cookie(w, cookie)?;
            }
            AsapMessage::BusinessCard {
                pool_handle,
                policy,
                pool_elements,
            } => {
                pool_handle.write(w)?;
                if let Some(p) = policy {
                    p.write(w)?;
                }
                for pe in pool_elements {
                    pe.write(w)?;
                }
            }
            AsapMessage::Error { error } => error.write(w)?,
        }
        w.end_message(start)
    }

    /// Decodes one message: `bytes` holds the message and at most its final padding.
    ///
    /// Structure is checked (mandatory parameters present, in the RFC's order, nothing
    /// unexpected); semantics (e.g. "a positive handle resolution response has at least one
    /// PE", "registrations carry no ASAP transport") are left to the caller.
    pub fn decode(bytes: &[u8]) -> Result<Decoded<AsapMessage>, WireError> {
        let frame = Frame::parse(bytes)?;
        let name = message_name(frame.msg_type);
        if name == "unknown" {
            return Err(frame.unrecognized());
        }
        let flag = frame.flags & 0x01 != 0;
        let mut ctx = Ctx::default();
        let mut r = Reader::new(frame.value);
        let server_id = match frame.msg_type {
            msg_type::ENDPOINT_KEEP_ALIVE | msg_type::SERVER_ANNOUNCE => match r.u32() {
                Some(id) => id,
                None => {
                    return Err(WireError::BadMessageLength {
                        length: frame.length,
                        minimum: 8,
                    });
                }
            },
            _ => 0,
        };
        let mut p = Params::new(parse_tlvs(r.rest(), &mut ctx)?, name);
        let ph = |p: &mut Params<'_>| PoolHandle::read(&p.required(param_type::POOL_HANDLE)?);
        let pe_id = |p: &mut Params<'_>| read_pe_id(&p.required(param_type::PE_IDENTIFIER)?);
        let op_error = |p: &mut Params<'_>| {
            p.take(param_type::OPERATION_ERROR)
                .map(|t| OperationError::read(&t))
                .transpose()
        };
        let policy = |p: &mut Params<'_>| {
            p.take(param_type::POOL_MEMBER_SELECTION_POLICY)
                .map(|t| Policy::read(&t))
                .transpose()
        };
        let pool_elements = |p: &mut Params<'_>, ctx: &mut Ctx| {
            let mut pes = Vec::new();
            while let Some(t) = p.take(param_type::POOL_ELEMENT) {
                pes.push(PoolElement::read(&t, ctx)?);
            }
            Ok::<_, WireError>(pes)
        };
        let cookie = |p: &mut Params<'_>| p.required(param_type::COOKIE).map(|t| t.value.to_vec());
        let message = match frame.msg_type {
            msg_type::REGISTRATION => AsapMessage::Registration {
                pool_handle: ph(&mut p)?,
                pool_element: PoolElement::read(&p.required(param_type::POOL_ELEMENT)?, &mut ctx)?,
            },
            msg_type::DEREGISTRATION => AsapMessage::Deregistration {
                pool_handle: ph(&mut p)?,
                pe_id: pe_id(&mut p)?,
            },
            msg_type::REGISTRATION_RESPONSE => AsapMessage::RegistrationResponse {
                rejected: flag,
                pool_handle: ph(&mut p)?,
                pe_id: pe_id(&mut p)?,
                error: op_error(&mut p)?,
            },
            msg_type::DEREGISTRATION_RESPONSE => AsapMessage::DeregistrationResponse {
                pool_handle: ph(&mut p)?,
                pe_id: pe_id(&mut p)?,
                error: op_error(&mut p)?,
            },
            msg_type::HANDLE_RESOLUTION => AsapMessage::HandleResolution {
                subscribe: flag,
                pool_handle: ph(&mut p)?,
                items: p
                    .take(param_type::HANDLE_RESOLUTION)
                    .map(|t| read_handle_resolution(&t))
                    .transpose()?,
            },
            msg_type::HANDLE_RESOLUTION_RESPONSE => AsapMessage::HandleResolutionResponse {
                accepted: flag,
                pool_handle: ph(&mut p)?,
                policy: policy(&mut p)?,
                pool_elements: pool_elements(&mut p, &mut ctx)?,
                error: op_error(&mut p)?,
            },
            msg_type::ENDPOINT_KEEP_ALIVE => AsapMessage::EndpointKeepAlive {
                home: flag,
                server_id,
                pool_handle: ph(&mut p)?,
                pe_id: p
                    .take(param_type::PE_IDENTIFIER)
                    .map(|t| read_pe_id(&t))
                    .transpose()?,
            },
            msg_type::ENDPOINT_KEEP_ALIVE_ACK => AsapMessage::EndpointKeepAliveAck {
                pool_handle: ph(&mut p)?,
                pe_id: pe_id(&mut p)?,
            },
            msg_type::ENDPOINT_UNREACHABLE => AsapMessage::EndpointUnreachable {
                pool_handle: ph(&mut p)?,
                pe_id: pe_id(&mut p)?,
            },
            msg_type::SERVER_ANNOUNCE => {
                let mut transports = Vec::new();
                while let Some(t) = p.take_where(is_transport_type) {
                    transports.push(TransportAddress::read(&t, &mut ctx)?);
                }
                AsapMessage::ServerAnnounce {
                    server_id,
                    transports,
                }
            }
            msg_type::COOKIE => AsapMessage::Cookie {
                cookie: cookie(&mut p)?,
            },
            msg_type::COOKIE_ECHO => AsapMessage::CookieEcho {
                cookie: cookie(&mut p)?,
            },
            msg_type::BUSINESS_CARD => AsapMessage::BusinessCard {
                pool_handle: ph(&mut p)?,
                policy: policy(&mut p)?,
                pool_elements: pool_elements(&mut p, &mut ctx)?,
            },
            _ => AsapMessage::Error {
                error: OperationError::read(&p.required(param_type::OPERATION_ERROR)?)?,
            },
        };
        p.finish()?;
        Ok(Decoded {
            message,
            unrecognized: ctx.unrecognized,
        })
    }

    /// The ASAP_ERROR to send back for a message that failed to decode, or `None` where the
    /// RFC says to discard silently.
    pub fn error_reply(error: &WireError) -> Option<AsapMessage> {
        error
            .operation_error()
            .map(|error| AsapMessage::Error { error })
    }

    /// The ASAP_ERROR reporting skipped-and-reported parameters of a decoded message, if any.
    pub fn unrecognized_reply<M>(decoded: &Decoded<M>) -> Option<AsapMessage> {
        decoded
            .unrecognized_report()
            .map(|error| AsapMessage::Error { error })
    }
}

/// The RFC's name of an ASAP message type ("unknown" for others).
pub fn message_name(msg_type: u8) -> &'static str {
    match msg_type {
        msg_type::REGISTRATION => "ASAP_REGISTRATION",
        msg_type::DEREGISTRATION => "ASAP_DEREGISTRATION",
        msg_type::REGISTRATION_RESPONSE => "ASAP_REGISTRATION_RESPONSE",
        msg_type::DEREGISTRATION_RESPONSE => "ASAP_DEREGISTRATION_RESPONSE",
        msg_type::HANDLE_RESOLUTION => "ASAP_HANDLE_RESOLUTION",
        msg_type::HANDLE_RESOLUTION_RESPONSE => "ASAP_HANDLE_RESOLUTION_RESPONSE",
        msg_type::ENDPOINT_KEEP_ALIVE => "ASAP_ENDPOINT_KEEP_ALIVE",
        msg_type::ENDPOINT_KEEP_ALIVE_ACK => "ASAP_ENDPOINT_KEEP_ALIVE_ACK",
        msg_type::ENDPOINT_UNREACHABLE => "ASAP_ENDPOINT_UNREACHABLE",
        msg_type::SERVER_ANNOUNCE => "ASAP_SERVER_ANNOUNCE",
        msg_type::COOKIE => "ASAP_COOKIE",
        msg_type::COOKIE_ECHO => "ASAP_COOKIE_ECHO",
        msg_type::BUSINESS_CARD => "ASAP_BUSINESS_CARD",
        msg_type::ERROR => "ASAP_ERROR",
        _ => "unknown",
    }
}
