//! Users and API tokens of `cubbi serve`: the [`Store`] trait, and its embedded SQLite
//! implementation (the default; [`super::pg_store`] is the PostgreSQL one).
//!
//! Tokens look like `cubbi_<id>_<secret>`: the id (12 hex digits) finds the row, the secret (32
//! random bytes, base64url) proves possession. Only the SHA-256 of the whole token is stored, so
//! neither the database file nor a backup of it lets anyone act as a user.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::auth_tokens::{
    FamilyRecord, IssuedTokens, OidcLogin, RefreshCheck, Rotation, TokenKind, new_family_id,
    new_pair,
};

/// The database file inside the state folder.
pub const DATABASE_FILE: &str = "cubbi.db";

const TOKEN_PREFIX: &str = "cubbi_";
const ID_HEX_DIGITS: usize = 12;
const SECRET_BYTES: usize = 32;
/// base64url without padding of 32 bytes.
pub(super) const SECRET_CHARS: usize = 43;

/// `last_used` is written at most this often per token, so that authenticating a request is
/// normally a read only.
const LAST_USED_RESOLUTION_SECONDS: i64 = 60;

/// How long a statement waits for another process (`cubbi serve` and `cubbi serve token ...`
/// share the file) to release its lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have been
/// applied. Append new ones (e.g. projects referencing users); never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: users and their API tokens.
    "CREATE TABLE users (
        name TEXT PRIMARY KEY NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY NOT NULL,
        user TEXT NOT NULL REFERENCES users(name),
        hash BLOB NOT NULL,
        created INTEGER NOT NULL,
        last_used INTEGER,
        revoked INTEGER
    ) STRICT;
    CREATE INDEX tokens_by_user ON tokens(user);",
    // 2: each user's registered projects: the sealed record text (see
    // crate::projects::store), keyed by user and project id; names are unique per user.
    "CREATE TABLE projects (
        user TEXT NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (user, id),
        UNIQUE (user, name)
    ) STRICT;",
    // 3: OpenID Connect logins: who a provider's (issuer, subject) is here, each login's
    // token family (with the provider's refresh token, to read the groups again), and the
    // service's own access and refresh tokens (hashed) of each family.
    "CREATE TABLE oidc_identities (
        issuer TEXT NOT NULL,
        subject TEXT NOT NULL,
        user TEXT NOT NULL UNIQUE REFERENCES users(name),
        created INTEGER NOT NULL,
        PRIMARY KEY (issuer, subject)
    ) STRICT;
    CREATE TABLE oidc_families (
        id TEXT PRIMARY KEY NOT NULL,
        user TEXT NOT NULL REFERENCES users(name),
        issuer TEXT NOT NULL,
        subject TEXT NOT NULL,
        provider_refresh TEXT,
        created INTEGER NOT NULL,
        revoked INTEGER
    ) STRICT;
    CREATE TABLE oidc_tokens (
        id TEXT PRIMARY KEY NOT NULL,
        family TEXT NOT NULL REFERENCES oidc_families(id),
        kind TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
        hash BLOB NOT NULL,
        created INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        used INTEGER
    ) STRICT;
    CREATE INDEX oidc_tokens_by_family ON oidc_tokens(family);",
];

/// Who made a request, as its token says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Caller {
    pub user: String,
    pub admin: bool,
}

/// A token as listed: everything but the secret. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenRecord {
    pub id: String,
    pub user: String,
    /// The user's admin flag (it belongs to the user, so all of a user's tokens share it).
    pub admin: bool,
    pub created: i64,
    pub last_used: Option<i64>,
    pub revoked: Option<i64>,
}

impl TokenRecord {
    /// The record of a token just issued.
    pub(super) fn issued(id: String, user: &str, admin: bool, created: i64) -> Self {
        Self {
            id,
            user: user.to_string(),
            admin,
            created,
            last_used: None,
            revoked: None,
        }
    }
}

/// A token's row, as a store reads it to authenticate.
pub(super) struct StoredToken {
    pub hash: Vec<u8>,
    pub caller: Caller,
    pub last_used: Option<i64>,
    pub revoked: Option<i64>,
}

