//! System container images: the definitions shipped in the binary (`images/`), their
//! metadata, build contexts, and building them through the Docker API.

pub mod build;
pub mod catalog;
pub mod context;
pub mod metadata;
#[cfg(test)]
mod runtime_lib;

use std::path::PathBuf;

pub use catalog::{Catalog, ImageDefinition};
pub use metadata::ImageMetadata;

/// Label carrying an image's `cubbi-image.toml` (as JSON), so sessions read what an image
/// declares from the image itself.
pub const METADATA_LABEL: &str = "io.cubbi.image.metadata";
/// Label naming the cubbi image definition a Docker image was built from.
pub const NAME_LABEL: &str = "io.cubbi.image";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("unknown image `{name}`; known images: {}", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
    #[error("{file}: {message}")]
    InvalidMetadata { file: PathBuf, message: String },
    #[error("{dir} is not an image folder: it needs a Dockerfile and a cubbi-image.toml")]
    NotAnImageFolder { dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot assemble the build context: {0}")]
    Context(std::io::Error),
    #[error("building {tag} failed at {step}:\n{output}")]
    BuildFailed {
        tag: String,
        step: String,
        output: String,
    },
    #[error("Docker refused the build of {tag}: {reason}")]
    Docker { tag: String, reason: String },
}
