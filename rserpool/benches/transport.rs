//! Frame codec and loopback association throughput.
//!
//! `cargo bench -p rserpool --bench transport`

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rserpool::transport::frame::{FrameDecoder, encode_frame};
use rserpool::transport::{AssociationConfig, Listener, PPID_FGP, TcpFramed, Transport};

/// An FGP Data message with rsplib's 324 points.
const FGP_DATA_LEN: usize = 16 + 4 * 324;
const FRAMES: usize = 1000;

fn codec(c: &mut Criterion) {
    let payload = vec![0x5a; FGP_DATA_LEN];
    let mut stream = Vec::new();
    for _ in 0..FRAMES {
        encode_frame(PPID_FGP, &payload, &mut stream).unwrap();
    }
    let mut group = c.benchmark_group("frame_codec");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("encode_1000_fgp_data", |b| {
        let mut out = Vec::with_capacity(stream.len());
        b.iter(|| {
            out.clear();
            for _ in 0..FRAMES {
                encode_frame(PPID_FGP, black_box(&payload), &mut out).unwrap();
            }
            black_box(out.len())
        })
    });
    // The connection's way: reads appended to one buffer, frames split off it.
    group.bench_function("split_1000_fgp_data_off_64k_reads", |b| {
        b.iter(|| {
            let mut decoder = FrameDecoder::default();
            let mut buffer = BytesMut::new();
            let mut frames = 0;
            for chunk in black_box(&stream).chunks(64 * 1024) {
                buffer.extend_from_slice(chunk);
                while let Some(frame) = decoder.decode_buf(&mut buffer).unwrap() {
                    frames += frame.payload.len();
                }
            }
            frames
        })
    });
    group.finish();
}

fn loopback(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = AssociationConfig {
        heartbeat: None,
        ..AssociationConfig::default()
    };
    let (client, server) = runtime.block_on(async {
        let transport = TcpFramed::new(config);
        let listener = transport
            .bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(transport.connect(addr), listener.accept());
        (client.unwrap(), server.unwrap())
    });
    let (client_tx, mut client_rx) = client.split();
    let (server_tx, mut server_rx) = server.split();
    let payload = vec![0x5a; FGP_DATA_LEN];
    let mut group = c.benchmark_group("association_loopback");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes((FRAMES * FGP_DATA_LEN) as u64));
    group.bench_function("stream_1000_fgp_data_frames", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let sender = client_tx.clone();
                let payload = payload.clone();
                let producer = tokio::spawn(async move {
                    for _ in 0..FRAMES {
                        sender.send(PPID_FGP, payload.clone()).await.unwrap();
                    }
                });
                for _ in 0..FRAMES {
                    black_box(server_rx.recv().await.unwrap());
                }
                producer.await.unwrap();
            })
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("request_response_round_trip_60_bytes", |b| {
        b.iter(|| {
            runtime.block_on(async {
                client_tx.send(PPID_FGP, vec![1u8; 60]).await.unwrap();
                let request = server_rx.recv().await.unwrap();
                server_tx.send(PPID_FGP, request.payload).await.unwrap();
                black_box(client_rx.recv().await.unwrap());
            })
        })
    });
    group.finish();
}

criterion_group!(benches, codec, loopback);
criterion_main!(benches);
