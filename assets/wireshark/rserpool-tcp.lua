-- rserpool-tcp.lua: Wireshark/tshark dissector for RSerPool associations over framed TCP.
--
-- Our RSerPool implementation runs associations (ASAP, ENRP, and application data such as the
-- Fractal Generator Protocol) over TCP instead of SCTP. Each message travels in a frame
--
--     PPID u32 big-endian | Length u32 big-endian | payload[Length]
--
-- where the PPID plays the role of SCTP's payload protocol identifier: ASAP 11, ENRP 12,
-- FGP 32; PPID 0 is the transport's heartbeat:
--
--     kind u8 (1 = request, 2 = ack) | reserved u8[3] | nonce u64
--
-- This script reassembles frames across TCP segments (several frames per segment too), shows
-- PPID and Length, decodes heartbeats, and hands every other payload to the dissector that
-- Wireshark registers for that PPID in the "sctp.ppi" table (its own ASAP, ENRP and
-- FractalGeneratorProtocol dissectors).
--
-- Usage (the script is not installed; point Wireshark/tshark at it):
--
--   Capture (root or CAP_NET_RAW), e.g. a registrar on 3863/9901 and pool elements on
--   ephemeral ports:
--     tshark -i lo -f "tcp port 3863 or tcp port 9901 or tcp portrange 32768-60999" -w capture.pcap
--
--   Decode:
--     tshark -X lua_script:assets/wireshark/rserpool-tcp.lua -r capture.pcap
--     tshark -X lua_script:assets/wireshark/rserpool-tcp.lua -r capture.pcap -V -Y fractalgeneratorprotocol
--     wireshark -X lua_script:assets/wireshark/rserpool-tcp.lua capture.pcap
--
--   Ports (preferences, also under Edit > Preferences > Protocols > RSERPOOL_TCP):
--     -o rserpool_tcp.ports:3863,9901          registrar ASAP and ENRP ports (the default)
--     -o rserpool_tcp.data_ports:40000-40100   pool element data ports (default: none)
--     -o rserpool_tcp.max_frame_length:262144  larger frames are flagged as errors
--   or "Decode As" one port:
--     -d tcp.port==40123,rserpool_tcp
--
-- Display filters: rserpool_tcp, rserpool_tcp.ppid == 32, rserpool_tcp.heartbeat.kind == 1,
-- asap, enrp, fractalgeneratorprotocol.

local HEADER_LEN = 8
local HEARTBEAT_LEN = 12
local PPID_HEARTBEAT = 0

local proto = Proto("rserpool_tcp", "RSerPool over TCP (PPID framing)")

local ppid_names = {
    [0] = "Heartbeat (transport)",
    [11] = "ASAP",
    [12] = "ENRP",
    [32] = "Fractal Generator Protocol",
    [33] = "PingPong",
    [34] = "CalcApp",
    [35] = "Scripting",
}
local heartbeat_kinds = { [1] = "Request", [2] = "Ack" }

local f_ppid = ProtoField.uint32("rserpool_tcp.ppid", "Payload Protocol Identifier", base.DEC, ppid_names)
local f_length = ProtoField.uint32("rserpool_tcp.length", "Length", base.DEC)
local f_hb_kind = ProtoField.uint8("rserpool_tcp.heartbeat.kind", "Heartbeat Kind", base.DEC, heartbeat_kinds)
local f_hb_reserved = ProtoField.bytes("rserpool_tcp.heartbeat.reserved", "Reserved")
local f_hb_nonce = ProtoField.uint64("rserpool_tcp.heartbeat.nonce", "Nonce", base.HEX)
proto.fields = { f_ppid, f_length, f_hb_kind, f_hb_reserved, f_hb_nonce }

local e_too_large = ProtoExpert.new("rserpool_tcp.too_large", "Frame length exceeds the maximum",
    expert.group.MALFORMED, expert.severity.ERROR)
local e_bad_heartbeat = ProtoExpert.new("rserpool_tcp.heartbeat.malformed", "Malformed heartbeat",
    expert.group.MALFORMED, expert.severity.ERROR)