impl StoredToken {
    /// The caller when `token` is this row's and not revoked (the hash compared in constant
    /// time), with the time to write as `last_used` when it is due.
    pub(super) fn judge(self, token: &str) -> Option<(Caller, Option<i64>)> {
        let matches: bool = self.hash.ct_eq(&token_hash(token)).into();
        if !matches || self.revoked.is_some() {
            return None;
        }
        let now = now();
        let due = self
            .last_used
            .is_none_or(|last| now - last >= LAST_USED_RESOLUTION_SECONDS);
        Some((self.caller, due.then_some(now)))
    }
}

/// Failures of the store. Messages name files and users, never a token.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the service state folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the service database {path}: {source}")]
    OpenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the service database {path} is readable by other users (mode {mode:04o}); it holds the \
         API token hashes: run `chmod 600 {path}`"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "the service database {path} has schema version {found}, but this cubbi knows only up to \
         {known}: use a newer cubbi"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("service database {path}: {source}")]
    Database {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "user name {name:?} is not allowed: use 1 to 32 characters, a lowercase letter first, \
         then lowercase letters, digits, `_` or `-`"
    )]
    InvalidUser { name: String },
    #[error("cannot issue a token: {attempts} random token ids in a row were already taken")]
    IdCollisions { attempts: u32 },
    /// A PostgreSQL failure. `database` names the server and database, never a password.
    #[error("service database {database}: {reason}")]
    Postgres { database: String, reason: String },
    #[error(
        "the service database {database} has schema version {found}, but this cubbi knows only \
         up to {known}: use a newer cubbi"
    )]
    PostgresTooNew {
        database: String,
        found: i64,
        known: i64,
    },
    #[error("cannot read the database password file {path}: {reason}")]
    PasswordFile { path: PathBuf, reason: String },
    #[error("the token store's worker stopped: {0}")]
    Worker(String),
    #[error(
        "the user name `{user}` already belongs to another user of this service (another \
         login or an API token user); accounts are never merged: ask the service's admin"
    )]
    IdentityClash { user: String },
}

/// Where users and tokens live: SQLite ([`SqliteStore`]) or PostgreSQL
/// ([`super::pg_store::PgStore`]). Both pass the same conformance suite
/// ([`super::store_conformance`]).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// A new token for `user`, created if new; returns the record and the secret token text,
    /// shown once. `admin`: `Some` sets the user's flag, `None` keeps an existing user's (a
    /// new user is not an admin); the record says which.
    async fn issue_token(
        &self,
        user: &str,
        admin: Option<bool>,
    ) -> Result<(TokenRecord, String), StoreError>;
    /// The caller a token belongs to; None for unknown, malformed or revoked tokens.
    async fn authenticate(&self, token: &str) -> Result<Option<Caller>, StoreError>;
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Revokes by id; false when no such (unrevoked) token.
    async fn revoke(&self, id: &str) -> Result<bool, StoreError>;
    /// Records an OpenID Connect login: the identity (issuer, subject) finds its user, or a
    /// new user is made with the login's name, refused ([`StoreError::IdentityClash`]) when
    /// that name is another's. Sets the user's admin flag, starts a token family.
    async fn oidc_login(&self, login: &OidcLogin) -> Result<IssuedTokens, StoreError>;
    /// What a refresh token is worth; a reused one revokes its family.
    async fn oidc_check_refresh(&self, refresh: &str) -> Result<RefreshCheck, StoreError>;
    /// Spends `refresh` and issues the family's next pair; None when it was spent meanwhile
    /// (a reuse: the family is revoked) or the family was revoked.
    async fn oidc_rotate(
        &self,
        refresh: &str,
        rotation: &Rotation,
    ) -> Result<Option<IssuedTokens>, StoreError>;
    /// Revokes a family by id; false when no such live family.
    async fn oidc_revoke_family(&self, family: &str) -> Result<bool, StoreError>;
    /// Revokes the family of an access or refresh token (which must be genuine); returns it.
    async fn oidc_logout(&self, token: &str) -> Result<Option<FamilyRecord>, StoreError>;
    /// The PostgreSQL store this is, whose database the service keeps its projects in too.
    fn postgres(&self) -> Option<&super::pg_store::PgStore> {
        None
    }
}

