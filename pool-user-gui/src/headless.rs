//! `pool-user --headless`.
