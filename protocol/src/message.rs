//! FGP messages, byte-compatible with rsplib's `fractalgeneratorpackets.h` (all big-endian).

/// SCTP payload protocol identifier of FGP.
pub const PPID_FGP: u32 = 32;
/// Most points one Data message carries (rsplib's `FGD_MAX_POINTS`).
pub const MAX_POINTS_PER_DATA: usize = 324;

/// Fractal algorithm identifiers of the Parameter message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AlgorithmId(pub u32);

impl AlgorithmId {
    /// z <- z^2 - c (rsplib's sign), escape at |z|^2 >= 2.
    pub const MANDELBROT: AlgorithmId = AlgorithmId(1);
    /// z <- z^N - c with real N.
    pub const MANDELBROT_N: AlgorithmId = AlgorithmId(2);
}

/// FGP Parameter (type 0x01, 60 bytes): what to compute.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Parameter {
    pub width: u32,
    pub height: u32,
    pub max_iterations: u32,
    pub algorithm: AlgorithmId,
    pub c1_real: f64,
    pub c1_imag: f64,
    pub c2_real: f64,
    pub c2_imag: f64,
    pub n: f64,
}

/// FGP Data (type 0x02): iteration counts of consecutive pixels in row-major order, starting at
/// (`start_x`, `start_y`). The finalizer has no points and start = (0xFFFFFFFF, 0xFFFFFFFF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    pub start_x: u32,
    pub start_y: u32,
    pub points: Vec<u32>,
}
