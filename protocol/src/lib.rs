//! rsplib's application protocols: the Fractal Generator Protocol (FGP: messages, the
//! `<FG-TD1>` cookie, Mandelbrot kernels, tiling, presets, palettes) and CalcApp ([`calcapp`]).

pub mod calcapp;
pub mod cookie;
pub mod kernel;
pub mod message;
pub mod palette;
pub mod preset;
pub mod tiling;
