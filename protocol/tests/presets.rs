//! `.fsf` presets: parsing, defaults, errors, writing, the built-in set and a sanity check that
//! every built-in view looks interesting under rsplib's formula.

use fractal_protocol::message::{AlgorithmId, Parameter};
use fractal_protocol::preset::{FsfError, Preset, PresetError};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Our own sample in rsplib's layout, with its long exact decimal expansions.
const SAMPLE: &str = r#"<!DOCTYPE XMLFractalSave>
<FractalV1>
 <Algorithm>
  <AlgorithmName>MandelbrotN</AlgorithmName>
  <C1Real>-4.2500000000000000000000000000000000000000000000000000000000000000e-01</C1Real>
  <C1Imag>1.0000000000000000555111512312578270211815834045410156250000000000e-01</C1Imag>
  <C2Real>3.7500000000000000000000000000000000000000000000000000000000000000e-01</C2Real>
  <C2Imag>-2.5000000000000000000000000000000000000000000000000000000000000000e-01</C2Imag>
  <Useroptions>
   <MaxIterations>1000</MaxIterations>
   <N>7</N>
  </Useroptions>
 </Algorithm>
 <ColorScheme>
  <ColorSchemeName>SimpleHSV</ColorSchemeName>
 </ColorScheme>
 <Resolution>800*600</Resolution>
</FractalV1>
"#;

#[test]
fn parses_rsplib_layout() {
    let preset = Preset::from_fsf("sample", SAMPLE).expect("sample parses");
    assert_eq!(preset.name, "sample");
    assert_eq!(preset.algorithm, AlgorithmId::MANDELBROT_N);
    assert_eq!(preset.c1_real, -0.425);
    assert_eq!(preset.c1_imag, 0.1);
    assert_eq!(preset.c2_real, 0.375);
    assert_eq!(preset.c2_imag, -0.25);
    assert_eq!(preset.max_iterations, 1000);
    assert_eq!(preset.n, 7.0);
}

#[test]
fn missing_fields_take_rsplib_defaults() {
    let preset = Preset::from_fsf("bare", "<FractalV1/>").expect("empty save parses");
    assert_eq!(
        preset,
        Preset {
            name: "bare".to_owned(),
            ..Preset::default()
        }
    );
    assert_eq!(
        (
            preset.c1_real,
            preset.c1_imag,
            preset.c2_real,
            preset.c2_imag
        ),
        (-1.5, 1.5, 1.5, -1.5)
    );
    assert_eq!((preset.max_iterations, preset.n), (1024, 2.0));
    assert_eq!(preset.algorithm, AlgorithmId::MANDELBROT);

    let partial = "<FractalV1><Algorithm><AlgorithmName>Julia</AlgorithmName>\
                   <C1Real>0.5</C1Real><Useroptions><N>4</N></Useroptions></Algorithm></FractalV1>";
    let preset = Preset::from_fsf("partial", partial).expect("partial save parses");
    assert_eq!(
        preset.algorithm,
        AlgorithmId::MANDELBROT,
        "unknown name -> Mandelbrot"
    );
    assert_eq!(preset.c1_real, 0.5);
    assert_eq!(preset.c1_imag, 1.5);
    assert_eq!(preset.n, 4.0);
    assert_eq!(preset.max_iterations, 1024);
}

#[test]
fn malformed_documents_are_typed_errors() {
    assert!(matches!(
        Preset::from_fsf("x", "<FractalV1><Algorithm></FractalV1>"),
        Err(FsfError::Xml(_))
    ));
    assert!(matches!(Preset::from_fsf("x", ""), Err(FsfError::Xml(_))));
    assert_eq!(
        Preset::from_fsf("x", "<html/>"),
        Err(FsfError::NotFractalSave("html".to_owned()))
    );
    assert_eq!(
        Preset::from_fsf("x", "<FractalV1><C1Real>abc</C1Real></FractalV1>"),
        Err(FsfError::BadNumber {
            field: "C1Real",
            text: "abc".to_owned()
        })
    );
    assert!(matches!(
        Preset::from_fsf("x", "<FractalV1><C2Imag></C2Imag></FractalV1>"),
        Err(FsfError::BadNumber {
            field: "C2Imag",
            ..
        })
    ));
    assert!(matches!(
        Preset::from_fsf("x", "<FractalV1><C1Imag>inf</C1Imag></FractalV1>"),
        Err(FsfError::OutOfRange {
            field: "C1Imag",
            ..
        })
    ));
    assert!(matches!(
        Preset::from_fsf(
            "x",
            "<FractalV1><Useroptions><MaxIterations>1000001</MaxIterations></Useroptions></FractalV1>"
        ),
        Err(FsfError::OutOfRange {
            field: "MaxIterations",
            ..
        })
    ));
    assert!(matches!(
        Preset::from_fsf(
            "x",
            "<FractalV1><Useroptions><MaxIterations>-5</MaxIterations></Useroptions></FractalV1>"
        ),
        Err(FsfError::BadNumber {
            field: "MaxIterations",
            ..
        })
    ));
    // Entity declarations (expansion bombs) are refused; undeclared entities are XML errors.
    let bomb = r#"<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]><FractalV1>&b;</FractalV1>"#;
    assert_eq!(
        Preset::from_fsf("x", bomb),
        Err(FsfError::EntityDeclaration)
    );
    assert!(matches!(
        Preset::from_fsf("x", "<!DOCTYPE XMLFractalSave><FractalV1>&b;</FractalV1>"),
        Err(FsfError::Xml(_))
    ));
}

