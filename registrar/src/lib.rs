//! Registrar.
