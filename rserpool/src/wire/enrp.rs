//! ENRP messages (RFC 5353 §2), with rsplib's takeover-suggestion flag.
//!
//! Every ENRP message carries the sending and receiving server identifiers after the common
//! header (receiver 0 = group-cast), so [`EnrpMessage`] holds them next to an [`EnrpBody`].

use super::buf::{Reader, Writer, encode_atomically};
use super::error::{Decoded, EncodeError, Frame, WireError};
use super::param::{
    Ctx, OperationError, Params, PoolElement, PoolHandle, ServerInformation, param_type,
    parse_tlvs, read_pe_checksum, write_pe_checksum,
};

/// ENRP message type codes (RFC 5353 §2).
pub mod msg_type {
    pub const PRESENCE: u8 = 0x01;
    pub const HANDLE_TABLE_REQUEST: u8 = 0x02;
    pub const HANDLE_TABLE_RESPONSE: u8 = 0x03;
    pub const HANDLE_UPDATE: u8 = 0x04;
    pub const LIST_REQUEST: u8 = 0x05;
    pub const LIST_RESPONSE: u8 = 0x06;
    pub const INIT_TAKEOVER: u8 = 0x07;
    pub const INIT_TAKEOVER_ACK: u8 = 0x08;
    pub const TAKEOVER_SERVER: u8 = 0x09;
    pub const ERROR: u8 = 0x0a;
}

/// ENRP message flags.
pub mod flags {
    /// PRESENCE: R, reply required.
    pub const REPLY_REQUIRED: u8 = 0x01;
    /// HANDLE_TABLE_REQUEST: W, only PEs owned by the receiver.
    pub const OWN_CHILDREN_ONLY: u8 = 0x01;
    /// HANDLE_TABLE_RESPONSE and LIST_RESPONSE: R, request rejected.
    pub const REJECT: u8 = 0x01;
    /// HANDLE_TABLE_RESPONSE: M, more to send.
    pub const MORE_TO_SEND: u8 = 0x02;
    /// HANDLE_UPDATE: T, takeover suggested (draft-dreibholz-rserpool-enrp-takeover).
    pub const TAKEOVER_SUGGESTED: u8 = 0x01;
}

/// The Update Action of a HANDLE_UPDATE (RFC 5353 §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpdateAction {
    /// 0x0000: add or replace the PE.
    AddPe,
    /// 0x0001: delete the PE.
    DelPe,
}

impl UpdateAction {
    /// The wire value.
    pub fn to_wire(self) -> u16 {
        match self {
            UpdateAction::AddPe => 0,
            UpdateAction::DelPe => 1,
        }
    }

    /// The action for a wire value, `None` for unassigned ones.
    pub fn from_wire(v: u16) -> Option<Self> {
        match v {
            0 => Some(UpdateAction::AddPe),
            1 => Some(UpdateAction::DelPe),
            _ => None,
        }
    }
}

/// One pool in a HANDLE_TABLE_RESPONSE: its handle and at least one PE.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolEntry {
    pub pool_handle: PoolHandle,
    pub pool_elements: Vec<PoolElement>,
}

/// An ENRP message: sender and receiver server ids plus the type-specific body.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EnrpMessage {
    pub sender_id: u32,
    /// 0 when group-cast.
    pub receiver_id: u32,
    pub body: EnrpBody,
}

/// The type-specific part of an ENRP message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EnrpBody {
    /// 0x01; `reply_required` is the R flag. A reply to R=1 must carry `server_info`.
    Presence {
        reply_required: bool,
        checksum: u16,
        server_info: Option<ServerInformation>,
    },
    /// 0x02; `own_children_only` is the W flag.
    HandleTableRequest { own_children_only: bool },
    /// 0x03; `reject` is R, `more_to_send` is M (ask again for the next page).
    HandleTableResponse {
        reject: bool,
        more_to_send: bool,
        pools: Vec<PoolEntry>,
    },
    /// 0x04; `takeover_suggested` is rsplib's T flag.
    HandleUpdate {
        takeover_suggested: bool,
        action: UpdateAction,
        pool_handle: PoolHandle,
        pool_element: PoolElement,
    },
    /// 0x05.
    ListRequest,
    /// 0x06; `reject` is the R flag.
    ListResponse {
        reject: bool,
        servers: Vec<ServerInformation>,
    },
    /// 0x07.
    InitTakeover { target_id: u32 },
    /// 0x08.
    InitTakeoverAck { target_id: u32 },
    /// 0x09.
    TakeoverServer { target_id: u32 },
    /// 0x0a.
    Error { error: OperationError },
}

