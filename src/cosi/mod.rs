//! COSI images: tar walking, metadata, sources, streaming pipeline, builder.

pub mod http;
pub mod oci;
pub mod open;
pub mod source;
pub mod stream;