proto.experts = { e_too_large, e_bad_heartbeat }

proto.prefs.ports = Pref.range("Ports", "3863,9901",
    "TCP ports carrying framed RSerPool associations (registrar ASAP and ENRP ports)", 65535)
proto.prefs.data_ports = Pref.range("Pool element data ports", "",
    "TCP ports of pool elements' data associations (they often listen on ephemeral ports)", 65535)
proto.prefs.max_frame_length = Pref.uint("Maximum frame length", 262144,
    "Frames announcing a longer payload are flagged as errors (the transport resets them)")

local ppi_table = DissectorTable.get("sctp.ppi")
local data_dissector = Dissector.get("data")

local function dissect_heartbeat(tvb, offset, length, pinfo, tree)
    local item = tree:add(tvb(offset, length), "Heartbeat")
    if length ~= HEARTBEAT_LEN then
        item:add_proto_expert_info(e_bad_heartbeat,
            string.format("Heartbeat of %d bytes (expected %d)", length, HEARTBEAT_LEN))
        return
    end
    local kind = tvb(offset, 1):uint()
    local kind_item = item:add(f_hb_kind, tvb(offset, 1))
    item:add(f_hb_reserved, tvb(offset + 1, 3))
    item:add(f_hb_nonce, tvb(offset + 4, 8))
    local name = heartbeat_kinds[kind]
    if name == nil then
        kind_item:add_proto_expert_info(e_bad_heartbeat, string.format("Unknown heartbeat kind %d", kind))
        name = "Unknown"
    end
    item:append_text(string.format(" %s, nonce 0x%s", name, tvb(offset + 4, 8):uint64():tohex()))
    pinfo.cols.info:append(string.format("Heartbeat %s ", name))
end

-- One complete frame (tcp_dissect_pdus hands us exactly one).
local function dissect_frame(tvb, pinfo, tree)
    local ppid = tvb(0, 4):uint()
    local length = tvb(4, 4):uint()
    pinfo.cols.protocol = "RSerPool/TCP"
    local subtree = tree:add(proto, tvb())
    subtree:add(f_ppid, tvb(0, 4))
    local length_item = subtree:add(f_length, tvb(4, 4))
    subtree:append_text(string.format(", PPID %d (%s), Length %d", ppid, ppid_names[ppid] or "unknown", length))
    if length > proto.prefs.max_frame_length or tvb:len() ~= HEADER_LEN + length then
        length_item:add_proto_expert_info(e_too_large,
            string.format("Length %d exceeds the maximum %d", length, proto.prefs.max_frame_length))
        return tvb:len()
    end
    if ppid == PPID_HEARTBEAT then
        dissect_heartbeat(tvb, HEADER_LEN, length, pinfo, subtree)
    elseif length > 0 then
        local payload = tvb(HEADER_LEN, length):tvb()
        -- Falls back to the data dissector when no dissector is registered for the PPID.
        ppi_table:try(ppid, payload, pinfo, tree)
    end
    return tvb:len()
end

local function frame_len(tvb, pinfo, offset)
    local length = tvb(offset + 4, 4):uint()
    if length > proto.prefs.max_frame_length then
        -- Do not wait for gigabytes that will never come: take this segment's rest as the
        -- (bad) frame, which dissect_frame flags.
        return tvb:len() - offset
    end
    return HEADER_LEN + length
end

function proto.dissector(tvb, pinfo, tree)
    dissect_tcp_pdus(tvb, tree, HEADER_LEN, frame_len, dissect_frame, true)
    return tvb:len()
end

local tcp_ports = DissectorTable.get("tcp.port")
local registered_ranges = {}

local function register_ports()
    for _, range in ipairs(registered_ranges) do
        tcp_ports:remove(range, proto)
    end
    registered_ranges = {}
    for _, range in ipairs({ proto.prefs.ports, proto.prefs.data_ports }) do
        if range ~= nil and range ~= "" then
            tcp_ports:add(range, proto)
            table.insert(registered_ranges, range)
        end
    end
end

function proto.prefs_changed()
    register_ports()
end

register_ports()
tcp_ports:add_for_decode_as(proto)
