//! The Fractal Generator Protocol (FGP) of rsplib: messages, the `<FG-TD1>` cookie,
//! Mandelbrot kernels, tiling and presets.

pub mod cookie;
pub mod message;
pub mod tiling;
pub mod palette;
