//! Users and API tokens in PostgreSQL, for a service that runs as several processes (or
//! hosts) over one database: `[store] url = "postgres://..."` in service.toml. The same
//! [`Store`] as [`super::store::SqliteStore`], the same token format and hashing, and the same
//! conformance suite ([`super::store_conformance`]).
//!
//! The password, when the server wants one, comes from `[store] password_file` (mode 0600),
//! never from the URL, the command line or the environment, and no message names it.
//!
//! TLS: with `sslmode=require` in the URL, or `[store] ca_file`, the connection is TLS
//! (rustls) and the server's certificate is checked against the CA file, else the system's
//! roots, for the URL's host name. Without either, it is plain (a local socket or loopback).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Config, NoTls};

use super::auth_tokens::{
    FamilyRecord, IssuedTokens, Lifetimes, OidcLogin, RefreshCheck, Rotation, TokenKind,
    new_family_id, new_pair,
};
use super::store::{
    Caller, Store, StoreError, StoredToken, TokenRecord, hash_matches, new_token, now, token_hash,
    token_id, validate_user,
};

/// Schema migrations, applied in order; `cubbi_schema.version` records how many have been
/// applied. Append new ones; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: users and their API tokens (`seq` keeps the order of issue).
    "CREATE TABLE users (
        name TEXT PRIMARY KEY,
        admin BOOLEAN NOT NULL DEFAULT FALSE,
        created BIGINT NOT NULL
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        seq BIGSERIAL NOT NULL,
        user_name TEXT NOT NULL REFERENCES users(name),
        hash BYTEA NOT NULL,
        created BIGINT NOT NULL,
        last_used BIGINT,
        revoked BIGINT
    );
    CREATE INDEX tokens_by_user ON tokens(user_name);",
    // 2: each user's registered projects: the sealed record text (see
    // crate::projects::store), keyed by user and project id; names are unique per user.
    "CREATE TABLE projects (
        user_name TEXT NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (user_name, id),
        UNIQUE (user_name, name)
    );",
    // 3: OpenID Connect logins (see the SQLite store's migration 3).
    "CREATE TABLE oidc_identities (
        issuer TEXT NOT NULL,
        subject TEXT NOT NULL,
        user_name TEXT NOT NULL UNIQUE REFERENCES users(name),
        created BIGINT NOT NULL,
        PRIMARY KEY (issuer, subject)
    );
    CREATE TABLE oidc_families (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL REFERENCES users(name),
        issuer TEXT NOT NULL,
        subject TEXT NOT NULL,
        provider_refresh TEXT,
        created BIGINT NOT NULL,
        revoked BIGINT
    );
    CREATE TABLE oidc_tokens (
        id TEXT PRIMARY KEY,
        family TEXT NOT NULL REFERENCES oidc_families(id),
        kind TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
        hash BYTEA NOT NULL,
        created BIGINT NOT NULL,
        expires BIGINT NOT NULL,
        used BIGINT
    );
    CREATE INDEX oidc_tokens_by_family ON oidc_tokens(family);",
];

/// Why a project row was not written, as [`crate::projects::ProjectError`] says it.
#[derive(Debug)]
pub enum RowRefusal {
    /// The id is there already, under this name.
    IdTaken(String),
    /// Another project (this id) has the name.
    NameTaken(String),
    /// No row with the id.
    Missing,
}

/// The advisory lock that serialises migrations between processes starting at once.
const MIGRATION_LOCK: i64 = 0x6375_6262_6900_0001;
/// How long a connection attempt, or a wait for a free pooled connection, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const POOL_SIZE: usize = 16;

/// The store in a PostgreSQL database. Clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// `user@host:port/database`, for messages: never the password.
    database: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// Checks a `[store] url`: a postgres URL or key=value string without a password. The error
/// never quotes the URL, which could hold one.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("give a postgres://USER@HOST:PORT/DATABASE URL".into());
    }
    let config = Config::from_str(url).map_err(|err| format!("not a PostgreSQL URL: {err}"))?;
    if config.get_password().is_some() {
        return Err(
            "the URL holds a password: put it in store.password_file (mode 0600) instead".into(),
        );
    }
    Ok(())
}