/// The store the config names: PostgreSQL when `[store] url` is set, else SQLite in the state
/// folder.
pub async fn open_configured(
    config: &super::config::ServiceConfig,
) -> Result<Arc<dyn Store>, StoreError> {
    match &config.store.url {
        Some(url) => Ok(Arc::new(
            super::pg_store::PgStore::connect(
                url,
                config.store.password_file.as_deref(),
                config.store.ca_file.as_deref(),
            )
            .await?,
        )),
        None => {
            let state_dir = config.state_dir.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&state_dir))
                .await
                .map_err(|err| StoreError::Worker(err.to_string()))??;
            Ok(Arc::new(store))
        }
    }
}

/// User names become Docker label values and parts of volume names, hence the narrow alphabet.
pub fn validate_user(name: &str) -> Result<(), StoreError> {
    let mut chars = name.chars();
    let first_is_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_allowed =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_is_letter && rest_allowed && name.len() <= 32 {
        Ok(())
    } else {
        Err(StoreError::InvalidUser {
            name: name.to_string(),
        })
    }
}

/// The store in `STATE_DIR/cubbi.db`. Clones share one connection.
#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    // rusqlite connections are not Sync; calls are short, so one connection behind a lock is
    // enough for the service.
    connection: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating when missing) the database in `state_dir` and brings its schema up to
    /// date. Refuses a database other users can read and one from a newer cubbi.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let (path, connection) = open_database(state_dir)?;
        Ok(Self {
            path,
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half-done work: every change runs in a
        // transaction that rolls back when dropped.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn database_error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            source,
        }
    }
}

/// A connection to `STATE_DIR/cubbi.db` (created when missing), its schema brought up to
/// date. Refuses a database other users can read and one from a newer cubbi. The token store
/// and the project store each open one.
pub fn open_database(state_dir: &Path) -> Result<(PathBuf, Connection), StoreError> {
    {
        // An existing folder keeps its mode: the administrator may have chosen it.
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| StoreError::CreateDir {
                path: state_dir.to_path_buf(),
                source,
            })?;
        let path = state_dir.join(DATABASE_FILE);
        create_private_file(&path)?;
        let mode = std::fs::metadata(&path)
            .map_err(|source| StoreError::OpenFile {
                path: path.clone(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(StoreError::Exposed {
                path,
                mode: mode & 0o7777,
            });
        }
        let database_error = |source| StoreError::Database {
            path: path.clone(),
            source,
        };
        let mut connection = Connection::open(&path).map_err(database_error)?;
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(database_error)?;
        // WAL lets `cubbi serve` read while `cubbi serve token create` writes. SQLite gives the
        // -wal and -shm files the database file's mode.
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(database_error)?;
        connection
            .pragma_update(None, "foreign_keys", true)
            .map_err(database_error)?;
        migrate(&mut connection, &path)?;
        Ok((path, connection))
    }
}

/// Creates the file with mode 0600 unless it exists; SQLite would create it with 0644.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::OpenFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Applies the migrations this database lacks, all in one transaction. The version is read
/// inside the (immediate, so write-locked) transaction so that two processes opening a new
/// database at once do not both apply the same migration.
fn migrate(connection: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let database_error = |source| StoreError::Database {
        path: path.to_path_buf(),
        source,
    };
    let known = MIGRATIONS.len() as i64;
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(database_error)?;
    let found: i64 = transaction
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(database_error)?;
    if found > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    for (applied, migration) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        transaction
            .execute_batch(migration)
            .map_err(database_error)?;
        transaction
            .pragma_update(None, "user_version", applied as i64 + 1)
            .map_err(database_error)?;
    }
    transaction.commit().map_err(database_error)
}

pub(super) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

pub(super) fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub(super) fn new_token() -> (String, String) {
    new_token_with_prefix(TOKEN_PREFIX)
}

/// A new `PREFIX<id>_<secret>` token and its id.
pub(super) fn new_token_with_prefix(prefix: &str) -> (String, String) {
    let id_bytes: [u8; ID_HEX_DIGITS / 2] = rand::random();
    let id: String = id_bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let secret_bytes: [u8; SECRET_BYTES] = rand::random();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes);
    let token = format!("{prefix}{id}_{secret}");
    (id, token)
}