impl EnrpBody {
    /// The message type code.
    pub fn message_type(&self) -> u8 {
        use msg_type as t;
        match self {
            EnrpBody::Presence { .. } => t::PRESENCE,
            EnrpBody::HandleTableRequest { .. } => t::HANDLE_TABLE_REQUEST,
            EnrpBody::HandleTableResponse { .. } => t::HANDLE_TABLE_RESPONSE,
            EnrpBody::HandleUpdate { .. } => t::HANDLE_UPDATE,
            EnrpBody::ListRequest => t::LIST_REQUEST,
            EnrpBody::ListResponse { .. } => t::LIST_RESPONSE,
            EnrpBody::InitTakeover { .. } => t::INIT_TAKEOVER,
            EnrpBody::InitTakeoverAck { .. } => t::INIT_TAKEOVER_ACK,
            EnrpBody::TakeoverServer { .. } => t::TAKEOVER_SERVER,
            EnrpBody::Error { .. } => t::ERROR,
        }
    }

    fn flags(&self) -> u8 {
        let bit = |b: bool, f: u8| if b { f } else { 0 };
        match self {
            EnrpBody::Presence { reply_required, .. } => {
                bit(*reply_required, flags::REPLY_REQUIRED)
            }
            EnrpBody::HandleTableRequest { own_children_only } => {
                bit(*own_children_only, flags::OWN_CHILDREN_ONLY)
            }
            EnrpBody::HandleTableResponse {
                reject,
                more_to_send,
                ..
            } => bit(*reject, flags::REJECT) | bit(*more_to_send, flags::MORE_TO_SEND),
            EnrpBody::HandleUpdate {
                takeover_suggested, ..
            } => bit(*takeover_suggested, flags::TAKEOVER_SUGGESTED),
            EnrpBody::ListResponse { reject, .. } => bit(*reject, flags::REJECT),
            _ => 0,
        }
    }
}

impl EnrpMessage {
    /// The message type code.
    pub fn message_type(&self) -> u8 {
        self.body.message_type()
    }

