//! FGP codec and cookie: hand-written golden vectors (rsplib's packed big-endian layout) and
//! property tests.

use fractal_protocol::cookie::{COOKIE_LEN, Cookie, CookieError};
use fractal_protocol::message::{
    AlgorithmId, Data, DataView, DecodeError, EncodeError, MAX_POINTS_PER_DATA, Message, Parameter,
    ParameterError,
};
use proptest::prelude::*;

/// MandelbrotN, 400x250, 1024 iterations, C1 = (-0.75, 0.1), C2 = (0.25, -0.1), N = 3.
fn golden_parameter_value() -> Parameter {
    Parameter {
        width: 400,
        height: 250,
        max_iterations: 1024,
        algorithm: AlgorithmId::MANDELBROT_N,
        c1_real: -0.75,
        c1_imag: 0.1,
        c2_real: 0.25,
        c2_imag: -0.1,
        n: 3.0,
    }
}

/// The Parameter layout with a given header Length (60 on the wire, 4 inside a cookie).
fn golden_parameter_bytes(length: [u8; 2]) -> Vec<u8> {
    let mut bytes = vec![
        0x01, // Type: Parameter
        0x00, // Flags
        length[0], length[1], // Length
        0x00, 0x00, 0x01, 0x90, // Width 400
        0x00, 0x00, 0x00, 0xFA, // Height 250
        0x00, 0x00, 0x04, 0x00, // MaxIterations 1024
        0x00, 0x00, 0x00, 0x02, // AlgorithmID 2 = MandelbrotN
        0xBF, 0xE8, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, // C1Real -0.75: sign 1, exp 0x3FE, frac .1000
        0x3F, 0xB9, 0x99, 0x99, 0x99, 0x99, 0x99,
        0x9A, // C1Imag 0.1: exp 0x3FB, frac 0x999..9A
        0x3F, 0xD0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // C2Real 0.25: exp 0x3FD
        0xBF, 0xB9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9A, // C2Imag -0.1
        0x40, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // N 3.0: exp 0x400, frac .1000
    ];
    bytes.shrink_to_fit();
    bytes
}

#[test]
fn parameter_golden_bytes_both_ways() {
    let golden = golden_parameter_bytes([0x00, 0x3C]); // Length 60
    assert_eq!(golden.len(), 60);
    assert_eq!(golden_parameter_value().encode().to_vec(), golden);
    let decoded = Parameter::decode(&golden).expect("golden Parameter decodes");
    assert!(decoded.bitwise_eq(&golden_parameter_value()));
    assert_eq!(
        Message::decode(&golden),
        Ok(Message::Parameter(golden_parameter_value()))
    );
}

#[test]
fn data_golden_bytes_both_ways() {
    let golden: Vec<u8> = vec![
        0x02, // Type: Data
        0x00, // Flags
        0x00, 0x20, // Length 32 = 16 + 4 * 4
        0x00, 0x00, 0x00, 0x05, // StartX 5
        0x00, 0x00, 0x00, 0x07, // StartY 7
        0x00, 0x00, 0x00, 0x04, // Points 4
        0x00, 0x00, 0x00, 0x00, // 0
        0x00, 0x00, 0x00, 0x01, // 1
        0x00, 0x00, 0x03, 0xE8, // 1000
        0xDE, 0xAD, 0xBE, 0xEF, // 0xDEADBEEF
    ];
    let value = Data::new(5, 7, vec![0, 1, 1000, 0xDEAD_BEEF]);
    assert_eq!(value.encode(), Ok(golden.clone()));
    assert_eq!(Data::decode(&golden), Ok(value.clone()));
    assert_eq!(Message::decode(&golden), Ok(Message::Data(value)));
}