/// An error and its causes, `: `-joined: tokio-postgres says only "db error" at the top and
/// puts the server's message in its source. The server's messages quote no parameter.
pub fn reason(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `user@host:port/database` of a config.
fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

/// The password in `path`, which only its owner may read; its last line ending is dropped.
fn read_password(path: &Path) -> Result<String, StoreError> {
    let error = |reason: String| StoreError::PasswordFile {
        path: path.to_path_buf(),
        reason,
    };
    let mode = std::fs::metadata(path)
        .map_err(|err| error(err.to_string()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(error(format!(
            "it is readable by other users (mode {:04o}): run `chmod 600 {}`",
            mode & 0o7777,
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|err| error(err.to_string()))?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    Ok(password.to_string())
}

/// The TLS client for a server whose certificate chains to `ca_file`, else to a system root.
fn tls_connector(
    ca_file: Option<&Path>,
    database: &str,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let error = |reason: String| StoreError::Postgres {
        database: database.to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in super::tls::load_certs(path).map_err(|err| error(err.to_string()))? {
                roots
                    .add(cert)
                    .map_err(|err| error(format!("store.ca_file {}: {err}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(error(
                    "TLS was asked for (sslmode=require) but the system has no CA                      certificates: give store.ca_file"
                        .into(),
                ));
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| error(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PgStore {
    /// Connects to `url` (password from `password_file`; TLS checked against `ca_file` when
    /// given), and brings the schema up to date. Refuses a database from a newer cubbi.
    pub async fn connect(
        url: &str,
        password_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<Self, StoreError> {
        check_url(url).map_err(|reason| StoreError::Postgres {
            database: "in store.url".into(),
            reason,
        })?;
        let mut config = Config::from_str(url).map_err(|err| StoreError::Postgres {
            database: "in store.url".into(),
            reason: err.to_string(),
        })?;
        let database = describe(&config);
        if let Some(path) = password_file {
            config.password(read_password(path)?);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("cubbi serve");
        if ca_file.is_some() {
            config.ssl_mode(SslMode::Require);
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if config.get_ssl_mode() == SslMode::Require {
            let tls = tls_connector(ca_file, &database)?;
            Manager::from_config(config, tls, manager_config)
        } else {
            // `prefer` (the default) with no TLS client is plain: a local server's
            // self-signed certificate must not fail a setup that never asked for TLS.
            Manager::from_config(config, NoTls, manager_config)
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|err| StoreError::Postgres {
                database: database.clone(),
                reason: reason(&err),
            })?;
        let store = Self { pool, database };
        store.migrate().await?;
        Ok(store)
    }

    fn error(&self, err: impl std::error::Error) -> StoreError {
        StoreError::Postgres {
            database: self.database.clone(),
            reason: reason(&err),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|err| self.error(err))
    }

    /// Applies the migrations this database lacks, in one transaction under an advisory lock,
    /// so that two services starting at once do not both apply one.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.error(e))?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| self.error(e))?;
        transaction
            .batch_execute("CREATE TABLE IF NOT EXISTS cubbi_schema (version BIGINT NOT NULL)")
            .await
            .map_err(|e| self.error(e))?;
        let row = transaction
            .query_opt("SELECT version FROM cubbi_schema", &[])
            .await
            .map_err(|e| self.error(e))?;
        let found: i64 = match row {
            Some(row) => row.get(0),
            None => {
                transaction
                    .execute("INSERT INTO cubbi_schema (version) VALUES (0)", &[])
                    .await
                    .map_err(|e| self.error(e))?;
                0
            }
        };
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::PostgresTooNew {
                database: self.database.clone(),
                found,
                known,
            });
        }
        for (applied, migration) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
            transaction
                .batch_execute(migration)
                .await
                .map_err(|e| self.error(e))?;
            transaction
                .execute(
                    "UPDATE cubbi_schema SET version = $1",
                    &[&(applied as i64 + 1)],
                )
                .await
                .map_err(|e| self.error(e))?;
        }
        transaction.commit().await.map_err(|e| self.error(e))
    }

    /// `postgres://user@host:port/database`, for messages.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// `(id, record)` of every project of `user`, by name.
    pub async fn project_rows(&self, user: &str) -> Result<Vec<(String, String)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, record FROM projects WHERE user_name = $1 ORDER BY name",
                &[&user],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    pub async fn project_row(&self, user: &str, id: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT record FROM projects WHERE user_name = $1 AND id = $2",
                &[&user, &id],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Inserts (`replace` false) or replaces a project row, keeping names unique per user.
    /// The user's rows are changed under an advisory lock on the user, so the checks and the
    /// write see one state whichever process makes them.
    pub async fn put_project_row(
        &self,
        user: &str,
        id: &str,
        name: &str,
        record: &str,
        replace: bool,
    ) -> Result<Result<(), RowRefusal>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.error(e))?;
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock(hashtext('cubbi projects ' || $1))",
                &[&user],
            )
            .await
            .map_err(|e| self.error(e))?;
        let existing = transaction
            .query_opt(
                "SELECT name FROM projects WHERE user_name = $1 AND id = $2",
                &[&user, &id],
            )
            .await
            .map_err(|e| self.error(e))?;
        match (existing, replace) {
            (Some(row), false) => return Ok(Err(RowRefusal::IdTaken(row.get(0)))),
            (None, true) => return Ok(Err(RowRefusal::Missing)),
            _ => {}
        }
        let holder = transaction
            .query_opt(
                "SELECT id FROM projects WHERE user_name = $1 AND name = $2 AND id <> $3",
                &[&user, &name, &id],
            )
            .await
            .map_err(|e| self.error(e))?;
        if let Some(row) = holder {
            return Ok(Err(RowRefusal::NameTaken(row.get(0))));
        }
        let statement = if replace {
            "UPDATE projects SET name = $3, record = $4 WHERE user_name = $1 AND id = $2"
        } else {
            "INSERT INTO projects (user_name, id, name, record) VALUES ($1, $2, $3, $4)"
        };
        transaction
            .execute(statement, &[&user, &id, &name, &record])
            .await
            .map_err(|e| self.error(e))?;
        transaction.commit().await.map_err(|e| self.error(e))?;
        Ok(Ok(()))
    }

    pub async fn delete_project_row(&self, user: &str, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "DELETE FROM projects WHERE user_name = $1 AND id = $2",
                &[&user, &id],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(changed > 0)
    }

    /// Every user with a project.
    pub async fn project_users(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT DISTINCT user_name FROM projects ORDER BY user_name",
                &[],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Some `(user, id)` whose record holds a sealed credential.
    pub async fn a_sealed_project(&self) -> Result<Option<(String, String)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT user_name, id FROM projects WHERE strpos(record, 'sealed = ') > 0 LIMIT 1",
                &[],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    /// An OpenID Connect access token: genuine, unexpired, its family live.
    async fn authenticate_access(
        &self,
        id: &str,
        token: &str,
    ) -> Result<Option<Caller>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT t.hash, f.user_name, u.admin, t.expires, f.revoked, t.kind
                 FROM oidc_tokens t JOIN oidc_families f ON f.id = t.family
                 JOIN users u ON u.name = f.user_name
                 WHERE t.id = $1",
                &[&id],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(row.and_then(|row| {
            let hash: Vec<u8> = row.get(0);
            let expires: i64 = row.get(3);
            let revoked: Option<i64> = row.get(4);
            let kind: String = row.get(5);
            let live = kind == "access" && revoked.is_none() && expires > now();
            (live && hash_matches(&hash, token)).then(|| Caller {
                user: row.get(1),
                admin: row.get(2),
            })
        }))
    }

    /// Inserts a new access and refresh token of `family` and returns them.
    async fn insert_pair(
        &self,
        transaction: &deadpool_postgres::Transaction<'_>,
        family: &str,
        user: &str,
        admin: bool,
        lifetimes: Lifetimes,
    ) -> Result<IssuedTokens, StoreError> {
        let created = now();
        let ((access_id, access), (refresh_id, refresh)) = new_pair();
        let access_expires = created + lifetimes.access;
        let refresh_expires = created + lifetimes.refresh;
        for (id, token, kind, expires) in [
            (&access_id, &access, "access", access_expires),
            (&refresh_id, &refresh, "refresh", refresh_expires),
        ] {
            transaction
                .execute(
                    "INSERT INTO oidc_tokens (id, family, kind, hash, created, expires)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[id, &family, &kind, &token_hash(token), &created, &expires],
                )
                .await
                .map_err(|e| self.error(e))?;
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

    fn family_of(row: &tokio_postgres::Row, at: usize) -> FamilyRecord {
        FamilyRecord {
            id: row.get(at),
            user: row.get(at + 1),
            issuer: row.get(at + 2),
            subject: row.get(at + 3),
            provider_refresh: row.get(at + 4),
        }
    }

    async fn revoke_family_now(&self, family: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE oidc_families SET revoked = $1 WHERE id = $2 AND revoked IS NULL",
                &[&now(), &family],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(changed > 0)
    }

    /// How many migrations this cubbi knows.
    pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

    /// The schema version recorded in the database.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT version FROM cubbi_schema", &[])
            .await
            .map_err(|e| self.error(e))?;
        Ok(row.get(0))
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn issue_token(
        &self,
        user: &str,
        admin: Option<bool>,
    ) -> Result<(TokenRecord, String), StoreError> {
        validate_user(user)?;
        // 48 random bits make a clash rare, not impossible.
        const ATTEMPTS: u32 = 3;
        let mut client = self.client().await?;
        for _ in 0..ATTEMPTS {
            let created = now();
            let (id, token) = new_token();
            let transaction = client.transaction().await.map_err(|e| self.error(e))?;
            // An existing user's flag changes only when asked: a token for an admin made
            // without `--admin` must not demote them.
            let row = transaction
                .query_one(
                    "INSERT INTO users (name, admin, created) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET admin = COALESCE($4, users.admin)
                     RETURNING admin",
                    &[&user, &admin.unwrap_or(false), &created, &admin],
                )
                .await
                .map_err(|e| self.error(e))?;
            let admin: bool = row.get(0);
            let inserted = transaction
                .execute(
                    "INSERT INTO tokens (id, user_name, hash, created) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (id) DO NOTHING",
                    &[&id, &user, &token_hash(&token), &created],
                )
                .await
                .map_err(|e| self.error(e))?;
            if inserted == 0 {
                continue;
            }
            transaction.commit().await.map_err(|e| self.error(e))?;
            return Ok((TokenRecord::issued(id, user, admin, created), token));
        }
        Err(StoreError::IdCollisions { attempts: ATTEMPTS })
    }

    async fn authenticate(&self, token: &str) -> Result<Option<Caller>, StoreError> {
        if let Some(TokenKind::Access(id)) = TokenKind::of(token) {
            return self.authenticate_access(id, token).await;
        }
        let Some(id) = token_id(token) else {
            return Ok(None);
        };
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT tokens.hash, tokens.user_name, users.admin, tokens.last_used,
                        tokens.revoked
                 FROM tokens JOIN users ON users.name = tokens.user_name
                 WHERE tokens.id = $1",
                &[&id],
            )
            .await
            .map_err(|e| self.error(e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let stored = StoredToken {
            hash: row.get(0),
            caller: Caller {
                user: row.get(1),
                admin: row.get(2),
            },
            last_used: row.get(3),
            revoked: row.get(4),
        };
        let Some((caller, touch)) = stored.judge(token) else {
            return Ok(None);
        };
        if let Some(now) = touch {
            client
                .execute(
                    "UPDATE tokens SET last_used = $1 WHERE id = $2",
                    &[&now, &id],
                )
                .await
                .map_err(|e| self.error(e))?;
        }
        Ok(Some(caller))
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT tokens.id, tokens.user_name, users.admin, tokens.created,
                        tokens.last_used, tokens.revoked
                 FROM tokens JOIN users ON users.name = tokens.user_name
                 ORDER BY tokens.created, tokens.seq",
                &[],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows
            .iter()
            .map(|row| TokenRecord {
                id: row.get(0),
                user: row.get(1),
                admin: row.get(2),
                created: row.get(3),
                last_used: row.get(4),
                revoked: row.get(5),
            })
            .collect())
    }

    async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE tokens SET revoked = $1 WHERE id = $2 AND revoked IS NULL",
                &[&now(), &id],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(changed > 0)
    }

    async fn oidc_login(&self, login: &OidcLogin) -> Result<IssuedTokens, StoreError> {
        validate_user(&login.user)?;
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.error(e))?;
        // One login of an identity at a time, whichever process takes it.
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock(hashtext('cubbi oidc ' || $1 || ' ' || $2))",
                &[&login.issuer, &login.subject],
            )
            .await
            .map_err(|e| self.error(e))?;
        let created = now();
        let known = transaction
            .query_opt(
                "SELECT user_name FROM oidc_identities WHERE issuer = $1 AND subject = $2",
                &[&login.issuer, &login.subject],
            )
            .await
            .map_err(|e| self.error(e))?;
        let user: String = match known {
            Some(row) => row.get(0),
            None => {
                let inserted = transaction
                    .execute(
                        "INSERT INTO users (name, admin, created) VALUES ($1, $2, $3)
                         ON CONFLICT (name) DO NOTHING",
                        &[&login.user, &login.admin, &created],
                    )
                    .await
                    .map_err(|e| self.error(e))?;
                if inserted == 0 {
                    return Err(StoreError::IdentityClash {
                        user: login.user.clone(),
                    });
                }
                transaction
                    .execute(
                        "INSERT INTO oidc_identities (issuer, subject, user_name, created)
                         VALUES ($1, $2, $3, $4)",
                        &[&login.issuer, &login.subject, &login.user, &created],
                    )
                    .await
                    .map_err(|e| self.error(e))?;
                login.user.clone()
            }
        };
        transaction
            .execute(
                "UPDATE users SET admin = $1 WHERE name = $2",
                &[&login.admin, &user],
            )
            .await
            .map_err(|e| self.error(e))?;
        let family = new_family_id();
        transaction
            .execute(
                "INSERT INTO oidc_families
                    (id, user_name, issuer, subject, provider_refresh, created)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &family,
                    &user,
                    &login.issuer,
                    &login.subject,
                    &login.provider_refresh,
                    &created,
                ],
            )
            .await
            .map_err(|e| self.error(e))?;
        let issued = self
            .insert_pair(&transaction, &family, &user, login.admin, login.lifetimes)
            .await?;
        transaction.commit().await.map_err(|e| self.error(e))?;
        Ok(issued)
    }

    async fn oidc_check_refresh(&self, refresh: &str) -> Result<RefreshCheck, StoreError> {
        let Some(TokenKind::Refresh(id)) = TokenKind::of(refresh) else {
            return Ok(RefreshCheck::Refused);
        };
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT t.hash, t.kind, t.expires, t.used, f.revoked, f.id, f.user_name,
                        f.issuer, f.subject, f.provider_refresh
                 FROM oidc_tokens t JOIN oidc_families f ON f.id = t.family
                 WHERE t.id = $1",
                &[&id],
            )
            .await
            .map_err(|e| self.error(e))?;
        let Some(row) = row else {
            return Ok(RefreshCheck::Refused);
        };
        let hash: Vec<u8> = row.get(0);
        let kind: String = row.get(1);
        let expires: i64 = row.get(2);
        let used: Option<i64> = row.get(3);
        let revoked: Option<i64> = row.get(4);
        let family = Self::family_of(&row, 5);
        if kind != "refresh" || !hash_matches(&hash, refresh) || revoked.is_some() {
            return Ok(RefreshCheck::Refused);
        }
        if used.is_some() {
            self.revoke_family_now(&family.id).await?;
            return Ok(RefreshCheck::Reused { user: family.user });
        }
        if expires <= now() {
            return Ok(RefreshCheck::Refused);
        }
        Ok(RefreshCheck::Valid(family))
    }

    async fn oidc_rotate(
        &self,
        refresh: &str,
        rotation: &Rotation,
    ) -> Result<Option<IssuedTokens>, StoreError> {
        let Some(TokenKind::Refresh(id)) = TokenKind::of(refresh) else {
            return Ok(None);
        };
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.error(e))?;
        // The row lock makes a second rotation of the same token wait, then see it spent.
        let row = transaction
            .query_opt(
                "SELECT t.hash, t.used, f.id, f.user_name, f.revoked
                 FROM oidc_tokens t JOIN oidc_families f ON f.id = t.family
                 WHERE t.id = $1 AND t.kind = 'refresh'
                 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(|e| self.error(e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let hash: Vec<u8> = row.get(0);
        let used: Option<i64> = row.get(1);
        let family: String = row.get(2);
        let user: String = row.get(3);
        let revoked: Option<i64> = row.get(4);
        if !hash_matches(&hash, refresh) || revoked.is_some() {
            return Ok(None);
        }
        let stamp = now();
        if used.is_some() {
            transaction
                .execute(
                    "UPDATE oidc_families SET revoked = $1 WHERE id = $2",
                    &[&stamp, &family],
                )
                .await
                .map_err(|e| self.error(e))?;
            transaction.commit().await.map_err(|e| self.error(e))?;
            return Ok(None);
        }
        transaction
            .execute(
                "UPDATE oidc_tokens SET used = $1 WHERE id = $2",
                &[&stamp, &id],
            )
            .await
            .map_err(|e| self.error(e))?;
        transaction
            .execute(
                "UPDATE users SET admin = $1 WHERE name = $2",
                &[&rotation.admin, &user],
            )
            .await
            .map_err(|e| self.error(e))?;
        if let Some(provider_refresh) = &rotation.provider_refresh {
            transaction
                .execute(
                    "UPDATE oidc_families SET provider_refresh = $1 WHERE id = $2",
                    &[provider_refresh, &family],
                )
                .await
                .map_err(|e| self.error(e))?;
        }
        let issued = self
            .insert_pair(
                &transaction,
                &family,
                &user,
                rotation.admin,
                rotation.lifetimes,
            )
            .await?;
        transaction.commit().await.map_err(|e| self.error(e))?;
        Ok(Some(issued))
    }

    async fn oidc_revoke_family(&self, family: &str) -> Result<bool, StoreError> {
        self.revoke_family_now(family).await
    }

    async fn oidc_logout(&self, token: &str) -> Result<Option<FamilyRecord>, StoreError> {
        let Some(kind) = TokenKind::of(token) else {
            return Ok(None);
        };
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT t.hash, t.kind, f.id, f.user_name, f.issuer, f.subject,
                        f.provider_refresh
                 FROM oidc_tokens t JOIN oidc_families f ON f.id = t.family
                 WHERE t.id = $1",
                &[&kind.id()],
            )
            .await
            .map_err(|e| self.error(e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let hash: Vec<u8> = row.get(0);
        let stored_kind: String = row.get(1);
        if stored_kind != kind.column() || !hash_matches(&hash, token) {
            return Ok(None);
        }
        let family = Self::family_of(&row, 2);
        self.revoke_family_now(&family.id).await?;
        Ok(Some(family))
    }

    fn postgres(&self) -> Option<&PgStore> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_passwords_or_other_schemes_are_refused() {
        assert!(check_url("postgres://cubbi@127.0.0.1:5432/cubbi").is_ok());
        assert!(check_url("postgresql://cubbi@%2Frun%2Fpostgresql/cubbi").is_ok());
        let err = check_url("postgres://cubbi:hunter2@db/cubbi").unwrap_err();
        assert!(err.contains("password_file"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(check_url("mysql://db/cubbi").is_err());
        assert!(check_url("host=db password=x").is_err());
    }

    #[test]
    fn the_description_names_no_password() {
        let mut config = Config::from_str("postgres://cubbi@db.example:6543/state").unwrap();
        config.password("hunter2");
        assert_eq!(describe(&config), "postgres://cubbi@db.example:6543/state");
    }

    #[test]
    fn a_password_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_password(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password(&path).unwrap(), "hunter2");
    }
}