    /// The RFC's name of the message type.
    pub fn name(&self) -> &'static str {
        message_name(self.message_type())
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
        let start = w.begin_message(self.body.message_type(), self.body.flags());
        w.u32(self.sender_id);
        w.u32(self.receiver_id);
        match &self.body {
            EnrpBody::Presence {
                checksum,
                server_info,
                ..
            } => {
                write_pe_checksum(w, *checksum)?;
                if let Some(s) = server_info {
                    s.write(w)?;
                }
            }
            EnrpBody::HandleTableRequest { .. } | EnrpBody::ListRequest => {}
            EnrpBody::HandleTableResponse { pools, .. } => {
                for entry in pools {
                    if entry.pool_elements.is_empty() {
                        return Err(EncodeError::Invalid(
                            "handle table pool entry without pool elements",
                        ));
                    }
                    entry.pool_handle.write(w)?;
                    for pe in &entry.pool_elements {
                        pe.write(w)?;
                    }
                }
            }
            EnrpBody::HandleUpdate {
                action,
                pool_handle,
                pool_element,
                ..
            } => {
                w.u16(action.to_wire());
                w.u16(0);
                pool_handle.write(w)?;
                pool_element.write(w)?;
            }
            EnrpBody::ListResponse { servers, .. } => {
                for s in servers {
                    s.write(w)?;
                }
            }
            EnrpBody::InitTakeover { target_id }
            | EnrpBody::InitTakeoverAck { target_id }
            | EnrpBody::TakeoverServer { target_id } => w.u32(*target_id),
            EnrpBody::Error { error } => error.write(w)?,
        }
        w.end_message(start)
    }

    /// Decodes one message: `bytes` holds the message and at most its final padding.
    /// Structure is checked; semantics are left to the caller (see
    /// [`super::asap::AsapMessage::decode`]).
    pub fn decode(bytes: &[u8]) -> Result<Decoded<EnrpMessage>, WireError> {
        let frame = Frame::parse(bytes)?;
        let name = message_name(frame.msg_type);
        if name == "unknown" {
            return Err(frame.unrecognized());
        }
        let mut r = Reader::new(frame.value);
        let fixed = |r: &mut Reader<'_>, minimum: usize| {
            r.u32().ok_or(WireError::BadMessageLength {
                length: frame.length,
                minimum,
            })
        };
        let sender_id = fixed(&mut r, 12)?;
        let receiver_id = fixed(&mut r, 12)?;
        let (mut action, mut target_id) = (UpdateAction::AddPe, 0);
        match frame.msg_type {
            msg_type::HANDLE_UPDATE => {
                let raw = fixed(&mut r, 16)?;
                // Update Action u16, then a reserved u16 that is ignored.
                let code = (raw >> 16) as u16;
                action = UpdateAction::from_wire(code).ok_or(WireError::InvalidField {
                    field: "update action",
                    value: u32::from(code),
                })?;
            }
            msg_type::INIT_TAKEOVER | msg_type::INIT_TAKEOVER_ACK | msg_type::TAKEOVER_SERVER => {
                target_id = fixed(&mut r, 16)?;
            }
            _ => {}
        }
        let mut ctx = Ctx::default();
        let mut p = Params::new(parse_tlvs(r.rest(), &mut ctx)?, name);
        let flag0 = frame.flags & 0x01 != 0;
        let body = match frame.msg_type {
            msg_type::PRESENCE => EnrpBody::Presence {
                reply_required: flag0,
                checksum: read_pe_checksum(&p.required(param_type::PE_CHECKSUM)?)?,
                server_info: p
                    .take(param_type::SERVER_INFORMATION)
                    .map(|t| ServerInformation::read(&t, &mut ctx))
                    .transpose()?,
            },
            msg_type::HANDLE_TABLE_REQUEST => EnrpBody::HandleTableRequest {
                own_children_only: flag0,
            },
            msg_type::HANDLE_TABLE_RESPONSE => {
                let mut pools = Vec::new();
                while let Some(t) = p.take(param_type::POOL_HANDLE) {
                    let pool_handle = PoolHandle::read(&t)?;
                    let mut pool_elements = vec![PoolElement::read(
                        &p.required(param_type::POOL_ELEMENT)?,
                        &mut ctx,
                    )?];
                    while let Some(t) = p.take(param_type::POOL_ELEMENT) {
                        pool_elements.push(PoolElement::read(&t, &mut ctx)?);
                    }
                    pools.push(PoolEntry {
                        pool_handle,
                        pool_elements,
                    });
                }
                EnrpBody::HandleTableResponse {
                    reject: flag0,
                    more_to_send: frame.flags & flags::MORE_TO_SEND != 0,
                    pools,
                }
            }
            msg_type::HANDLE_UPDATE => EnrpBody::HandleUpdate {
                takeover_suggested: flag0,
                action,
                pool_handle: PoolHandle::read(&p.required(param_type::POOL_HANDLE)?)?,
                pool_element: PoolElement::read(&p.required(param_type::POOL_ELEMENT)?, &mut ctx)?,
            },
            msg_type::LIST_REQUEST => EnrpBody::ListRequest,
            msg_type::LIST_RESPONSE => {
                let mut servers = Vec::new();
                while let Some(t) = p.take(param_type::SERVER_INFORMATION) {
                    servers.push(ServerInformation::read(&t, &mut ctx)?);
                }
                EnrpBody::ListResponse {
                    reject: flag0,
                    servers,
                }
            }
            msg_type::INIT_TAKEOVER => EnrpBody::InitTakeover { target_id },
            msg_type::INIT_TAKEOVER_ACK => EnrpBody::InitTakeoverAck { target_id },
            msg_type::TAKEOVER_SERVER => EnrpBody::TakeoverServer { target_id },
            _ => EnrpBody::Error {
                error: OperationError::read(&p.required(param_type::OPERATION_ERROR)?)?,
            },
        };
        p.finish()?;
        Ok(Decoded {
            message: EnrpMessage {
                sender_id,
                receiver_id,
                body,
            },
            unrecognized: ctx.unrecognized,
        })
    }

    /// The ENRP_ERROR from `own_id` to `peer_id` for a message that failed to decode, or
    /// `None` where the RFC says to discard silently.
    pub fn error_reply(error: &WireError, own_id: u32, peer_id: u32) -> Option<EnrpMessage> {
        error.operation_error().map(|error| EnrpMessage {
            sender_id: own_id,
            receiver_id: peer_id,
            body: EnrpBody::Error { error },
        })
    }

    /// The ENRP_ERROR reporting skipped-and-reported parameters of a decoded message, if any.
    pub fn unrecognized_reply<M>(
        decoded: &Decoded<M>,
        own_id: u32,
        peer_id: u32,
    ) -> Option<EnrpMessage> {
        decoded.unrecognized_report().map(|error| EnrpMessage {
            sender_id: own_id,
            receiver_id: peer_id,
            body: EnrpBody::Error { error },
        })
    }
}

/// The RFC's name of an ENRP message type ("unknown" for others).
pub fn message_name(msg_type: u8) -> &'static str {
    match msg_type {
        msg_type::PRESENCE => "ENRP_PRESENCE",
        msg_type::HANDLE_TABLE_REQUEST => "ENRP_HANDLE_TABLE_REQUEST",
        msg_type::HANDLE_TABLE_RESPONSE => "ENRP_HANDLE_TABLE_RESPONSE",
        msg_type::HANDLE_UPDATE => "ENRP_HANDLE_UPDATE",
        msg_type::LIST_REQUEST => "ENRP_LIST_REQUEST",
        msg_type::LIST_RESPONSE => "ENRP_LIST_RESPONSE",
        msg_type::INIT_TAKEOVER => "ENRP_INIT_TAKEOVER",
        msg_type::INIT_TAKEOVER_ACK => "ENRP_INIT_TAKEOVER_ACK",
        msg_type::TAKEOVER_SERVER => "ENRP_TAKEOVER_SERVER",
        msg_type::ERROR => "ENRP_ERROR",
        _ => "unknown",
    }
}
