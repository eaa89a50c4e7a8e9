//! Fractal views ("presets") in rsplib's `.fsf` format, and the built-in set.
//!
//! An `.fsf` file is XML (`<!DOCTYPE XMLFractalSave>`, root `FractalV1`):
//!
//! ```xml
//! <FractalV1>
//!  <Algorithm>
//!   <AlgorithmName>MandelbrotN</AlgorithmName>
//!   <C1Real>..</C1Real> <C1Imag>..</C1Imag> <C2Real>..</C2Real> <C2Imag>..</C2Imag>
//!   <Useroptions><MaxIterations>1000</MaxIterations><N>3</N></Useroptions>
//!  </Algorithm>
//!  <ColorScheme><ColorSchemeName>SimpleHSV</ColorSchemeName></ColorScheme>
//!  <Resolution>800*600</Resolution>
//! </FractalV1>
//! ```
//!
//! Reading follows rsplib's `fractalpooluser.cc` (first element of each name anywhere in the
//! document; MaxIterations and N from the first `Useroptions`; `ColorScheme` and `Resolution`
//! ignored; an unknown AlgorithmName means Mandelbrot) with these choices:
//!
//! * A missing element takes rsplib's job default: C1 = (-1.5, 1.5), C2 = (1.5, -1.5), N = 2,
//!   MaxIterations = 1024, Mandelbrot. (rsplib itself reads a missing coordinate as 0.0 and a
//!   missing MaxIterations as 123; neither occurs in its files, which all give every field.)
//! * A present but unparsable or out-of-range value (empty text, NaN or infinite numbers,
//!   MaxIterations above 1,000,000) is an error rather than rsplib's silent 0.
//! * The root element must be `FractalV1`; malformed XML and entity declarations are errors.
//!
//! Presets are named after their file name without `.fsf`.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand::seq::IndexedRandom;
use thiserror::Error;

use crate::message::{AlgorithmId, MAX_ITERATIONS_LIMIT, Parameter};

/// Largest `.fsf` file read (real ones are under 1 KiB).
pub const MAX_FSF_BYTES: u64 = 64 * 1024;
/// Most XML nodes parsed from one `.fsf` document.
const MAX_XML_NODES: u32 = 4096;

/// The built-in presets: our own views in `assets/presets/`, embedded at compile time.
const BUILTIN: [(&str, &str); 10] = [
    (
        "full-set",
        include_str!("../../assets/presets/full-set.fsf"),
    ),
    (
        "seahorse-valley",
        include_str!("../../assets/presets/seahorse-valley.fsf"),
    ),
    (
        "deep-minibrot",
        include_str!("../../assets/presets/deep-minibrot.fsf"),
    ),
    (
        "elephant-valley",
        include_str!("../../assets/presets/elephant-valley.fsf"),
    ),
    (
        "triple-spiral-valley",
        include_str!("../../assets/presets/triple-spiral-valley.fsf"),
    ),
    (
        "period-three-bulb",
        include_str!("../../assets/presets/period-three-bulb.fsf"),
    ),
    (
        "cubic-full",
        include_str!("../../assets/presets/cubic-full.fsf"),
    ),
    (
        "cubic-valley",
        include_str!("../../assets/presets/cubic-valley.fsf"),
    ),
    (
        "quintic-full",
        include_str!("../../assets/presets/quintic-full.fsf"),
    ),
    (
        "quintic-valley",
        include_str!("../../assets/presets/quintic-valley.fsf"),
    ),
];

/// A fractal view: algorithm, corners and iteration limit, without a picture size.
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    pub name: String,
    pub algorithm: AlgorithmId,
    /// Top-left corner (pixel (0, 0)).
    pub c1_real: f64,
    pub c1_imag: f64,
    /// Bottom-right corner.
    pub c2_real: f64,
    pub c2_imag: f64,
    pub max_iterations: u32,
    /// Exponent of MandelbrotN (2 for Mandelbrot).
    pub n: f64,
}

