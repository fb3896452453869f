//! The pieces of the S3 object store backend that speak the protocol:
//! request signing ([`sigv4`], AWS Signature Version 4, hand-written over
//! `hmac` and `sha2` and checked against AWS's published examples) and the
//! XML the store answers with ([`xml`], bounded parsers of untrusted bytes
//! over `quick-xml`). Keys are built only by [`super::key`].
//!
//! Why not a client crate: `rusty-s3` (signing only) would bring about 53
//! crates with its `url` and `time` trees for what is about 300 lines here;
//! `object_store` and `aws-sdk-s3` bring 59 to 138 and their own HTTP
//! stacks, and the AWS SDK's default CRC32 trailers broke streamed PUTs on
//! Garage. backupd already ships hyper and rustls; signing is small,
//! specified exactly, and testable against AWS's own vectors.

pub mod client;
pub mod config;
pub mod sigv4;
pub mod store;
pub mod xml;