#[test]
fn finalizer_golden_bytes_both_ways() {
    let golden: Vec<u8> = vec![
        0x02, // Type: Data
        0x00, // Flags
        0x00, 0x10, // Length 16
        0xFF, 0xFF, 0xFF, 0xFF, // StartX 0xFFFFFFFF
        0xFF, 0xFF, 0xFF, 0xFF, // StartY 0xFFFFFFFF
        0x00, 0x00, 0x00, 0x00, // Points 0
    ];
    assert_eq!(Data::finalizer().encode(), Ok(golden.clone()));
    let decoded = Data::decode(&golden).expect("finalizer decodes");
    assert!(decoded.is_finalizer());
    assert!(!Data::new(0xFFFF_FFFF, 0xFFFF_FFFF, vec![1]).is_finalizer());
    assert!(!Data::new(0, 0, vec![]).is_finalizer());
}

#[test]
fn cookie_golden_bytes_both_ways() {
    let mut golden: Vec<u8> = b"<FG-TD1>".to_vec(); // 3C 46 47 2D 54 44 31 3E
    assert_eq!(golden, [0x3C, 0x46, 0x47, 0x2D, 0x54, 0x44, 0x31, 0x3E]);
    golden.extend(golden_parameter_bytes([0x00, 0x04])); // rsplib's embedded Length = 4
    golden.extend([0x00, 0x00, 0x00, 0x11]); // CurrentX 17
    golden.extend([0x00, 0x00, 0x00, 0x03]); // CurrentY 3
    assert_eq!(golden.len(), 76);

    let cookie = Cookie {
        parameter: golden_parameter_value(),
        current_x: 17,
        current_y: 3,
    };
    assert_eq!(cookie.encode().to_vec(), golden);
    assert_eq!(Cookie::decode(&golden), Ok(cookie));

    // A cookie with the "correct" embedded Length 60 is accepted as well.
    let mut with_60 = golden.clone();
    with_60[11] = 0x3C;
    assert_eq!(Cookie::decode(&with_60), Ok(cookie));
    assert_eq!(cookie.pixels_done(), 3 * 400 + 17);
}

#[test]
fn parameter_decode_errors_are_typed() {
    let golden = golden_parameter_bytes([0x00, 0x3C]);
    assert_eq!(
        Parameter::decode(&golden[..3]),
        Err(DecodeError::Truncated {
            needed: 4,
            available: 3
        })
    );
    assert_eq!(
        Parameter::decode(&golden[..59]),
        Err(DecodeError::LengthMismatch {
            declared: 60,
            actual: 59
        })
    );
    let mut longer = golden.clone();
    longer.push(0);
    assert_eq!(
        Parameter::decode(&longer),
        Err(DecodeError::LengthMismatch {
            declared: 60,
            actual: 61
        })
    );
    // Length field consistent with the bytes but not with the layout.
    let mut short = golden[..56].to_vec();
    short[3] = 56;
    assert_eq!(
        Parameter::decode(&short),
        Err(DecodeError::BadParameterLength(56))
    );
    let mut as_data = golden.clone();
    as_data[0] = 0x02;
    assert_eq!(
        Parameter::decode(&as_data),
        Err(DecodeError::UnexpectedType {
            expected: 1,
            found: 2
        })
    );
    let mut unknown = golden.clone();
    unknown[0] = 0x07;
    assert_eq!(Message::decode(&unknown), Err(DecodeError::UnknownType(7)));
    // Flags are ignored.
    let mut flagged = golden;
    flagged[1] = 0xA5;
    assert_eq!(Parameter::decode(&flagged), Ok(golden_parameter_value()));
}

#[test]
fn data_decode_errors_are_typed() {
    let good = Data::new(1, 2, vec![9; 3])
        .encode()
        .expect("3 points encode");
    let mut wrong_count = good.clone();
    wrong_count[15] = 2; // Points 2, Length still 28
    assert_eq!(
        Data::decode(&wrong_count),
        Err(DecodeError::BadDataLength {
            length: 28,
            points: 2
        })
    );
    let mut huge = good.clone();
    huge[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        Data::decode(&huge),
        Err(DecodeError::TooManyPoints(u32::MAX))
    );
    let header_only = [0x02, 0x00, 0x00, 0x04];
    assert_eq!(
        Data::decode(&header_only),
        Err(DecodeError::Truncated {
            needed: 16,
            available: 4
        })
    );
    assert_eq!(
        Data::new(0, 0, vec![0; MAX_POINTS_PER_DATA + 1]).encode(),
        Err(EncodeError::TooManyPoints(325))
    );
    let full = Data::new(0, 0, vec![7; MAX_POINTS_PER_DATA]);
    let bytes = full.encode().expect("324 points encode");
    assert_eq!(bytes.len(), 1312);
    assert_eq!(Data::decode(&bytes), Ok(full));
}