#[test]
fn fsf_writing_roundtrips() {
    let preset = Preset {
        name: "mine".to_owned(),
        algorithm: AlgorithmId::MANDELBROT_N,
        c1_real: 0.1 + 0.2,
        c1_imag: -1e-300,
        c2_real: 1.0 / 3.0,
        c2_imag: 123456.789,
        max_iterations: 777,
        n: 2.5,
    };
    let text = preset.to_fsf();
    assert!(text.starts_with("<!DOCTYPE XMLFractalSave>\n<FractalV1>"));
    assert!(text.contains("<AlgorithmName>MandelbrotN</AlgorithmName>"));
    assert_eq!(Preset::from_fsf("mine", &text), Ok(preset));
}

#[test]
fn files_and_directories() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let good = Preset::by_name("seahorse-valley").expect("built-in preset");
    good.save_fsf_file(dir.path().join("b-second.fsf"))
        .expect("save");
    Preset::default()
        .save_fsf_file(dir.path().join("a-first.FSF"))
        .expect("save");
    std::fs::write(dir.path().join("c-broken.fsf"), "<FractalV1>").expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not a preset").expect("write");
    std::fs::write(dir.path().join("d-huge.fsf"), vec![b' '; 70_000]).expect("write");

    let loaded = Preset::from_fsf_file(dir.path().join("b-second.fsf")).expect("load");
    assert_eq!(
        loaded,
        Preset {
            name: "b-second".to_owned(),
            ..good
        }
    );

    let all = Preset::from_dir(dir.path()).expect("directory reads");
    let names: Vec<&str> = all.presets.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a-first", "b-second"]);
    assert_eq!(all.failures.len(), 2);
    assert!(matches!(all.failures[0], PresetError::Invalid { .. }));
    assert!(matches!(all.failures[1], PresetError::TooLarge { .. }));
    assert!(matches!(
        Preset::from_dir(dir.path().join("missing")),
        Err(PresetError::Io { .. })
    ));
}

#[test]
fn builtin_presets() {
    let presets = Preset::builtin();
    assert_eq!(presets.len(), 10, "every embedded file parses");
    let mut names: Vec<&str> = presets.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), presets.len());
    let n_values: Vec<f64> = presets
        .iter()
        .filter(|p| p.algorithm == AlgorithmId::MANDELBROT_N)
        .map(|p| p.n)
        .collect();
    assert!(n_values.contains(&3.0) && n_values.contains(&5.0));
    for preset in &presets {
        assert_eq!(
            preset.parameter(400, 250).validate(),
            Ok(()),
            "{}",
            preset.name
        );
        assert_eq!(Preset::by_name(&preset.name).as_ref(), Some(preset));
        // The file on disk is the one embedded.
        let path = format!(
            "{}/../assets/presets/{}.fsf",
            env!("CARGO_MANIFEST_DIR"),
            preset.name
        );
        assert_eq!(Preset::from_fsf_file(path).ok().as_ref(), Some(preset));
    }
    assert_eq!(Preset::by_name("no-such-view"), None);
    // Every file in assets/presets is embedded.
    let on_disk = Preset::from_dir(format!("{}/../assets/presets", env!("CARGO_MANIFEST_DIR")))
        .expect("assets/presets reads");
    assert!(on_disk.failures.is_empty(), "{:?}", on_disk.failures);
    let mut embedded = presets.clone();
    embedded.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(on_disk.presets, embedded);

    let mut rng = StdRng::seed_from_u64(7);
    let picks: Vec<String> = (0..200).map(|_| Preset::random(&mut rng).name).collect();
    assert!(picks.iter().all(|name| Preset::by_name(name).is_some()));
    let mut distinct = picks.clone();
    distinct.sort();
    distinct.dedup();
    assert!(
        distinct.len() >= 8,
        "random choice covers the set: {distinct:?}"
    );
}

