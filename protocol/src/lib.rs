//! The Fractal Generator Protocol (FGP) of rsplib: messages, the `<FG-TD1>` cookie,
//! Mandelbrot kernels, tiling, presets and palettes.

pub mod cookie;
pub mod kernel;
pub mod message;
pub mod palette;
pub mod preset;
pub mod tiling;