/// The id part of a well-formed token; None for anything else.
pub(super) fn token_id(token: &str) -> Option<&str> {
    token_id_with_prefix(token, TOKEN_PREFIX)
}

/// The id part of a well-formed `PREFIX<id>_<secret>` token; None for anything else.
pub(super) fn token_id_with_prefix<'a>(token: &'a str, prefix: &str) -> Option<&'a str> {
    if token.len() != prefix.len() + ID_HEX_DIGITS + 1 + SECRET_CHARS {
        return None;
    }
    let (id, secret) = token.strip_prefix(prefix)?.split_once('_')?;
    let id_ok = id.len() == ID_HEX_DIGITS
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let secret_ok = secret.len() == SECRET_CHARS
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some(id)
}

/// Whether `token` hashes to `stored`, compared in constant time.
pub(super) fn hash_matches(stored: &[u8], token: &str) -> bool {
    stored.ct_eq(&token_hash(token)).into()
}

/// Inserts a new access and refresh token of `family` and returns them.
fn insert_pair(
    transaction: &rusqlite::Transaction<'_>,
    family: &str,
    user: &str,
    admin: bool,
    lifetimes: super::auth_tokens::Lifetimes,
) -> Result<IssuedTokens, rusqlite::Error> {
    let created = now();
    let ((access_id, access), (refresh_id, refresh)) = new_pair();
    let access_expires = created + lifetimes.access;
    let refresh_expires = created + lifetimes.refresh;
    for (id, token, kind, expires) in [
        (&access_id, &access, "access", access_expires),
        (&refresh_id, &refresh, "refresh", refresh_expires),
    ] {
        transaction.execute(
            "INSERT INTO oidc_tokens (id, family, kind, hash, created, expires)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, family, kind, token_hash(token), created, expires],
        )?;
    }
    Ok(IssuedTokens {
        access,
        refresh,
        access_expires,
        refresh_expires,
        family: family.to_string(),
        user: user.to_string(),
        admin,
    })
}

