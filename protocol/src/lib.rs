//! The Fractal Generator Protocol (FGP) of rsplib: messages, the `<FG-TD1>` cookie,
//! Mandelbrot kernels, tiling and presets.

pub mod kernel;
pub mod message;
