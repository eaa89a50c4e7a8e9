//! The bundled demo deployment: a registrar and pool elements started as child processes.