fn is_primary_key_clash(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// The store's operations, blocking: the [`Store`] impl runs them on the blocking pool, the
/// `cubbi serve` tests and the unit tests below call them directly.
impl SqliteStore {
    pub fn issue_token(
        &self,
        user: &str,
        admin: Option<bool>,
    ) -> Result<(TokenRecord, String), StoreError> {
        validate_user(user)?;
        // 48 random bits make a clash rare, not impossible.
        const ATTEMPTS: u32 = 3;
        let mut connection = self.connection();
        for _ in 0..ATTEMPTS {
            let created = now();
            let (id, token) = new_token();
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|err| self.database_error(err))?;
            // An existing user's flag changes only when asked: a token for an admin made
            // without `--admin` must not demote them.
            transaction
                .execute(
                    "INSERT INTO users (name, admin, created) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET admin = COALESCE(?4, users.admin)",
                    params![user, admin.unwrap_or(false), created, admin],
                )
                .map_err(|err| self.database_error(err))?;
            let admin: bool = transaction
                .query_row(
                    "SELECT admin FROM users WHERE name = ?1",
                    params![user],
                    |row| row.get(0),
                )
                .map_err(|err| self.database_error(err))?;
            let inserted = transaction.execute(
                "INSERT INTO tokens (id, user, hash, created) VALUES (?1, ?2, ?3, ?4)",
                params![id, user, token_hash(&token), created],
            );
            match inserted {
                Ok(_) => {}
                Err(err) if is_primary_key_clash(&err) => continue,
                Err(err) => return Err(self.database_error(err)),
            }
            transaction
                .commit()
                .map_err(|err| self.database_error(err))?;
            return Ok((TokenRecord::issued(id, user, admin, created), token));
        }
        Err(StoreError::IdCollisions { attempts: ATTEMPTS })
    }

    pub fn authenticate(&self, token: &str) -> Result<Option<Caller>, StoreError> {
        if let Some(TokenKind::Access(id)) = TokenKind::of(token) {
            return self.authenticate_access(id, token);
        }
        let Some(id) = token_id(token) else {
            return Ok(None);
        };
        let connection = self.connection();
        let row = connection
            .query_row(
                "SELECT tokens.hash, tokens.user, users.admin, tokens.last_used, tokens.revoked
                 FROM tokens JOIN users ON users.name = tokens.user
                 WHERE tokens.id = ?1",
                params![id],
                |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, bool>(2)?,
                        row.get::<_, Option<i64>>(3)?,
                        row.get::<_, Option<i64>>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(|err| self.database_error(err))?;
        let Some((hash, user, admin, last_used, revoked)) = row else {
            return Ok(None);
        };
        let stored = StoredToken {
            hash,
            caller: Caller { user, admin },
            last_used,
            revoked,
        };
        let Some((caller, touch)) = stored.judge(token) else {
            return Ok(None);
        };
        if let Some(now) = touch {
            connection
                .execute(
                    "UPDATE tokens SET last_used = ?1 WHERE id = ?2",
                    params![now, id],
                )
                .map_err(|err| self.database_error(err))?;
        }
        Ok(Some(caller))
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        // rowid keeps the order of issue among tokens created in the same second.
        let connection = self.connection();
        let mut statement = connection
            .prepare(
                "SELECT tokens.id, tokens.user, users.admin, tokens.created, tokens.last_used,
                        tokens.revoked
                 FROM tokens JOIN users ON users.name = tokens.user
                 ORDER BY tokens.created, tokens.rowid",
            )
            .map_err(|err| self.database_error(err))?;
        let records = statement
            .query_map([], |row| {
                Ok(TokenRecord {
                    id: row.get(0)?,
                    user: row.get(1)?,
                    admin: row.get(2)?,
                    created: row.get(3)?,
                    last_used: row.get(4)?,
                    revoked: row.get(5)?,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|err| self.database_error(err))?;
        Ok(records)
    }

    pub fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let changed = self
            .connection()
            .execute(
                "UPDATE tokens SET revoked = ?1 WHERE id = ?2 AND revoked IS NULL",
                params![now(), id],
            )
            .map_err(|err| self.database_error(err))?;
        Ok(changed > 0)
    }

    /// An OpenID Connect access token: genuine, unexpired, its family live.
    fn authenticate_access(&self, id: &str, token: &str) -> Result<Option<Caller>, StoreError> {
        let row = self
            .connection()
            .query_row(
                "SELECT t.hash, f.user, u.admin, t.expires, f.revoked, t.kind
                 FROM oidc_tokens t JOIN oidc_families f ON f.id = t.family
                 JOIN users u ON u.name = f.user
                 WHERE t.id = ?1",
                params![id],
                |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, bool>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, Option<i64>>(4)?,
                        row.get::<_, String>(5)?,
                    ))
                },
            )
            .optional()
            .map_err(|err| self.database_error(err))?;
        Ok(row.and_then(|(hash, user, admin, expires, revoked, kind)| {
            let live = kind == "access" && revoked.is_none() && expires > now();
            (live && hash_matches(&hash, token)).then_some(Caller { user, admin })
        }))
    }

    pub fn oidc_login(&self, login: &OidcLogin) -> Result<IssuedTokens, StoreError> {
        validate_user(&login.user)?;
        let mut connection = self.connection();
        let db = |err| self.database_error(err);
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let created = now();
        let known: Option<String> = transaction
            .query_row(
                "SELECT user FROM oidc_identities WHERE issuer = ?1 AND subject = ?2",
                params![login.issuer, login.subject],
                |row| row.get(0),
            )
            .optional()
            .map_err(db)?;
        let user = match known {
            Some(user) => user,
            None => {
                let taken: bool = transaction
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)",
                        params![login.user],
                        |row| row.get(0),
                    )
                    .map_err(db)?;
                if taken {
                    return Err(StoreError::IdentityClash {
                        user: login.user.clone(),
                    });
                }
                transaction
                    .execute(
                        "INSERT INTO users (name, admin, created) VALUES (?1, ?2, ?3)",
                        params![login.user, login.admin, created],
                    )
                    .map_err(db)?;
                transaction
                    .execute(
                        "INSERT INTO oidc_identities (issuer, subject, user, created)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![login.issuer, login.subject, login.user, created],
                    )
                    .map_err(db)?;
                login.user.clone()
            }
        };
        transaction
            .execute(
                "UPDATE users SET admin = ?1 WHERE name = ?2",
                params![login.admin, user],
            )
            .map_err(db)?;
        let family = new_family_id();
        transaction
            .execute(
                "INSERT INTO oidc_families (id, user, issuer, subject, provider_refresh, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    family,
                    user,
                    login.issuer,
                    login.subject,
                    login.provider_refresh,
                    created
                ],
            )
            .map_err(db)?;
        let issued =
            insert_pair(&transaction, &family, &user, login.admin, login.lifetimes).map_err(db)?;
        transaction.commit().map_err(db)?;
        Ok(issued)
    }

    pub fn oidc_check_refresh(&self, refresh: &str) -> Result<RefreshCheck, StoreError> {
        let Some(TokenKind::Refresh(id)) = TokenKind::of(refresh) else {
            return Ok(RefreshCheck::Refused);
        };
        let connection = self.connection();
        let db = |err| self.database_error(err);
        let row = connection
            .query_row(
                "SELECT t.hash, t.kind, t.expires, t.used, f.revoked, f.id, f.user, f.issuer,
                        f.subject, f.provider_refresh
                 FROM oidc_tokens t JOIN oidc_families f ON f.id = t.family
                 WHERE t.id = ?1",
                params![id],
                |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, Option<i64>>(3)?,
                        row.get::<_, Option<i64>>(4)?,
                        FamilyRecord {
                            id: row.get(5)?,
                            user: row.get(6)?,
                            issuer: row.get(7)?,
                            subject: row.get(8)?,
                            provider_refresh: row.get(9)?,
                        },
                    ))
                },
            )
            .optional()
            .map_err(db)?;
        let Some((hash, kind, expires, used, revoked, family)) = row else {
            return Ok(RefreshCheck::Refused);
        };
        if kind != "refresh" || !hash_matches(&hash, refresh) || revoked.is_some() {
            return Ok(RefreshCheck::Refused);
        }
        if used.is_some() {
            connection
                .execute(
                    "UPDATE oidc_families SET revoked = ?1 WHERE id = ?2 AND revoked IS NULL",
                    params![now(), family.id],
                )
                .map_err(db)?;
            return Ok(RefreshCheck::Reused { user: family.user });
        }
        if expires <= now() {
            return Ok(RefreshCheck::Refused);
        }
        Ok(RefreshCheck::Valid(family))
    }

    pub fn oidc_rotate(
        &self,
        refresh: &str,
        rotation: &Rotation,
    ) -> Result<Option<IssuedTokens>, StoreError> {
        let Some(TokenKind::Refresh(id)) = TokenKind::of(refresh) else {
            return Ok(None);
        };
        let mut connection = self.connection();
        let db = |err| self.database_error(err);
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let row = transaction
            .query_row(
                "SELECT t.hash, t.used, f.id, f.user, f.revoked
                 FROM oidc_tokens t JOIN oidc_families f ON f.id = t.family
                 WHERE t.id = ?1 AND t.kind = 'refresh'",
                params![id],
                |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, Option<i64>>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, Option<i64>>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(db)?;
        let Some((hash, used, family, user, revoked)) = row else {
            return Ok(None);
        };
        if !hash_matches(&hash, refresh) || revoked.is_some() {
            return Ok(None);
        }
        let stamp = now();
        if used.is_some() {
            transaction
                .execute(
                    "UPDATE oidc_families SET revoked = ?1 WHERE id = ?2",
                    params![stamp, family],
                )
                .map_err(db)?;
            transaction.commit().map_err(db)?;
            return Ok(None);
        }
        transaction
            .execute(
                "UPDATE oidc_tokens SET used = ?1 WHERE id = ?2",
                params![stamp, id],
            )
            .map_err(db)?;
        transaction
            .execute(
                "UPDATE users SET admin = ?1 WHERE name = ?2",
                params![rotation.admin, user],
            )
            .map_err(db)?;
        if let Some(provider_refresh) = &rotation.provider_refresh {
            transaction
                .execute(
                    "UPDATE oidc_families SET provider_refresh = ?1 WHERE id = ?2",
                    params![provider_refresh, family],
                )
                .map_err(db)?;
        }
        let issued = insert_pair(
            &transaction,
            &family,
            &user,
            rotation.admin,
            rotation.lifetimes,
        )
        .map_err(db)?;
        transaction.commit().map_err(db)?;
        Ok(Some(issued))
    }

    pub fn oidc_revoke_family(&self, family: &str) -> Result<bool, StoreError> {
        let changed = self
            .connection()
            .execute(
                "UPDATE oidc_families SET revoked = ?1 WHERE id = ?2 AND revoked IS NULL",
                params![now(), family],
            )
            .map_err(|err| self.database_error(err))?;
        Ok(changed > 0)
    }

    pub fn oidc_logout(&self, token: &str) -> Result<Option<FamilyRecord>, StoreError> {
        let Some(kind) = TokenKind::of(token) else {
            return Ok(None);
        };
        let connection = self.connection();
        let db = |err| self.database_error(err);
        let row = connection
            .query_row(
                "SELECT t.hash, t.kind, f.id, f.user, f.issuer, f.subject, f.provider_refresh
                 FROM oidc_tokens t JOIN oidc_families f ON f.id = t.family
                 WHERE t.id = ?1",
                params![kind.id()],
                |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, String>(1)?,
                        FamilyRecord {
                            id: row.get(2)?,
                            user: row.get(3)?,
                            issuer: row.get(4)?,
                            subject: row.get(5)?,
                            provider_refresh: row.get(6)?,
                        },
                    ))
                },
            )
            .optional()
            .map_err(db)?;
        let Some((hash, stored_kind, family)) = row else {
            return Ok(None);
        };
        if stored_kind != kind.column() || !hash_matches(&hash, token) {
            return Ok(None);
        }
        connection
            .execute(
                "UPDATE oidc_families SET revoked = ?1 WHERE id = ?2 AND revoked IS NULL",
                params![now(), family.id],
            )
            .map_err(db)?;
        Ok(Some(family))
    }

    /// Runs `work` on a clone of this store on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&SqliteStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|err| StoreError::Worker(err.to_string()))?
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn issue_token(
        &self,
        user: &str,
        admin: Option<bool>,
    ) -> Result<(TokenRecord, String), StoreError> {
        let user = user.to_string();
        self.blocking(move |store| store.issue_token(&user, admin))
            .await
    }

    async fn authenticate(&self, token: &str) -> Result<Option<Caller>, StoreError> {
        let token = token.to_string();
        self.blocking(move |store| store.authenticate(&token)).await
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.blocking(|store| store.tokens()).await
    }

    async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.blocking(move |store| store.revoke(&id)).await
    }
    async fn oidc_login(&self, login: &OidcLogin) -> Result<IssuedTokens, StoreError> {
        let login = login.clone();
        self.blocking(move |store| store.oidc_login(&login)).await
    }

    async fn oidc_check_refresh(&self, refresh: &str) -> Result<RefreshCheck, StoreError> {
        let refresh = refresh.to_string();
        self.blocking(move |store| store.oidc_check_refresh(&refresh))
            .await
    }

    async fn oidc_rotate(
        &self,
        refresh: &str,
        rotation: &Rotation,
    ) -> Result<Option<IssuedTokens>, StoreError> {
        let refresh = refresh.to_string();
        let rotation = rotation.clone();
        self.blocking(move |store| store.oidc_rotate(&refresh, &rotation))
            .await
    }

    async fn oidc_revoke_family(&self, family: &str) -> Result<bool, StoreError> {
        let family = family.to_string();
        self.blocking(move |store| store.oidc_revoke_family(&family))
            .await
    }

    async fn oidc_logout(&self, token: &str) -> Result<Option<FamilyRecord>, StoreError> {
        let token = token.to_string();
        self.blocking(move |store| store.oidc_logout(&token)).await
    }
}

