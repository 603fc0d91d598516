//! Reading and atomically rewriting `config.toml`, keeping the user's comments and layout.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table};

use super::keys::KeySpec;
use super::{Config, ConfigError};

/// The config file as the user wrote it: edits change only the keys they name, and `${VAR}`
/// references are stored unresolved.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    document: DocumentMut,
}

/// Where a shown value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    File,
    Default,
}

impl ConfigFile {
    /// Opens the user's config file; a missing file is an empty config.
    pub fn open_default() -> Result<Self, ConfigError> {
        Self::open(&super::paths::config_file()?)
    }

    pub fn open(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let document = text
            .parse::<DocumentMut>()
            .map_err(|err| ConfigError::Syntax {
                path: path.to_path_buf(),
                message: indent(&describe(&text, err.span(), err.message())),
            })?;
        let file = Self {
            path: path.to_path_buf(),
            document,
        };
        file.config()?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The typed, validated config, with defaults for everything the file leaves out.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let text = self.document.to_string();
        let config: Config = toml::from_str(&text).map_err(|err| ConfigError::Schema {
            path: self.path.clone(),
            message: indent(&describe(&text, err.span(), err.message())),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The value in effect for a key, and whether the file or the built-in default set it.
    /// `None` when neither does.
    pub fn effective(&self, spec: &KeySpec) -> Result<Option<(toml::Value, Source)>, ConfigError> {
        let source = if self.item(&spec.path).is_some() {
            Source::File
        } else {
            Source::Default
        };
        let typed = toml::Value::try_from(self.config()?).map_err(|err| ConfigError::Schema {
            path: self.path.clone(),
            message: err.to_string(),
        })?;
        let mut node = &typed;
        for part in spec.path.split('.') {
            match node.get(part) {
                Some(next) => node = next,
                None => return Ok(None),
            }
        }
        Ok(Some((node.clone(), source)))
    }

    /// Names of the remote endpoints the file defines.
    pub fn remote_endpoint_names(&self) -> Result<Vec<String>, ConfigError> {
        Ok(self.config()?.remote.endpoints.into_keys().collect())
    }

    /// Sets a key; the change is kept only when the whole config is still valid.
    pub fn set(&mut self, spec: &KeySpec, value: toml_edit::Value) -> Result<(), ConfigError> {
        let mut edited = self.clone();
        let (parents, leaf) = split_path(&spec.path);
        let mut table = edited.document.as_table_mut();
        for part in parents {
            let entry = table.entry(part).or_insert_with(|| {
                let mut section = Table::new();
                section.set_implicit(true);
                Item::Table(section)
            });
            if let Some(inline) = entry.as_inline_table().cloned() {
                *entry = Item::Table(inline.into_table());
            }
            table = entry
                .as_table_mut()
                .ok_or_else(|| ConfigError::InvalidValue {
                    key: spec.path.clone(),
                    reason: format!("`{part}` in the file is a value, not a section"),
                })?;
        }
        table.insert(leaf, Item::Value(value));
        edited.config()?;
        *self = edited;
        Ok(())
    }

    /// Removes a key; returns whether it was set. Sections left empty are removed too.
    pub fn unset(&mut self, spec: &KeySpec) -> Result<bool, ConfigError> {
        let mut edited = self.clone();
        let parts: Vec<&str> = spec.path.split('.').collect();
        let removed = remove_path(edited.document.as_table_mut(), &parts);
        if removed {
            edited.config()?;
            *self = edited;
        }
        Ok(removed)
    }

    /// Replaces the whole file with an empty config.
    pub fn reset(&mut self) {
        self.document = DocumentMut::new();
    }

    /// Writes the file atomically (temp file in the same folder, then rename), mode 0600, so a
    /// crash never leaves a half-written config and secrets are never world-readable.
    pub fn save(&self) -> Result<(), ConfigError> {
        crate::atomic_file::write(
            &self.path,
            self.document.to_string().as_bytes(),
            0o600,
            0o700,
        )
        .map_err(|source| ConfigError::Write {
            path: self.path.clone(),
            source,
        })
    }

    fn item(&self, path: &str) -> Option<&Item> {
        let mut item = self.document.as_item();
        for part in path.split('.') {
            item = item.get(part)?;
        }
        Some(item)
    }
}

fn split_path(path: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let leaf = parts.pop().unwrap_or(path);
    (parts, leaf)
}

fn remove_path(table: &mut dyn toml_edit::TableLike, parts: &[&str]) -> bool {
    match parts {
        [] => false,
        [leaf] => table.remove(leaf).is_some(),
        [first, rest @ ..] => {
            let Some(child) = table
                .get_mut(first)
                .and_then(|item| item.as_table_like_mut())
            else {
                return false;
            };
            let removed = remove_path(child, rest);
            if removed && child.is_empty() {
                table.remove(first);
            }
            removed
        }
    }
}

/// A parse error as `line L, column C (key `K`): message`, built from the error's span and its
/// bare message, never from its Display: toml's Display quotes the offending line, and that
/// line may hold a secret (`api_key = sk-...` without quotes). Values serde quotes in its
/// message (`invalid type: string "..."`, `unknown variant `...``) are cut out as well.
fn describe(text: &str, span: Option<std::ops::Range<usize>>, message: &str) -> String {
    let Some(span) = span else {
        return message.trim().to_string();
    };
    let start = span.start.min(text.len());
    let start = (0..=start)
        .rev()
        .find(|at| text.is_char_boundary(*at))
        .unwrap_or(0);
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("");
    let mut message = message.trim().to_string();
    let mut key = None;
    if let Some((name, value)) = line_text.split_once('=') {
        let name = name.trim();
        if !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            key = Some(name.to_string());
        }
        let value = value.trim();
        for candidate in [value, value.trim_matches('"'), value.trim_matches('\'')] {
            if candidate.is_empty() {
                continue;
            }
            for quoted in [
                format!("\"{candidate}\""),
                format!("`{candidate}`"),
                format!("'{candidate}'"),
            ] {
                message = message.replace(&quoted, "(the value)");
            }
        }
    }
    match key {
        Some(key) => format!("line {line}, column {column} (key `{key}`): {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

fn indent(message: &str) -> String {
    let body: Vec<String> = message
        .trim_end()
        .lines()
        .map(|line| format!("  {line}"))
        .collect();
    format!("\n{}\n", body.join("\n"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::config::keys::{lookup, parse_value};

    fn file_with(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cubbi").join("config.toml");
        if !text.is_empty() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        (dir, path)
    }

    fn set(file: &mut ConfigFile, key: &str, value: &str) -> Result<(), ConfigError> {
        let spec = lookup(key)?;
        let value = parse_value(&spec, value)?;
        file.set(&spec, value)
    }

    #[test]
    fn set_keeps_comments_and_writes_private_file() {
        let (_dir, path) = file_with("# mine\n[defaults]\nimage = \"base\" # keep\n");
        let mut file = ConfigFile::open(&path).unwrap();
        set(&mut file, "openai.api_key", "${OPENAI}").unwrap();
        set(&mut file, "ports.end", "2400").unwrap();
        file.save().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# mine") && text.contains("# keep"), "{text}");
        assert!(
            text.contains("[services.openai]\napi_key = \"${OPENAI}\""),
            "{text}"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let config = ConfigFile::open(&path).unwrap().config().unwrap();
        assert_eq!(config.ports.end, 2400);
        assert_eq!(config.services.openai.api_key.as_deref(), Some("${OPENAI}"));
    }

    #[test]
    fn invalid_edits_change_nothing() {
        let (_dir, path) = file_with("[ports]\nstart = 2300\nend = 2310\n");
        let mut file = ConfigFile::open(&path).unwrap();
        let before = file.document.to_string();
        assert!(set(&mut file, "ports.start", "2400").is_err());
        assert!(set(&mut file, "remote.default", "nowhere").is_err());
        assert_eq!(file.document.to_string(), before);
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let (_dir, path) = file_with("[defaults]\nimage = \n");
        let err = ConfigFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("column"), "{err}");
    }

    #[test]
    fn syntax_errors_never_show_the_line() {
        let (_dir, path) = file_with("[services.openai]\napi_key = sk-SECRET123\n");
        let err = ConfigFile::open(&path).unwrap_err().to_string();
        assert!(!err.contains("SECRET123"), "{err}");
        assert!(err.contains("line 2, column"), "{err}");
        assert!(err.contains("`api_key`"), "{err}");
    }

    #[test]
    fn schema_errors_never_show_the_value() {
        for text in [
            "[services.openai]\napi_key = 12345678\n",
            "[defaults]\nconnect = \"sk-SECRET123\"\n",
            "[ui]\ntable_format = \"sk-SECRET123\"\n",
            "[services.openai]\napi_key = [\"sk-SECRET123\"]\n",
        ] {
            let (_dir, path) = file_with(text);
            let err = ConfigFile::open(&path).unwrap_err().to_string();
            assert!(
                !err.contains("SECRET123") && !err.contains("12345678"),
                "{text}: {err}"
            );
            assert!(err.contains("line 2, column"), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_fields_in_the_file_are_reported() {
        let (_dir, path) = file_with("[defaults]\nimgae = \"x\"\n");
        let err = ConfigFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("imgae"), "{err}");
    }

    #[test]
    fn unset_removes_emptied_sections() {
        let (_dir, path) = file_with("");
        let mut file = ConfigFile::open(&path).unwrap();
        set(
            &mut file,
            "remote.endpoints.team.url",
            "https://cubbi.example",
        )
        .unwrap();
        set(&mut file, "remote.default", "team").unwrap();
        assert!(file.unset(&lookup("remote.default").unwrap()).unwrap());
        assert!(
            file.unset(&lookup("remote.endpoints.team.url").unwrap())
                .unwrap()
        );
        assert!(!file.unset(&lookup("remote.default").unwrap()).unwrap());
        assert_eq!(file.document.to_string().trim(), "");
    }

    #[test]
    fn effective_values_fall_back_to_defaults() {
        let (_dir, path) = file_with("[docker]\nnetwork = \"mine\"\n");
        let file = ConfigFile::open(&path).unwrap();
        let (value, source) = file
            .effective(&lookup("docker.network").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!((value.as_str(), source), (Some("mine"), Source::File));
        let (value, source) = file
            .effective(&lookup("ports.start").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!((value.as_integer(), source), (Some(2300), Source::Default));
        assert!(
            file.effective(&lookup("defaults.memory").unwrap())
                .unwrap()
                .is_none()
        );
    }
}