#[test]
fn cookie_errors_are_typed() {
    let cookie = Cookie {
        parameter: golden_parameter_value(),
        current_x: 0,
        current_y: 0,
    };
    let good = cookie.encode();
    assert_eq!(Cookie::decode(&good[..75]), Err(CookieError::BadSize(75)));
    let mut bad_id = good;
    bad_id[6] = b'2';
    assert_eq!(Cookie::decode(&bad_id), Err(CookieError::BadId));
    let mut bad_type = good;
    bad_type[8] = 0x02;
    assert_eq!(
        Cookie::decode(&bad_type),
        Err(CookieError::NotAParameter(2))
    );
    let mut bad_length = good;
    bad_length[11] = 0x10;
    assert_eq!(
        Cookie::decode(&bad_length),
        Err(CookieError::BadEmbeddedLength(16))
    );

    let at = |x: u32, y: u32| {
        Cookie {
            current_x: x,
            current_y: y,
            ..cookie
        }
        .encode()
    };
    assert!(Cookie::decode(&at(399, 249)).is_ok());
    let end = Cookie::decode(&at(0, 250)).expect("the end position is valid");
    assert!(end.is_complete());
    // rsplib's "row just finished" position resumes at the next row.
    let wrapped = Cookie::decode(&at(400, 0)).expect("CurrentX = Width is normalised");
    assert_eq!((wrapped.current_x, wrapped.current_y), (0, 1));
    let wrapped = Cookie::decode(&at(u32::MAX, 249)).expect("normalised to the end");
    assert!(wrapped.is_complete());
    assert_eq!(
        Cookie::decode(&at(400, 250)),
        Err(CookieError::PositionOutsideView {
            x: 400,
            y: 250,
            width: 400,
            height: 250
        })
    );
    assert!(matches!(
        Cookie::decode(&at(1, 250)),
        Err(CookieError::PositionOutsideView { .. })
    ));

    let invalid = Cookie {
        parameter: Parameter {
            width: 70_000,
            ..golden_parameter_value()
        },
        current_x: 0,
        current_y: 0,
    };
    assert_eq!(
        Cookie::decode(&invalid.encode()),
        Err(CookieError::InvalidParameter(
            ParameterError::PictureTooLarge {
                width: 70_000,
                height: 250
            }
        ))
    );
    assert_eq!(COOKIE_LEN, 76);
}

#[test]
fn parameter_validation_limits() {
    let good = golden_parameter_value();
    assert_eq!(good.validate(), Ok(()));
    let limit = Parameter {
        width: 65_536,
        height: 65_536,
        max_iterations: 1_000_000,
        ..good
    };
    assert_eq!(limit.validate(), Ok(()));
    let cases = [
        (
            Parameter { width: 0, ..good },
            ParameterError::EmptyPicture {
                width: 0,
                height: 250,
            },
        ),
        (
            Parameter {
                height: 65_537,
                ..good
            },
            ParameterError::PictureTooLarge {
                width: 400,
                height: 65_537,
            },
        ),
        (
            Parameter {
                max_iterations: 1_000_001,
                ..good
            },
            ParameterError::TooManyIterations(1_000_001),
        ),
        (
            Parameter {
                algorithm: AlgorithmId(0),
                ..good
            },
            ParameterError::UnknownAlgorithm(0),
        ),
        (
            Parameter {
                c2_imag: f64::NAN,
                ..good
            },
            ParameterError::NonFiniteCoordinate,
        ),
        (
            Parameter {
                c1_real: f64::INFINITY,
                ..good
            },
            ParameterError::NonFiniteCoordinate,
        ),
        (
            Parameter {
                c1_real: -f64::MAX,
                c2_real: f64::MAX,
                ..good
            },
            ParameterError::NonFiniteStep,
        ),
        (
            Parameter {
                n: f64::NAN,
                ..good
            },
            ParameterError::NonFiniteExponent,
        ),
    ];
    for (parameter, error) in cases {
        assert_eq!(parameter.validate(), Err(error), "{parameter:?}");
    }
    // N is irrelevant to the plain Mandelbrot.
    let plain = Parameter {
        algorithm: AlgorithmId::MANDELBROT,
        n: f64::NAN,
        ..good
    };
    assert_eq!(plain.validate(), Ok(()));
}