#[cfg(test)]
mod tests {
    //! What only SQLite has (files, modes, pragmas); what every store does is in
    //! [`super::super::store_conformance`].
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn last_used_is_not_rewritten_within_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let (record, token) = store.issue_token("alice", Some(false)).unwrap();
        store.authenticate(&token).unwrap();
        // Pretend the first use was 30 s ago: the next one must leave it alone.
        let earlier = now() - 30;
        store
            .connection()
            .execute(
                "UPDATE tokens SET last_used = ?1 WHERE id = ?2",
                params![earlier, record.id],
            )
            .unwrap();
        store.authenticate(&token).unwrap();
        assert_eq!(store.tokens().unwrap()[0].last_used, Some(earlier));
    }

    #[test]
    fn files_are_private_to_the_owner() {
        let parent = tempfile::tempdir().unwrap();
        let state_dir = parent.path().join("state");
        let store = SqliteStore::open(&state_dir).unwrap();
        store.issue_token("alice", Some(false)).unwrap();
        assert_eq!(mode(&state_dir), 0o700);
        assert_eq!(mode(&state_dir.join(DATABASE_FILE)), 0o600);
        let wal = state_dir.join("cubbi.db-wal");
        assert!(wal.exists(), "WAL journal mode");
        assert_eq!(mode(&wal), 0o600);
    }

    #[test]
    fn existing_folder_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        SqliteStore::open(dir.path()).unwrap();
        assert_eq!(mode(dir.path()), 0o750);
    }

    #[test]
    fn database_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path()).unwrap());
        let path = dir.path().join(DATABASE_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let Err(err) = SqliteStore::open(dir.path()) else {
            panic!("a world-readable database was opened");
        };
        let message = err.to_string();
        assert!(
            message.contains(&format!("chmod 600 {}", path.display())),
            "{message}"
        );
    }

    #[test]
    fn token_text_never_reaches_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let (_, token) = store.issue_token("alice", Some(false)).unwrap();
        store.authenticate(&token).unwrap();
        // Everything after `cubbi_<id>_` (the secret may itself hold a `_`).
        let secret = &token[TOKEN_PREFIX.len() + ID_HEX_DIGITS + 1..];
        assert_eq!(secret.len(), SECRET_CHARS);
        let issued = store
            .oidc_login(&OidcLogin {
                issuer: "https://id.example.test".into(),
                subject: "sub".into(),
                user: "bob".into(),
                admin: false,
                provider_refresh: None,
                lifetimes: super::super::auth_tokens::Lifetimes {
                    access: 60,
                    refresh: 60,
                },
            })
            .unwrap();
        assert!(store.authenticate(&issued.access).unwrap().is_some());
        let access_secret = &issued.access[issued.access.len() - SECRET_CHARS..];
        let refresh_secret = &issued.refresh[issued.refresh.len() - SECRET_CHARS..];
        drop(store);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let found = |needle: &str| {
                bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            };
            assert!(!found(&token), "{} holds the token", path.display());
            assert!(!found(secret), "{} holds the secret", path.display());
            for oidc_secret in [access_secret, refresh_secret] {
                assert!(
                    !found(oidc_secret),
                    "{} holds a login token",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn reopening_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let (_, token) = SqliteStore::open(dir.path())
            .unwrap()
            .issue_token("alice", Some(false))
            .unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let version: i64 = store
            .connection()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        assert!(store.authenticate(&token).unwrap().is_some());
    }

    #[test]
    fn database_from_a_newer_cubbi_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .connection()
            .pragma_update(None, "user_version", MIGRATIONS.len() as i64 + 1)
            .unwrap();
        drop(store);
        let Err(err) = SqliteStore::open(dir.path()) else {
            panic!("a newer schema was opened");
        };
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
        assert!(err.to_string().contains("newer cubbi"), "{err}");
    }

    #[test]
    fn user_names_follow_the_label_alphabet() {
        for good in ["a", "alice", "bob-2", "x_y", &"a".repeat(32)] {
            assert!(validate_user(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Alice",
            "1abc",
            "-a",
            "a b",
            "a.b",
            "é",
            "a/b",
            &"a".repeat(33),
        ] {
            let err = validate_user(bad).unwrap_err();
            assert!(err.to_string().contains("lowercase letter first"), "{err}");
        }
    }
}
