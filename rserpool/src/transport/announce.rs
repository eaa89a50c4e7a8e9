//! UDP announce sockets (placeholder, filled below).
