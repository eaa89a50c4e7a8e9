//! The Wireshark Lua shim decodes our framed-TCP traffic: real transport, real tshark capture.
//! Requires tshark and capture rights on `lo` (root in CI); fails, never skips, without them.

use std::time::Duration;

use e2e::tshark::{CapturePlan, capture, field_values, field_values_per_packet};
use rserpool::transport::{HeartbeatConfig, PPID_ASAP, PPID_ENRP, PPID_FGP};

const POOL_HANDLE: &[u8] = b"FractalGeneratorPool";

fn fgp_parameter(width: u32, height: u32, max_iterations: u32) -> Vec<u8> {
    let mut out = vec![0x01, 0x00];
    out.extend_from_slice(&60u16.to_be_bytes());
    for value in [width, height, max_iterations, 1] {
        out.extend_from_slice(&value.to_be_bytes());
    }
    for value in [-2.0f64, -1.5, 1.0, 1.5, 2.0] {
        out.extend_from_slice(&value.to_bits().to_be_bytes());
    }
    assert_eq!(out.len(), 60);
    out
}

fn fgp_data(start_x: u32, start_y: u32, points: u32) -> Vec<u8> {
    let length = 16 + 4 * points as usize;
    let mut out = vec![0x02, 0x00];
    out.extend_from_slice(&u16::try_from(length).unwrap().to_be_bytes());
    for value in [start_x, start_y, points] {
        out.extend_from_slice(&value.to_be_bytes());
    }
    for point in 0..points {
        out.extend_from_slice(&(point % 1000).to_be_bytes());
    }
    out
}