/// Why the content of an `.fsf` document is unusable.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum FsfError {
    /// Not well-formed XML (or too many nodes).
    #[error("malformed XML: {0}")]
    Xml(#[from] roxmltree::Error),
    /// The document declares entities (refused to rule out expansion bombs).
    #[error("entity declarations are not allowed")]
    EntityDeclaration,
    /// Well-formed XML that is not a fractal save.
    #[error("root element is <{0}>, expected <FractalV1>")]
    NotFractalSave(String),
    /// A number that does not parse.
    #[error("{field}: cannot parse {text:?} as a number")]
    BadNumber { field: &'static str, text: String },
    /// A number outside what a PE accepts.
    #[error("{field}: {text:?} is out of range")]
    OutOfRange { field: &'static str, text: String },
}

/// Why a preset file or directory could not be read.
#[derive(Debug, Error)]
pub enum PresetError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: larger than {MAX_FSF_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Invalid { path: PathBuf, source: FsfError },
}

/// The presets of a directory, and the files that failed.
#[derive(Debug, Default)]
pub struct PresetDir {
    /// Sorted by file name.
    pub presets: Vec<Preset>,
    pub failures: Vec<PresetError>,
}

impl Default for Preset {
    /// rsplib's job defaults: the full set at 1024 iterations.
    fn default() -> Preset {
        Preset {
            name: "default".to_owned(),
            algorithm: AlgorithmId::MANDELBROT,
            c1_real: -1.5,
            c1_imag: 1.5,
            c2_real: 1.5,
            c2_imag: -1.5,
            max_iterations: 1024,
            n: 2.0,
        }
    }
}

impl Preset {
    /// Parses an `.fsf` document (see the module docs for defaults and errors).
    pub fn from_fsf(name: &str, xml: &str) -> Result<Preset, FsfError> {
        // rsplib's files carry `<!DOCTYPE XMLFractalSave>`, so DTDs must parse; entity
        // declarations are refused outright, which rules out entity expansion bombs.
        if xml.contains("<!ENTITY") {
            return Err(FsfError::EntityDeclaration);
        }
        let options = roxmltree::ParsingOptions {
            allow_dtd: true,
            nodes_limit: MAX_XML_NODES,
            ..roxmltree::ParsingOptions::default()
        };
        let document = roxmltree::Document::parse_with_options(xml, options)?;
        let root = document.root_element();
        if root.tag_name().name() != "FractalV1" {
            return Err(FsfError::NotFractalSave(root.tag_name().name().to_owned()));
        }
        let element = |tag: &str| {
            root.descendants()
                .find(|node| node.is_element() && node.tag_name().name() == tag)
        };

        let mut preset = Preset {
            name: name.to_owned(),
            ..Preset::default()
        };
        if let Some(node) = element("AlgorithmName") {
            preset.algorithm = match node.text().unwrap_or("").trim() {
                "MandelbrotN" => AlgorithmId::MANDELBROT_N,
                _ => AlgorithmId::MANDELBROT,
            };
        }
        let coordinates: [(&'static str, &mut f64); 4] = [
            ("C1Real", &mut preset.c1_real),
            ("C1Imag", &mut preset.c1_imag),
            ("C2Real", &mut preset.c2_real),
            ("C2Imag", &mut preset.c2_imag),
        ];
        for (field, slot) in coordinates {
            if let Some(node) = element(field) {
                *slot = parse_finite(field, node.text().unwrap_or(""))?;
            }
        }
        if let Some(options) = element("Useroptions") {
            for child in options.children().filter(|node| node.is_element()) {
                let text = child.text().unwrap_or("");
                match child.tag_name().name() {
                    "MaxIterations" => preset.max_iterations = parse_iterations(text)?,
                    "N" => preset.n = parse_finite("N", text)?,
                    _ => {}
                }
            }
        }
        Ok(preset)
    }

    /// Writes the preset as an `.fsf` document rsplib's pool user can read. Doubles are written
    /// in Rust's shortest round-trip form, so reading it back gives the same bits.
    pub fn to_fsf(&self) -> String {
        let algorithm = self.algorithm.name().unwrap_or("Mandelbrot");
        format!(
            "<!DOCTYPE XMLFractalSave>\n\
             <FractalV1>\n \
             <Algorithm>\n  \
             <AlgorithmName>{algorithm}</AlgorithmName>\n  \
             <C1Real>{:?}</C1Real>\n  \
             <C1Imag>{:?}</C1Imag>\n  \
             <C2Real>{:?}</C2Real>\n  \
             <C2Imag>{:?}</C2Imag>\n  \
             <Useroptions>\n   \
             <MaxIterations>{}</MaxIterations>\n   \
             <N>{:?}</N>\n  \
             </Useroptions>\n \
             </Algorithm>\n \
             <ColorScheme>\n  \
             <ColorSchemeName>SimpleHSV</ColorSchemeName>\n \
             </ColorScheme>\n \
             <Resolution>800*500</Resolution>\n\
             </FractalV1>\n",
            self.c1_real, self.c1_imag, self.c2_real, self.c2_imag, self.max_iterations, self.n,
        )
    }

    /// Reads an `.fsf` file; the preset is named after the file name without extension.
    pub fn from_fsf_file(path: impl AsRef<Path>) -> Result<Preset, PresetError> {
        let path = path.as_ref();
        let io_error = |source| PresetError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let mut text = String::new();
        file.take(MAX_FSF_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io_error)?;
        if text.len() as u64 > MAX_FSF_BYTES {
            return Err(PresetError::TooLarge {
                path: path.to_owned(),
            });
        }
        let name = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        Preset::from_fsf(&name, &text).map_err(|source| PresetError::Invalid {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the preset to an `.fsf` file.
    pub fn save_fsf_file(&self, path: impl AsRef<Path>) -> Result<(), PresetError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_fsf()).map_err(|source| PresetError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads every `*.fsf` file of a directory (sorted by file name, like rsplib's `QDir`);
    /// files that fail are listed in [`PresetDir::failures`] instead of aborting.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<PresetDir, PresetError> {
        let dir = dir.as_ref();
        let io_error = |source| PresetError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error)? {
            let path = entry.map_err(io_error)?.path();
            let is_fsf = path
                .extension()
                .is_some_and(|extension| extension.eq_ignore_ascii_case("fsf"));
            if is_fsf && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let mut result = PresetDir::default();
        for path in paths {
            match Preset::from_fsf_file(&path) {
                Ok(preset) => result.presets.push(preset),
                Err(error) => result.failures.push(error),
            }
        }
        Ok(result)
    }

    /// The built-in presets (`assets/presets/*.fsf`, embedded).
    pub fn builtin() -> Vec<Preset> {
        BUILTIN
            .iter()
            .filter_map(|(name, xml)| Preset::from_fsf(name, xml).ok())
            .collect()
    }

    /// The built-in preset with this name.
    pub fn by_name(name: &str) -> Option<Preset> {
        Preset::builtin()
            .into_iter()
            .find(|preset| preset.name == name)
    }

    /// A random built-in preset (rsplib picks a random file per picture).
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Preset {
        Preset::builtin().choose(rng).cloned().unwrap_or_default()
    }

    /// The request for a `width` x `height` picture of exactly this view (rsplib's behaviour:
    /// the view is stretched to the picture).
    pub fn parameter(&self, width: u32, height: u32) -> Parameter {
        Parameter {
            width,
            height,
            max_iterations: self.max_iterations,
            algorithm: self.algorithm,
            c1_real: self.c1_real,
            c1_imag: self.c1_imag,
            c2_real: self.c2_real,
            c2_imag: self.c2_imag,
            n: self.n,
        }
    }

    /// Like [`Preset::parameter`], but widens the view around its centre along one axis so
    /// that pixels are square and nothing of the view is cut off.
    pub fn parameter_keep_aspect(&self, width: u32, height: u32) -> Parameter {
        let exact = self.parameter(width, height);
        let span_real = self.c2_real - self.c1_real;
        let span_imag = self.c2_imag - self.c1_imag;
        if width == 0 || height == 0 || span_real == 0.0 || span_imag == 0.0 {
            return exact;
        }
        let picture_ratio = f64::from(width) / f64::from(height);
        let view_ratio = (span_real / span_imag).abs();
        let (centre_real, centre_imag) = (
            self.c1_real + span_real / 2.0,
            self.c1_imag + span_imag / 2.0,
        );
        let (half_real, half_imag) = if view_ratio < picture_ratio {
            let wider = span_imag.abs() * picture_ratio * span_real.signum();
            (wider / 2.0, span_imag / 2.0)
        } else {
            let taller = span_real.abs() / picture_ratio * span_imag.signum();
            (span_real / 2.0, taller / 2.0)
        };
        Parameter {
            c1_real: centre_real - half_real,
            c2_real: centre_real + half_real,
            c1_imag: centre_imag - half_imag,
            c2_imag: centre_imag + half_imag,
            ..exact
        }
    }
}

/// Parses a finite double (surrounding whitespace ignored).
fn parse_finite(field: &'static str, text: &str) -> Result<f64, FsfError> {
    let value: f64 = text.trim().parse().map_err(|_| FsfError::BadNumber {
        field,
        text: text.to_owned(),
    })?;
    if !value.is_finite() {
        return Err(FsfError::OutOfRange {
            field,
            text: text.to_owned(),
        });
    }
    Ok(value)
}

/// Parses MaxIterations: an integer from 0 to 1,000,000.
fn parse_iterations(text: &str) -> Result<u32, FsfError> {
    let field = "MaxIterations";
    let value: u64 = text.trim().parse().map_err(|_| FsfError::BadNumber {
        field,
        text: text.to_owned(),
    })?;
    u32::try_from(value)
        .ok()
        .filter(|&value| value <= MAX_ITERATIONS_LIMIT)
        .ok_or(FsfError::OutOfRange {
            field,
            text: text.to_owned(),
        })
}