fn any_f64() -> impl Strategy<Value = f64> {
    any::<u64>().prop_map(f64::from_bits)
}

fn arb_parameter() -> impl Strategy<Value = Parameter> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        [any_f64(), any_f64(), any_f64(), any_f64(), any_f64()],
    )
        .prop_map(|(width, height, max_iterations, algorithm, d)| Parameter {
            width,
            height,
            max_iterations,
            algorithm: AlgorithmId(algorithm),
            c1_real: d[0],
            c1_imag: d[1],
            c2_real: d[2],
            c2_imag: d[3],
            n: d[4],
        })
}

fn arb_data() -> impl Strategy<Value = Data> {
    (
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(any::<u32>(), 0..=MAX_POINTS_PER_DATA),
    )
        .prop_map(|(x, y, points)| Data::new(x, y, points))
}

/// Bytes that start like an FGP message, often with consistent Length and Points fields, so
/// the fuzzing reaches past the header checks.
fn plausible_bytes() -> impl Strategy<Value = Vec<u8>> {
    let body_len = prop_oneof![
        Just(56usize),
        (0usize..=330).prop_map(|points| 12 + 4 * points),
        0usize..1400,
    ];
    (
        0u8..4,
        any::<u8>(),
        body_len.prop_flat_map(|len| prop::collection::vec(any::<u8>(), len)),
        prop::bool::ANY,
        prop::bool::ANY,
    )
        .prop_map(|(kind, flags, mut body, fix_length, fix_points)| {
            let total = body.len() + 4;
            let length = if fix_length {
                total as u16
            } else {
                body.len() as u16
            };
            if kind == 2 && fix_points && body.len() >= 12 {
                let points = ((body.len() - 12) / 4) as u32;
                body[8..12].copy_from_slice(&points.to_be_bytes());
            }
            let mut bytes = vec![kind, flags];
            bytes.extend(length.to_be_bytes());
            bytes.append(&mut body);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1500)) {
        let _ = Message::decode(&bytes);
        let _ = Parameter::decode(&bytes);
        // The view accepts exactly what the owned decoder accepts, with the same points.
        prop_assert_eq!(DataView::decode(&bytes).map(|view| view.to_data()), Data::decode(&bytes));
        let _ = Cookie::decode(&bytes);
    }

    #[test]
    fn plausible_bytes_decode_to_their_own_encoding(bytes in plausible_bytes()) {
        // Whatever decodes re-encodes to the same bytes, except Flags (sent as 0).
        let decoded = Message::decode(&bytes);
        let consistent = bytes.len() >= 4
            && usize::from(u16::from_be_bytes([bytes[2], bytes[3]])) == bytes.len()
            && (bytes[0] == 1 && bytes.len() == 60
                || bytes[0] == 2
                    && bytes.len() >= 16
                    && bytes.len() <= 1312
                    && u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize
                        == (bytes.len() - 16) / 4
                    && bytes.len() % 4 == 0);
        prop_assert_eq!(decoded.is_ok(), consistent, "{:?}", decoded);
        if let Ok(message) = decoded {
            let mut expected = bytes.clone();
            expected[1] = 0;
            prop_assert_eq!(message.encode().expect("decoded messages encode"), expected);
        }
    }

    #[test]
    fn cookie_fuzz_never_panics(mut bytes in prop::collection::vec(any::<u8>(), 76..=76), keep_id in prop::bool::ANY) {
        if keep_id {
            bytes[..8].copy_from_slice(b"<FG-TD1>");
            bytes[8] = 1;
        }
        if let Ok(cookie) = Cookie::decode(&bytes) {
            prop_assert!(cookie.position_is_valid());
            prop_assert!(cookie.parameter.validate_computable().is_ok());
        }
    }

    #[test]
    fn parameter_roundtrip_bitwise(parameter in arb_parameter()) {
        let decoded = Parameter::decode(&parameter.encode()).expect("encoded Parameter decodes");
        prop_assert!(decoded.bitwise_eq(&parameter));
        let message = Message::decode(&Message::Parameter(parameter).encode().expect("encodes"))
            .expect("decodes");
        match message {
            Message::Parameter(decoded) => prop_assert!(decoded.bitwise_eq(&parameter)),
            other => prop_assert!(false, "decoded as {other:?}"),
        }
    }

    #[test]
    fn data_roundtrip(data in arb_data()) {
        let bytes = data.encode().expect("at most 324 points encode");
        prop_assert_eq!(bytes.len(), 16 + 4 * data.points.len());
        let view = DataView::decode(&bytes).expect("encoded Data decodes as a view");
        prop_assert_eq!((view.start_x, view.start_y, view.len()), (data.start_x, data.start_y, data.points.len()));
        prop_assert_eq!(view.is_finalizer(), data.is_finalizer());
        prop_assert_eq!(view.points().collect::<Vec<_>>(), data.points.clone());
        let skip = data.points.len() / 3;
        let mut copied = vec![7; data.points.len() - skip + 1];
        view.copy_points_to(skip, &mut copied);
        prop_assert_eq!(&copied[..copied.len() - 1], &data.points[skip..]);
        prop_assert_eq!(copied.last(), Some(&7), "only as many as the message has");
        prop_assert_eq!(Message::decode(&bytes), Ok(Message::Data(data)));
    }

    #[test]
    fn cookie_roundtrip(
        width in 1u32..=65_536,
        height in 1u32..=65_536,
        max_iterations in 0u32..=1_000_000,
        n in -100.0f64..100.0,
        x_fraction in 0.0f64..1.0,
        y_fraction in 0.0f64..1.0,
        corners in [-4.0f64..4.0, -4.0f64..4.0, -4.0f64..4.0, -4.0f64..4.0],
        mandelbrot_n in prop::bool::ANY,
    ) {
        let parameter = Parameter {
            width,
            height,
            max_iterations,
            algorithm: if mandelbrot_n { AlgorithmId::MANDELBROT_N } else { AlgorithmId::MANDELBROT },
            c1_real: corners[0],
            c1_imag: corners[1],
            c2_real: corners[2],
            c2_imag: corners[3],
            n,
        };
        let cookie = Cookie {
            parameter,
            current_x: (x_fraction * f64::from(width)) as u32,
            current_y: (y_fraction * f64::from(height)) as u32,
        };
        let decoded = Cookie::decode(&cookie.encode()).expect("valid cookie decodes");
        prop_assert!(decoded.bitwise_eq(&cookie));
    }
}

#[test]
fn unknown_algorithms_are_computable_as_the_test_pattern() {
    let unknown = Parameter {
        algorithm: AlgorithmId(7),
        ..golden_parameter_value()
    };
    assert_eq!(unknown.validate(), Err(ParameterError::UnknownAlgorithm(7)));
    assert_eq!(unknown.validate_computable(), Ok(()));
    // A cookie for it resumes; one beyond rsplib's limits still does not.
    let cookie = Cookie::start(unknown);
    assert!(Cookie::decode(&cookie.encode()).is_ok());
    let too_big = Cookie::start(Parameter {
        max_iterations: 1_000_001,
        ..unknown
    });
    assert_eq!(
        Cookie::decode(&too_big.encode()),
        Err(CookieError::InvalidParameter(
            ParameterError::TooManyIterations(1_000_001)
        ))
    );
}
