//! COSI images: tar walking, metadata, sources, streaming pipeline, builder.

pub mod build;
pub mod metadata;
pub mod reader;
pub mod source;
pub mod tar;
