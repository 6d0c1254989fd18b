//! COSI images: tar walking, metadata, sources, streaming pipeline, builder.

pub mod source;
pub mod build;
