//! Credentials at rest: XChaCha20-Poly1305 under a 256-bit key, a random 24-byte nonce per
//! encryption, and the project id as associated data so a sealed credential copied into
//! another project's file does not open.
//!
//! The key comes from `CUBBI_PROJECT_KEY` (64 hex digits or base64 of 32 bytes), else from
//! `$XDG_CONFIG_HOME/cubbi/project.key`, created 0600 on first use.

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::ProjectError;

/// The environment variable that overrides the key file.
pub const KEY_ENV: &str = "CUBBI_PROJECT_KEY";

const NONCE_BYTES: usize = 24;
/// Prefixed to the associated data, so these ciphertexts mean nothing in another context.
const AD_CONTEXT: &[u8] = b"cubbi project credential v1\0";

/// A 256-bit key. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct ProjectKey {
    bytes: [u8; 32],
    /// Where it came from, for error messages: `CUBBI_PROJECT_KEY` or the key file's path.
    origin: String,
}

impl std::fmt::Debug for ProjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProjectKey(<redacted>, from {})", self.origin)
    }
}

impl ProjectKey {
    /// The key `CUBBI_PROJECT_KEY` holds when set, else the one in `key_file` (created on
    /// first use).
    pub fn resolve(key_file: &Path) -> Result<Self, ProjectError> {
        match std::env::var(KEY_ENV) {
            Ok(value) => Self::from_env_value(&value),
            Err(std::env::VarError::NotPresent) => Self::load_or_create(key_file),
            Err(std::env::VarError::NotUnicode(_)) => Err(ProjectError::BadEnvKey),
        }
    }

    /// Like [`resolve`](Self::resolve) but never creates the key file: `None` when neither
    /// the variable nor the file exists (what reading a sealed credential needs).
    pub fn resolve_existing(key_file: &Path) -> Result<Option<Self>, ProjectError> {
        match std::env::var(KEY_ENV) {
            Ok(value) => Self::from_env_value(&value).map(Some),
            Err(std::env::VarError::NotPresent) => read_key_file(key_file),
            Err(std::env::VarError::NotUnicode(_)) => Err(ProjectError::BadEnvKey),
        }
    }

    /// Parses 64 hex digits or base64 (standard or URL-safe, padded or not) of 32 bytes.
    pub fn from_env_value(value: &str) -> Result<Self, ProjectError> {
        let bytes = parse_key_text(value).ok_or(ProjectError::BadEnvKey)?;
        Ok(Self {
            bytes,
            origin: KEY_ENV.into(),
        })
    }

    /// Parses key text as [`from_env_value`](Self::from_env_value) does, for another source
    /// (`origin`, e.g. `projects.storage.key` of the service); `None` when it is not a key.
    pub fn from_text(value: &str, origin: &str) -> Option<Self> {
        parse_key_text(value).map(|bytes| Self {
            bytes,
            origin: origin.into(),
        })
    }

    /// A key from raw bytes, for tests and callers with their own key management.
    pub fn from_bytes(bytes: [u8; 32], origin: &str) -> Self {
        Self {
            bytes,
            origin: origin.into(),
        }
    }

    /// Where the key came from (`CUBBI_PROJECT_KEY` or a file's path).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Reads `path`, or creates it with a fresh random key. Creation is `O_EXCL` on a
    /// complete temporary file linked into place, so two first uses at once agree on one key
    /// and no reader ever sees a half-written file.
    pub fn load_or_create(path: &Path) -> Result<Self, ProjectError> {
        match read_key_file(path)? {
            Some(key) => Ok(key),
            None => {
                let bytes: [u8; 32] = rand::random();
                create_key_file(path, &bytes)?;
                // Whoever won the race, the file now holds the key everyone uses.
                read_key_file(path)?.ok_or_else(|| ProjectError::BadKeyFile {
                    path: path.to_path_buf(),
                    reason: "it vanished right after it was created".into(),
                })
            }
        }
    }

    /// Seals `plaintext` for project `id`: base64 of nonce || ciphertext || tag.
    pub fn seal(&self, id: &str, plaintext: &[u8]) -> Result<String, ProjectError> {
        let cipher = XChaCha20Poly1305::new(&self.bytes.into());
        let nonce_bytes: [u8; NONCE_BYTES] = rand::random();
        let nonce = XNonce::from(nonce_bytes);
        let ad = associated_data(id);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &ad,
                },
            )
            .map_err(|_| ProjectError::Refused("cannot encrypt the credential".into()))?;
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        Ok(STANDARD.encode(out))
    }

    /// Opens what [`seal`](Self::seal) made for the same `id`; any other key, id, or a
    /// changed byte is `None`.
    pub fn open(&self, id: &str, sealed: &str) -> Option<Vec<u8>> {
        let data = STANDARD.decode(sealed.trim()).ok()?;
        if data.len() < NONCE_BYTES + 16 {
            return None;
        }
        let (nonce_bytes, ciphertext) = data.split_at(NONCE_BYTES);
        let nonce_array: [u8; NONCE_BYTES] = nonce_bytes.try_into().ok()?;
        let cipher = XChaCha20Poly1305::new(&self.bytes.into());
        let ad = associated_data(id);
        cipher
            .decrypt(
                &XNonce::from(nonce_array),
                Payload {
                    msg: ciphertext,
                    aad: &ad,
                },
            )
            .ok()
    }
}