#[test]
fn parameter_keeps_aspect_when_asked() {
    let preset = Preset::by_name("full-set").expect("built-in preset");
    let exact = preset.parameter(400, 250);
    assert_eq!(
        (exact.c1_real, exact.c1_imag, exact.c2_real, exact.c2_imag),
        (
            preset.c1_real,
            preset.c1_imag,
            preset.c2_real,
            preset.c2_imag
        )
    );
    for (width, height) in [(400, 250), (250, 400), (1000, 100), (64, 64)] {
        let square = preset.parameter_keep_aspect(width, height);
        let (step_x, step_y) = square.steps();
        assert!(
            (step_x.abs() / step_y.abs() - 1.0).abs() < 1e-9,
            "{width}x{height}"
        );
        // The original view stays inside, orientation kept.
        assert!(square.c1_real <= preset.c1_real && square.c2_real >= preset.c2_real);
        assert!(square.c1_imag >= preset.c1_imag && square.c2_imag <= preset.c2_imag);
    }
}

/// rsplib's escape-time loop (z <- z^N - c, escape at |z|^2 >= 2), scalar, for the sanity check.
fn escape_time(parameter: &Parameter, x: u32, y: u32) -> u32 {
    let (c_real, c_imag) = fractal_protocol::tiling::pixel_c(parameter, x, y);
    let (mut z_real, mut z_imag) = (0.0f64, 0.0f64);
    for i in 0..parameter.max_iterations {
        let (power_real, power_imag) = if parameter.algorithm == AlgorithmId::MANDELBROT_N {
            if z_real == 0.0 && z_imag == 0.0 {
                (0.0, 0.0)
            } else {
                let log_abs = z_real.hypot(z_imag).ln() * parameter.n;
                let angle = z_imag.atan2(z_real) * parameter.n;
                (log_abs.exp() * angle.cos(), log_abs.exp() * angle.sin())
            }
        } else {
            (z_real * z_real - z_imag * z_imag, 2.0 * z_real * z_imag)
        };
        z_real = power_real - c_real;
        z_imag = power_imag - c_imag;
        if z_real * z_real + z_imag * z_imag >= 2.0 {
            return i;
        }
    }
    parameter.max_iterations
}

#[test]
fn builtin_views_are_interesting_under_rsplibs_formula() {
    for preset in Preset::builtin() {
        let parameter = preset.parameter(64, 40);
        let mut values = Vec::new();
        for y in 0..parameter.height {
            for x in 0..parameter.width {
                values.push(escape_time(&parameter, x, y));
            }
        }
        let total = values.len() as f64;
        let inside = values
            .iter()
            .filter(|&&v| v == parameter.max_iterations)
            .count() as f64;
        let immediate = values.iter().filter(|&&v| v == 0).count() as f64;
        values.sort_unstable();
        values.dedup();
        let name = &preset.name;
        assert!(
            values.len() >= 15,
            "{name}: only {} distinct values",
            values.len()
        );
        assert!(
            inside / total >= 0.05,
            "{name}: set not visible ({inside} inside)"
        );
        assert!(inside / total <= 0.9, "{name}: mostly inside ({inside})");
        assert!(
            immediate / total <= 0.5,
            "{name}: mostly empty ({immediate})"
        );
    }
}

proptest! {
    #[test]
    fn fsf_parser_never_panics(text in ".{0,400}") {
        let _ = Preset::from_fsf("fuzz", &text);
    }

    #[test]
    fn fsf_parser_survives_mangled_saves(cut in 0usize..800, insert in ".{0,20}") {
        let mut text = SAMPLE.to_owned();
        let cut = cut.min(text.len());
        if text.is_char_boundary(cut) {
            text.insert_str(cut, &insert);
        }
        let _ = Preset::from_fsf("fuzz", &text);
    }

    #[test]
    fn fsf_roundtrip(
        corners in [-1e6f64..1e6, -1e6f64..1e6, -1e6f64..1e6, -1e6f64..1e6],
        max_iterations in 0u32..=1_000_000,
        n in -50.0f64..50.0,
        mandelbrot_n in prop::bool::ANY,
    ) {
        let preset = Preset {
            name: "p".to_owned(),
            algorithm: if mandelbrot_n { AlgorithmId::MANDELBROT_N } else { AlgorithmId::MANDELBROT },
            c1_real: corners[0],
            c1_imag: corners[1],
            c2_real: corners[2],
            c2_imag: corners[3],
            max_iterations,
            n,
        };
        let parsed = Preset::from_fsf("p", &preset.to_fsf()).expect("written presets parse");
        let bits = |p: &Preset| [p.c1_real, p.c1_imag, p.c2_real, p.c2_imag, p.n].map(f64::to_bits);
        prop_assert_eq!(bits(&parsed), bits(&preset));
        prop_assert_eq!(parsed, preset);
    }
}
