//! COSI images: tar walking, metadata, sources, streaming pipeline, builder.
//!
//! - [`source`], [`http`], [`oci`], [`open`]: where the bytes come from (file, HTTP
//!   range requests, OCI registry blobs), behind one random-access `Source` trait.
//! - [`tar`], [`metadata`], [`reader`]: locating and validating the members.
//! - [`stream`]: SHA-384 → zstd → block-device pipeline.
//! - [`build`]: raw GPT disk image → COSI file; [`verify`]: check every image hash.

pub mod build;
pub mod http;
pub mod metadata;
pub mod oci;
pub mod open;
pub mod reader;
pub mod source;
pub mod stream;
pub mod tar;
pub mod verify;