/// ASAP TLV parameter, padded to 4 bytes.
fn parameter(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend_from_slice(&u16::try_from(4 + value.len()).unwrap().to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

fn message(kind: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind, flags];
    out.extend_from_slice(&u16::try_from(4 + body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// ASAP Endpoint Keep-Alive Ack (0x08): Pool Handle, PE Identifier.
fn asap_keep_alive_ack(pe_id: u32) -> Vec<u8> {
    let mut body = parameter(0x0009, POOL_HANDLE);
    body.extend(parameter(0x000e, &pe_id.to_be_bytes()));
    message(0x08, 0, &body)
}

/// ENRP List Request (0x05): sender and receiver server ids.
fn enrp_list_request(sender: u32, receiver: u32) -> Vec<u8> {
    let mut body = sender.to_be_bytes().to_vec();
    body.extend_from_slice(&receiver.to_be_bytes());
    message(0x05, 0, &body)
}

fn hex_colons(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[tokio::test]
async fn lua_shim_decodes_fgp_asap_enrp_and_heartbeats() -> anyhow::Result<()> {
    // 16379 points make a 65540-byte frame: more than one IP packet can carry, so it must be
    // reassembled from several segments.
    const SPLIT_POINTS: u32 = 16379;
    let coalesced = vec![
        (PPID_FGP, fgp_data(0, 0, 324)),
        (PPID_FGP, fgp_data(324, 0, 5)),
        (PPID_FGP, fgp_data(329, 0, 17)),
        (PPID_FGP, fgp_data(0xffff_ffff, 0xffff_ffff, 0)),
    ];
    let plan = CapturePlan {
        batches: vec![
            vec![(PPID_FGP, fgp_parameter(800, 600, 2500))],
            vec![(PPID_ASAP, asap_keep_alive_ack(0x0102_0304))],
            vec![(PPID_ENRP, enrp_list_request(0x1234_5678, 0x9abc_def0))],
            coalesced.clone(),
            vec![(PPID_FGP, fgp_data(0, 1, SPLIT_POINTS))],
            vec![(PPID_FGP, fgp_parameter(1024, 768, 100))],
        ],
        heartbeat: Some(HeartbeatConfig {
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
        }),
        wait_for_heartbeats: true,
    };
    let decoded = capture(&plan).await?;
    decoded.assert_clean()?;
    let packets = &decoded.packets;

    // Framing: every application frame, in order, with its length; heartbeats besides.
    let sent: Vec<&(u32, Vec<u8>)> = plan.batches.iter().flatten().collect();
    let ppids = field_values(packets, "rserpool_tcp.ppid");
    let lengths = field_values(packets, "rserpool_tcp.length");
    assert_eq!(ppids.len(), lengths.len());
    let application: Vec<(String, String)> = ppids
        .iter()
        .cloned()
        .zip(lengths.iter().cloned())
        .filter(|(ppid, _)| ppid != "0")
        .collect();
    let expected: Vec<(String, String)> = sent
        .iter()
        .map(|(ppid, payload)| (ppid.to_string(), payload.len().to_string()))
        .collect();
    assert_eq!(application, expected);

    // Heartbeats: requests and acks, decoded by the shim itself.
    let kinds = field_values(packets, "rserpool_tcp.heartbeat.kind");
    assert!(
        kinds.iter().any(|k| k == "1") && kinds.iter().any(|k| k == "2"),
        "heartbeat kinds {kinds:?}"
    );
    assert_eq!(
        field_values(packets, "rserpool_tcp.heartbeat.nonce").len(),
        kinds.len()
    );
    assert!(ppids.iter().filter(|p| *p == "0").count() == kinds.len());

    // FGP, by Wireshark's own dissector.
    assert_eq!(
        field_values(packets, "fractalgeneratorprotocol.parameter_width"),
        ["800", "1024"]
    );
    assert_eq!(
        field_values(packets, "fractalgeneratorprotocol.parameter_height"),
        ["600", "768"]
    );
    assert_eq!(
        field_values(packets, "fractalgeneratorprotocol.parameter_maxiterations"),
        ["2500", "100"]
    );
    assert_eq!(
        field_values(packets, "fractalgeneratorprotocol.data_points"),
        ["324", "5", "17", "0", &SPLIT_POINTS.to_string()]
    );
    assert_eq!(
        field_values(packets, "fractalgeneratorprotocol.data_start_x"),
        ["0", "324", "329", "4294967295", "0"]
    );

    // ASAP and ENRP, by Wireshark's own dissectors.
    assert_eq!(field_values(packets, "asap.message_type"), ["8"]);
    assert_eq!(
        field_values(packets, "asap.pool_handle_pool_handle"),
        [hex_colons(POOL_HANDLE)]
    );
    assert_eq!(field_values(packets, "asap.pe_identifier"), ["0x01020304"]);
    assert_eq!(field_values(packets, "enrp.message_type"), ["5"]);
    assert_eq!(
        field_values(packets, "enrp.sender_servers_id"),
        ["0x12345678"]
    );
    assert_eq!(
        field_values(packets, "enrp.receiver_servers_id"),
        ["0x9abcdef0"]
    );

    // Several frames in one segment: the coalesced batch shares a packet.
    let points_per_packet =
        field_values_per_packet(packets, "fractalgeneratorprotocol.data_points");
    assert!(
        points_per_packet
            .iter()
            .any(|points| points.len() >= coalesced.len()),
        "no packet carried the {} coalesced frames: {points_per_packet:?}",
        coalesced.len()
    );

    // One frame across segments: reassembled from at least two.
    let split = packets
        .iter()
        .find(|p| {
            field_values(
                std::slice::from_ref(p),
                "fractalgeneratorprotocol.data_points",
            ) == [SPLIT_POINTS.to_string()]
        })
        .expect("the split frame was decoded");
    let segments = field_values(std::slice::from_ref(split), "tcp.segment.count");
    assert!(
        segments
            .first()
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| c >= 2),
        "split frame reassembled from {segments:?} segments"
    );
    Ok(())
}

#[tokio::test]
async fn single_asap_frame_decodes_on_a_port_set_by_preference() -> anyhow::Result<()> {
    // The listener's ephemeral port reaches the shim only through `-o rserpool_tcp.ports:`.
    let decoded = e2e::tshark::capture_and_decode(&[(PPID_ASAP, asap_keep_alive_ack(7))]).await?;
    decoded.assert_clean()?;
    assert_eq!(field_values(&decoded.packets, "rserpool_tcp.ppid"), ["11"]);
    assert_eq!(
        field_values(&decoded.packets, "asap.pe_identifier"),
        ["0x00000007"]
    );
    Ok(())
}

/// The clean-decode checks are not vacuous: broken framing is flagged.
#[tokio::test]
async fn shim_flags_oversized_frames_and_malformed_heartbeats() -> anyhow::Result<()> {
    let mut bad_heartbeat = 0u32.to_be_bytes().to_vec();
    bad_heartbeat.extend_from_slice(&3u32.to_be_bytes());
    bad_heartbeat.extend_from_slice(&[1, 0, 0]);
    let mut unknown_kind = 0u32.to_be_bytes().to_vec();
    unknown_kind.extend_from_slice(&12u32.to_be_bytes());
    unknown_kind.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    let mut oversized = PPID_FGP.to_be_bytes().to_vec();
    oversized.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    oversized.extend_from_slice(&[0; 32]);
    let decoded = e2e::tshark::capture_raw(&[bad_heartbeat, unknown_kind, oversized]).await?;
    assert!(
        decoded.assert_clean().is_err(),
        "broken frames must be flagged"
    );
    assert_eq!(
        decoded.flagged_frames.len(),
        3,
        "each broken frame's packet: {:?}",
        decoded.flagged_frames
    );
    let messages = field_values(&decoded.packets, "_ws.expert.message");
    assert!(
        messages.iter().any(|m| m.contains("Heartbeat of 3 bytes")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("Unknown heartbeat kind 9")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("exceeds the maximum")),
        "{messages:?}"
    );
    Ok(())
}