fn associated_data(id: &str) -> Vec<u8> {
    let mut ad = AD_CONTEXT.to_vec();
    ad.extend_from_slice(id.as_bytes());
    ad
}

/// 64 hex digits, or base64 of exactly 32 bytes.
fn parse_key_text(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        return Some(bytes);
    }
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
}

/// The key in `path`, `None` when there is no file. The file holds 64 hex digits and a newline.
fn read_key_file(path: &Path) -> Result<Option<ProjectKey>, ProjectError> {
    let bad = |reason: String| ProjectError::BadKeyFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) if err.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(bad("it is a symbolic link; remove it".into()));
        }
        Err(source) => {
            return Err(ProjectError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let metadata = file.metadata().map_err(|source| ProjectError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !metadata.is_file() {
        return Err(bad("it is not a regular file".into()));
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(bad(format!(
            "it is readable by group or others; run `chmod 600 {}`",
            path.display()
        )));
    }
    let mut text = String::new();
    file.take(1024)
        .read_to_string(&mut text)
        .map_err(|source| ProjectError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let bytes = parse_key_text(&text)
        .ok_or_else(|| bad("it does not hold 64 hex digits (32 bytes)".into()))?;
    Ok(Some(ProjectKey {
        bytes,
        origin: path.display().to_string(),
    }))
}

/// Writes a new key file unless one exists: a complete 0600 temp file, then `link(2)`, which
/// fails with EEXIST (like O_EXCL) when another process created the key first.
fn create_key_file(path: &Path, bytes: &[u8; 32]) -> Result<(), ProjectError> {
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    crate::atomic_file::create_new(path, format!("{hex}\n").as_bytes(), 0o600, 0o700)
        .map(|_| ())
        .map_err(|source| ProjectError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// The default key file, `$XDG_CONFIG_HOME/cubbi/project.key`.
pub fn default_key_file() -> Result<PathBuf, ProjectError> {
    Ok(crate::config::paths::config_dir()?.join("project.key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ProjectKey {
        ProjectKey::from_bytes([byte; 32], "test")
    }

    #[test]
    fn seal_and_open_round_trip_with_fresh_nonces() {
        let key = key(7);
        let one = key.seal("github.com/org/repo", b"secret").unwrap();
        let two = key.seal("github.com/org/repo", b"secret").unwrap();
        assert_ne!(one, two, "each encryption has its own nonce");
        assert!(!one.contains("secret"));
        assert_eq!(key.open("github.com/org/repo", &one).unwrap(), b"secret");
        assert_eq!(key.open("github.com/org/repo", &two).unwrap(), b"secret");
    }

    #[test]
    fn a_wrong_key_does_not_open() {
        let sealed = key(1).seal("h.example/o/r", b"secret").unwrap();
        assert!(key(2).open("h.example/o/r", &sealed).is_none());
    }

    #[test]
    fn any_flipped_byte_or_truncation_does_not_open() {
        let key = key(3);
        let sealed = key.seal("h.example/o/r", b"secret").unwrap();
        let raw = STANDARD.decode(&sealed).unwrap();
        for i in 0..raw.len() {
            let mut tampered = raw.clone();
            tampered[i] ^= 0x01;
            assert!(
                key.open("h.example/o/r", &STANDARD.encode(&tampered))
                    .is_none(),
                "byte {i}"
            );
        }
        for len in 0..raw.len() {
            assert!(
                key.open("h.example/o/r", &STANDARD.encode(&raw[..len]))
                    .is_none(),
                "len {len}"
            );
        }
        assert!(key.open("h.example/o/r", "not base64!").is_none());
    }

    #[test]
    fn the_project_id_is_bound() {
        let key = key(4);
        let sealed = key.seal("h.example/o/one", b"secret").unwrap();
        assert!(key.open("h.example/o/two", &sealed).is_none());
        assert!(key.open("h.example/o/one", &sealed).is_some());
    }

    #[test]
    fn env_keys_in_hex_and_base64() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let from_hex = ProjectKey::from_env_value(hex).unwrap();
        assert_eq!(from_hex.bytes[1], 0x11);
        assert_eq!(from_hex.bytes[31], 0xff);
        let b64 = STANDARD.encode(from_hex.bytes);
        assert_eq!(
            ProjectKey::from_env_value(&b64).unwrap().bytes,
            from_hex.bytes
        );
        let unpadded = b64.trim_end_matches('=');
        assert_eq!(
            ProjectKey::from_env_value(unpadded).unwrap().bytes,
            from_hex.bytes
        );
        for bad in [
            "",
            "abc",
            &hex[..62],
            &format!("{hex}00"),
            &STANDARD.encode([1u8; 31]),
            "zz".repeat(32).as_str(),
        ] {
            let err = ProjectKey::from_env_value(bad).unwrap_err().to_string();
            assert!(err.contains("CUBBI_PROJECT_KEY"), "{err}");
        }
        assert!(!format!("{from_hex:?}").contains("11"));
    }

    #[test]
    fn the_key_file_is_created_private_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cubbi/project.key");
        let keys: Vec<[u8; 32]> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| ProjectKey::load_or_create(&path).unwrap().bytes))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(ProjectKey::load_or_create(&path).unwrap().bytes, keys[0]);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            ProjectKey::load_or_create(&path)
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(matches!(
            ProjectKey::load_or_create(&path),
            Err(ProjectError::BadKeyFile { .. })
        ));
    }
}
