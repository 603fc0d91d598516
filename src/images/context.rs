//! The tar stream Docker builds from: the image's folder at the root, plus `runtime/`,
//! `systemd-units/` (the container units) and `cubbi-ca/` (extra CA certificates to trust).

use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};

use super::catalog::embedded_tree;
use super::{ImageDefinition, ImageError};

static RUNTIME: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/runtime");
static CONTAINER_UNITS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/systemd-units/container");

/// Where extra CA certificates go in the context; the base Dockerfile installs them.
pub const CA_FOLDER: &str = "cubbi-ca";
/// The host's extra CAs, taken along by default so builds and sessions work behind a
/// TLS-inspecting proxy, as on many company networks.
pub const HOST_CA_FOLDER: &str = "/usr/local/share/ca-certificates";

/// A fixed timestamp keeps the context byte-identical between runs, so Docker's cache holds.
const FIXED_MTIME: u64 = 1_700_000_000;

pub fn build_context(
    image: &ImageDefinition,
    ca_certificates: &[PathBuf],
) -> Result<Vec<u8>, ImageError> {
    let mut entries: Vec<(PathBuf, Vec<u8>)> = image.files()?;
    entries.extend(
        embedded_tree(&RUNTIME)
            .into_iter()
            .map(|(path, data)| (Path::new("runtime").join(path), data)),
    );
    entries.extend(
        embedded_tree(&CONTAINER_UNITS)
            .into_iter()
            .map(|(path, data)| (Path::new("systemd-units").join(path), data)),
    );
    entries.retain(|(path, _)| !path.starts_with(CA_FOLDER));
    entries.push((Path::new(CA_FOLDER).join(".keep"), Vec::new()));
    for (index, certificate) in ca_certificates.iter().enumerate() {
        let data = std::fs::read(certificate).map_err(|source| ImageError::Read {
            path: certificate.clone(),
            source,
        })?;
        let stem = certificate
            .file_stem()
            .and_then(|stem| stem.to_str())
            .unwrap_or("ca");
        // update-ca-certificates only picks up `*.crt`; the index keeps equal names apart.
        entries.push((
            Path::new(CA_FOLDER).join(format!("{index:02}-{stem}.crt")),
            data,
        ));
    }
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(if data.starts_with(b"#!") {
            0o755
        } else {
            0o644
        });
        header.set_mtime(FIXED_MTIME);
        header.set_uid(0);
        header.set_gid(0);
        builder
            .append_data(&mut header, &path, data.as_slice())
            .map_err(ImageError::Context)?;
    }
    builder.into_inner().map_err(ImageError::Context)
}

/// The certificates to take along: the configured list, else the host's extra CAs.
pub fn ca_certificates(configured: Option<&[String]>) -> Result<Vec<PathBuf>, ImageError> {
    if let Some(paths) = configured {
        return Ok(paths.iter().map(PathBuf::from).collect());
    }
    let dir = Path::new(HOST_CA_FOLDER);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "crt"))
        .collect();
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::Catalog;

    fn names(context: &[u8]) -> Vec<(String, u32)> {
        let mut archive = tar::Archive::new(context);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (
                    entry.path().unwrap().display().to_string(),
                    entry.header().mode().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn context_has_image_runtime_units_and_cas() {
        let catalog = Catalog::embedded().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("corp.crt");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let context = build_context(catalog.get("base").unwrap(), &[ca]).unwrap();
        let entries = names(&context);
        let has = |name: &str| entries.iter().any(|(path, _)| path == name);
        assert!(has("Dockerfile"), "{entries:?}");
        assert!(has("cubbi-image.toml"));
        assert!(has("cubbi-ca/00-corp.crt"));
        assert!(entries.iter().any(|(path, _)| path.starts_with("runtime/")));
        assert!(
            entries
                .iter()
                .any(|(path, _)| path.starts_with("systemd-units/"))
        );
        for (path, mode) in &entries {
            if path.starts_with("runtime/") && path.ends_with(".sh") {
                assert_eq!(*mode, 0o755, "{path} must be executable");
            }
        }
    }

    #[test]
    fn context_is_reproducible() {
        let catalog = Catalog::embedded().unwrap();
        let base = catalog.get("base").unwrap();
        assert_eq!(
            build_context(base, &[]).unwrap(),
            build_context(base, &[]).unwrap()
        );
    }

    #[test]
    fn missing_certificate_is_named() {
        let catalog = Catalog::embedded().unwrap();
        let err = build_context(
            catalog.get("base").unwrap(),
            &[PathBuf::from("/nonexistent.crt")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent.crt"), "{err}");
    }
}
