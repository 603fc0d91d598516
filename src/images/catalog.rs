//! Where image definitions come from: the folders under `images/`, embedded in the binary so an
//! installed cubbi builds images without the source tree, or any folder given with `--from`.

use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};

use super::{ImageError, ImageMetadata};

static EMBEDDED_IMAGES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/images");

pub const METADATA_FILE: &str = "cubbi-image.toml";

/// One image definition and the files of its build context.
#[derive(Debug, Clone)]
pub struct ImageDefinition {
    pub metadata: ImageMetadata,
    pub source: Source,
}

#[derive(Debug, Clone)]
pub enum Source {
    Embedded(&'static Dir<'static>),
    Folder(PathBuf),
}

impl ImageDefinition {
    /// The image's own files, as (path relative to the folder, contents).
    pub fn files(&self) -> Result<Vec<(PathBuf, Vec<u8>)>, ImageError> {
        match &self.source {
            Source::Embedded(dir) => Ok(embedded_files(dir)),
            Source::Folder(dir) => folder_files(dir),
        }
    }

    /// The definition in a folder (`--from DIR`): any folder with a Dockerfile and metadata.
    pub fn from_folder(dir: &Path) -> Result<Self, ImageError> {
        let metadata_path = dir.join(METADATA_FILE);
        if !dir.join("Dockerfile").is_file() || !metadata_path.is_file() {
            return Err(ImageError::NotAnImageFolder {
                dir: dir.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(&metadata_path).map_err(|source| ImageError::Read {
            path: metadata_path.clone(),
            source,
        })?;
        Ok(Self {
            metadata: ImageMetadata::parse(&text, &metadata_path)?,
            source: Source::Folder(dir.to_path_buf()),
        })
    }
}

/// The image definitions shipped with cubbi, `base` first.
#[derive(Debug, Clone)]
pub struct Catalog {
    images: Vec<ImageDefinition>,
}

impl Catalog {
    pub fn embedded() -> Result<Self, ImageError> {
        let mut images = Vec::new();
        for dir in EMBEDDED_IMAGES.dirs() {
            let Some(file) = dir.get_file(dir.path().join(METADATA_FILE)) else {
                continue;
            };
            let origin = Path::new("images").join(file.path());
            let text = file
                .contents_utf8()
                .ok_or_else(|| ImageError::InvalidMetadata {
                    file: origin.clone(),
                    message: "not UTF-8".into(),
                })?;
            images.push(ImageDefinition {
                metadata: ImageMetadata::parse(text, &origin)?,
                source: Source::Embedded(dir),
            });
        }
        images.sort_by_key(|image| (image.metadata.name != "base", image.metadata.name.clone()));
        Ok(Self { images })
    }

    pub fn all(&self) -> &[ImageDefinition] {
        &self.images
    }

    pub fn names(&self) -> Vec<String> {
        self.images
            .iter()
            .map(|i| i.metadata.name.clone())
            .collect()
    }

    /// Finds an image by name; `cubbi-claude-code` works as well as `claude-code`.
    pub fn get(&self, name: &str) -> Result<&ImageDefinition, ImageError> {
        let wanted = name.strip_prefix("cubbi-").unwrap_or(name);
        self.images
            .iter()
            .find(|image| image.metadata.name == wanted)
            .ok_or_else(|| ImageError::Unknown {
                name: name.to_string(),
                known: self.names(),
            })
    }
}

fn embedded_files(dir: &'static Dir<'static>) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    collect_embedded(dir, dir.path(), &mut files);
    files
}

fn collect_embedded(dir: &Dir<'static>, root: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for file in dir.files() {
        let relative = file.path().strip_prefix(root).unwrap_or(file.path());
        out.push((relative.to_path_buf(), file.contents().to_vec()));
    }
    for child in dir.dirs() {
        collect_embedded(child, root, out);
    }
}

fn folder_files(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, ImageError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let read_error = |source| ImageError::Read {
            path: current.clone(),
            source,
        };
        for entry in std::fs::read_dir(&current).map_err(read_error)? {
            let path = entry.map_err(read_error)?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.is_file() {
                let contents = std::fs::read(&path).map_err(|source| ImageError::Read {
                    path: path.clone(),
                    source,
                })?;
                let relative = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
                files.push((relative, contents));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The embedded copy of a repository folder's files (used for `runtime/` and unit files).
pub(crate) fn embedded_tree(dir: &'static Dir<'static>) -> Vec<(PathBuf, Vec<u8>)> {
    embedded_files(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_has_base_first_and_every_image_parses() {
        let catalog = Catalog::embedded().unwrap();
        assert_eq!(catalog.all()[0].metadata.name, "base");
        for image in catalog.all() {
            let files = image.files().unwrap();
            assert!(
                files
                    .iter()
                    .any(|(path, _)| path == Path::new("Dockerfile")),
                "{} has no Dockerfile",
                image.metadata.name
            );
        }
    }

    #[test]
    fn lookup_accepts_tag_form_and_lists_known_names() {
        let catalog = Catalog::embedded().unwrap();
        assert_eq!(catalog.get("cubbi-base").unwrap().metadata.name, "base");
        let err = catalog.get("nope").unwrap_err().to_string();
        assert!(
            err.contains("unknown image `nope`") && err.contains("base"),
            "{err}"
        );
    }

    #[test]
    fn folder_without_dockerfile_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(METADATA_FILE), "").unwrap();
        let err = ImageDefinition::from_folder(dir.path()).unwrap_err();
        assert!(matches!(err, ImageError::NotAnImageFolder { .. }));
    }
}
