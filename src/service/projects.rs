//! The service's projects: each user's registered repositories, one row per project in the
//! `projects` table of `cubbi.db` (or of the PostgreSQL database `[store] url` names, so
//! that services sharing it share projects), holding the same sealed record text as a local project
//! file. Credentials are sealed under the service's key (`projects.storage.key`, else
//! `STATE_DIR/project.key`, created 0600 on first start). Every query is filtered by the
//! user, so another user's projects are invisible, and every change is one transaction whose
//! constraints (`PRIMARY KEY (user, id)`, `UNIQUE (user, name)`) make ids and names unique.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::config::ServiceConfig;
use super::pg_store::{PgStore, RowRefusal};
use super::store::{StoreError, open_database};
use crate::projects::ProjectError;
use crate::projects::crypto::ProjectKey;
use crate::projects::records::{ProjectRecords, Record};
use crate::projects::store::ProjectStore;

/// The key file in the state folder when the config gives no key.
pub const KEY_FILE: &str = "project.key";

/// The `projects` table, shared by every user's [`UserProjects`].
pub struct ProjectDb {
    /// The SQLite file, or `postgres://user@host:port/db`: for messages.
    path: PathBuf,
    backend: Backend,
}

enum Backend {
    // One connection behind a lock, like the token store: calls are short and local.
    Sqlite(Mutex<Connection>),
    Postgres(PgStore),
}

/// Waits for PostgreSQL work from the synchronous [`ProjectRecords`] calls, which the
/// service makes on its blocking pool or on a worker of its multi-threaded runtime.
fn wait<T>(
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, ProjectError> {
    let handle = tokio::runtime::Handle::try_current().map_err(|err| {
        ProjectError::Refused(format!(
            "the PostgreSQL project store needs a runtime: {err}"
        ))
    })?;
    // block_in_place panics there; the service's runtime is multi-threaded.
    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
        return Err(ProjectError::Refused(
            "the PostgreSQL project store needs a multi-threaded runtime".into(),
        ));
    }
    tokio::task::block_in_place(|| handle.block_on(work)).map_err(|err| ProjectError::Database {
        path: PathBuf::new(),
        reason: err.to_string(),
    })
}

impl std::fmt::Debug for ProjectDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectDb")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ProjectDb {
    /// Opens `STATE_DIR/cubbi.db`, bringing its schema up to date.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let (path, connection) = open_database(state_dir)?;
        Ok(Self {
            path,
            backend: Backend::Sqlite(Mutex::new(connection)),
        })
    }

    /// The `projects` table of a PostgreSQL store (its migrations made it).
    pub fn on_postgres(store: PgStore) -> Self {
        Self {
            path: PathBuf::from(store.database()),
            backend: Backend::Postgres(store),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connection(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
        // Every change is a transaction that rolls back when dropped: a panic while holding
        // the lock leaves nothing half-done.
        connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn error(&self, err: rusqlite::Error) -> ProjectError {
        ProjectError::Database {
            path: self.path.clone(),
            reason: err.to_string(),
        }
    }

    /// One user's projects.
    pub fn of_user(self: &Arc<Self>, user: &str) -> UserProjects {
        UserProjects {
            db: Arc::clone(self),
            user: user.to_string(),
        }
    }

    /// Every user with a project.
    fn users(&self) -> Result<Vec<String>, ProjectError> {
        let connection = match &self.backend {
            Backend::Sqlite(connection) => Self::connection(connection),
            Backend::Postgres(pg) => return wait(pg.project_users()),
        };
        let mut statement = connection
            .prepare("SELECT DISTINCT user FROM projects ORDER BY user")
            .map_err(|err| self.error(err))?;
        let users: Result<Vec<String>, _> = statement
            .query_map([], |row| row.get(0))
            .map_err(|err| self.error(err))?
            .collect();
        users.map_err(|err| self.error(err))
    }

    /// Some `(user, id)` whose record holds a sealed credential, to check the key against.
    fn a_sealed_record(&self) -> Result<Option<(String, String)>, ProjectError> {
        let connection = match &self.backend {
            Backend::Sqlite(connection) => Self::connection(connection),
            Backend::Postgres(pg) => return wait(pg.a_sealed_project()),
        };
        connection
            .query_row(
                "SELECT user, id FROM projects WHERE instr(record, 'sealed = ') > 0 LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|err| self.error(err))
    }
}

/// The records of one service user.
#[derive(Debug, Clone)]
pub struct UserProjects {
    db: Arc<ProjectDb>,
    user: String,
}

impl UserProjects {
    /// A PostgreSQL refusal as the error the SQLite path gives.
    fn refused(
        &self,
        id: &str,
        name: &str,
        outcome: Result<(), RowRefusal>,
    ) -> Result<(), ProjectError> {
        outcome.map_err(|refusal| match refusal {
            RowRefusal::IdTaken(name) => ProjectError::AlreadyExists {
                id: id.to_string(),
                name,
            },
            RowRefusal::NameTaken(holder) => ProjectError::NameTaken {
                name: name.to_string(),
                id: holder,
            },
            RowRefusal::Missing => ProjectError::NotFound {
                reference: id.to_string(),
            },
        })
    }

    /// The id of the project called `name`, other than `id`.
    fn holder_of(
        connection: &Connection,
        user: &str,
        name: &str,
        id: &str,
    ) -> rusqlite::Result<Option<String>> {
        connection
            .query_row(
                "SELECT id FROM projects WHERE user = ?1 AND name = ?2 AND id <> ?3",
                params![user, name, id],
                |row| row.get(0),
            )
            .optional()
    }
}

impl ProjectRecords for UserProjects {
    fn owner(&self) -> Option<&str> {
        Some(&self.user)
    }

    fn location(&self, id: &str) -> PathBuf {
        // Not a file: where the row is, for messages about it.
        PathBuf::from(format!(
            "{} (project {id} of user {})",
            self.db.path.display(),
            self.user
        ))
    }

    fn list(&self) -> Result<Vec<Record>, ProjectError> {
        let connection = match &self.db.backend {
            Backend::Sqlite(connection) => ProjectDb::connection(connection),
            Backend::Postgres(pg) => {
                let rows = wait(pg.project_rows(&self.user))?;
                return Ok(rows
                    .into_iter()
                    .map(|(id, text)| Record {
                        location: self.location(&id),
                        text,
                    })
                    .collect());
            }
        };
        let mut statement = connection
            .prepare("SELECT id, record FROM projects WHERE user = ?1 ORDER BY name")
            .map_err(|err| self.db.error(err))?;
        let rows = statement
            .query_map(params![self.user], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|err| self.db.error(err))?;
        Ok(rows
            .into_iter()
            .map(|(id, text)| Record {
                location: self.location(&id),
                text,
            })
            .collect())
    }

    fn get(&self, id: &str) -> Result<Option<Record>, ProjectError> {
        let text: Option<String> = match &self.db.backend {
            Backend::Sqlite(connection) => ProjectDb::connection(connection)
                .query_row(
                    "SELECT record FROM projects WHERE user = ?1 AND id = ?2",
                    params![self.user, id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|err| self.db.error(err))?,
            Backend::Postgres(pg) => wait(pg.project_row(&self.user, id))?,
        };
        Ok(text.map(|text| Record {
            location: self.location(id),
            text,
        }))
    }

    fn insert(&self, id: &str, name: &str, text: &str) -> Result<(), ProjectError> {
        let mut connection = match &self.db.backend {
            Backend::Sqlite(connection) => ProjectDb::connection(connection),
            Backend::Postgres(pg) => {
                return self.refused(
                    id,
                    name,
                    wait(pg.put_project_row(&self.user, id, name, text, false))?,
                );
            }
        };
        // Immediate: the checks and the insert see and hold the same database state.
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|err| self.db.error(err))?;
        let existing: Option<String> = transaction
            .query_row(
                "SELECT name FROM projects WHERE user = ?1 AND id = ?2",
                params![self.user, id],
                |row| row.get(0),
            )
            .optional()
            .map_err(|err| self.db.error(err))?;
        if let Some(name) = existing {
            return Err(ProjectError::AlreadyExists {
                id: id.to_string(),
                name,
            });
        }
        if let Some(holder) =
            Self::holder_of(&transaction, &self.user, name, id).map_err(|err| self.db.error(err))?
        {
            return Err(ProjectError::NameTaken {
                name: name.to_string(),
                id: holder,
            });
        }
        transaction
            .execute(
                "INSERT INTO projects (user, id, name, record) VALUES (?1, ?2, ?3, ?4)",
                params![self.user, id, name, text],
            )
            .map_err(|err| self.db.error(err))?;
        transaction.commit().map_err(|err| self.db.error(err))
    }

    fn replace(&self, id: &str, name: &str, text: &str) -> Result<(), ProjectError> {
        let mut connection = match &self.db.backend {
            Backend::Sqlite(connection) => ProjectDb::connection(connection),
            Backend::Postgres(pg) => {
                return self.refused(
                    id,
                    name,
                    wait(pg.put_project_row(&self.user, id, name, text, true))?,
                );
            }
        };
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|err| self.db.error(err))?;
        if let Some(holder) =
            Self::holder_of(&transaction, &self.user, name, id).map_err(|err| self.db.error(err))?
        {
            return Err(ProjectError::NameTaken {
                name: name.to_string(),
                id: holder,
            });
        }
        let changed = transaction
            .execute(
                "UPDATE projects SET name = ?3, record = ?4 WHERE user = ?1 AND id = ?2",
                params![self.user, id, name, text],
            )
            .map_err(|err| self.db.error(err))?;
        if changed == 0 {
            return Err(ProjectError::NotFound {
                reference: id.to_string(),
            });
        }
        transaction.commit().map_err(|err| self.db.error(err))
    }

    fn delete(&self, id: &str) -> Result<bool, ProjectError> {
        let connection = match &self.db.backend {
            Backend::Sqlite(connection) => ProjectDb::connection(connection),
            Backend::Postgres(pg) => return wait(pg.delete_project_row(&self.user, id)),
        };
        let changed = connection
            .execute(
                "DELETE FROM projects WHERE user = ?1 AND id = ?2",
                params![self.user, id],
            )
            .map_err(|err| self.db.error(err))?;
        Ok(changed > 0)
    }
}

/// Everything the service needs to hand each user their project store.
#[derive(Clone)]
pub struct ServiceProjects {
    db: Arc<ProjectDb>,
    key: ProjectKey,
    known_hosts: Vec<String>,
}

impl std::fmt::Debug for ServiceProjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceProjects")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// Why the service cannot keep projects.
#[derive(Debug, thiserror::Error)]
pub enum ProjectsSetupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Project(#[from] ProjectError),
    #[error(
        "the project key ({origin}) does not open the credentials already stored in {path}: \
         start the service with the key they were stored with (projects.storage.key in \
         service.toml, or {key_file})"
    )]
    WrongKey {
        origin: String,
        path: PathBuf,
        key_file: PathBuf,
    },
}

impl ServiceProjects {
    /// Opens the projects of the service `config` describes: its database, its key (from the
    /// config, else the state folder's key file, created on first use), its known hosts. A
    /// key that does not open what is stored stops the service here, with a clear error,
    /// instead of failing every request later.
    pub fn open(config: &ServiceConfig) -> Result<Self, ProjectsSetupError> {
        let db = Arc::new(ProjectDb::open(&config.state_dir)?);
        Self::on(db, config)
    }

    /// [`ServiceProjects::open`] on the store the config names: the PostgreSQL one of
    /// `[store] url` (the same `store` the service authenticates with), else SQLite.
    pub fn open_with(
        config: &ServiceConfig,
        store: Option<PgStore>,
    ) -> Result<Self, ProjectsSetupError> {
        match store {
            Some(store) => Self::on(Arc::new(ProjectDb::on_postgres(store)), config),
            None => Self::open(config),
        }
    }

    fn on(db: Arc<ProjectDb>, config: &ServiceConfig) -> Result<Self, ProjectsSetupError> {
        let key_file = config.state_dir.join(KEY_FILE);
        let key = match &config.projects.storage.key {
            Some(text) => {
                ProjectKey::from_text(&text.0, "projects.storage.key").ok_or_else(|| {
                    ProjectError::Refused(
                        "projects.storage.key: give 32 bytes as 64 hex digits or as base64".into(),
                    )
                })?
            }
            None => ProjectKey::load_or_create(&key_file)?,
        };
        let projects = Self {
            db,
            key,
            known_hosts: config.projects.known_hosts.clone(),
        };
        // A Decrypt error here means the key is not the one the records were sealed with.
        let wrong_key = |result: Result<(), ProjectError>| match result {
            Err(ProjectError::Decrypt { .. }) => Err(ProjectsSetupError::WrongKey {
                origin: projects.key.origin().to_string(),
                path: projects.db.path.clone(),
                key_file: key_file.clone(),
            }),
            other => other.map_err(ProjectsSetupError::from),
        };
        // Records sealed before credentials were bound to their user are resealed, bound,
        // before anything reads them; after this, an unbound sealed record is refused.
        for user in projects.db.users()? {
            wrong_key(projects.of_user(&user).bind_credentials().map(drop))?;
        }
        if let Some((user, id)) = projects.db.a_sealed_record()? {
            wrong_key(projects.of_user(&user).get(&id).map(drop))?;
        }
        Ok(projects)
    }

    /// `user`'s project store.
    pub fn of_user(&self, user: &str) -> ProjectStore {
        ProjectStore::on_records(
            Arc::new(self.db.of_user(user)),
            self.db.path.clone(),
            self.key.clone(),
        )
        .with_known_hosts(self.known_hosts.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projects::url::RepoUrl;
    use crate::projects::{Credential, NewProject};

    fn db() -> (tempfile::TempDir, Arc<ProjectDb>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(ProjectDb::open(dir.path()).unwrap());
        (dir, db)
    }

    #[test]
    fn records_round_trip_and_stay_per_user() {
        let (_dir, db) = db();
        crate::service::store_conformance::project_records_round_trip_and_stay_per_user(&db);
    }

    #[test]
    fn concurrent_inserts_keep_names_unique() {
        let (dir, _db) = db();
        let outcomes: Vec<Result<(), ProjectError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let path = dir.path();
                    scope.spawn(move || {
                        // Each thread its own connection, as two processes would have.
                        let db = Arc::new(ProjectDb::open(path).unwrap());
                        db.of_user("alice")
                            .insert(&format!("github.com/o{i}/same"), "same", "t")
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        crate::service::store_conformance::one_insert_won(&outcomes);
        let db = ProjectDb::open(dir.path()).unwrap();
        assert_eq!(Arc::new(db).of_user("alice").list().unwrap().len(), 1);
    }

    fn token_project(token: &str) -> NewProject {
        NewProject {
            url: RepoUrl::parse("github.com/o/r").unwrap(),
            name: None,
            branch: None,
            credential: Some(Credential::Token {
                username: "x-access-token".into(),
                token: token.into(),
            }),
            host_keys: Vec::new(),
        }
    }

    /// A service config on `state_dir` with a fixed sealing key.
    fn sealed_config(state_dir: &std::path::Path) -> ServiceConfig {
        let mut config = ServiceConfig {
            state_dir: state_dir.to_path_buf(),
            ..ServiceConfig::default()
        };
        config.projects.storage.key = Some(super::super::config::SecretText("11".repeat(32)));
        config
    }

    /// A sealed credential is bound to its user: copied into another user's row it does not
    /// open, and a record sealed before the binding is resealed, bound, at start.
    #[test]
    fn credentials_are_bound_to_their_user() {
        let dir = tempfile::tempdir().unwrap();
        let config = sealed_config(dir.path());
        let projects = ServiceProjects::open(&config).unwrap();
        projects
            .of_user("alice")
            .add(token_project("alice-secret"))
            .unwrap();
        let alice_row = projects
            .db
            .of_user("alice")
            .get("github.com/o/r")
            .unwrap()
            .unwrap();
        assert!(alice_row.text.contains("version = 2"), "{}", alice_row.text);
        // Mallory copies alice's row into her own (write access to the database).
        let mallory = projects.db.of_user("mallory");
        mallory
            .insert("github.com/o/r", "r", &alice_row.text)
            .unwrap();
        let err = projects.of_user("mallory").get("r").unwrap_err();
        assert!(matches!(err, ProjectError::Decrypt { .. }), "{err}");
        assert!(projects.of_user("alice").get("r").unwrap().is_some());

        // A record as an older cubbi sealed it: no user in the associated data.
        let key = ProjectKey::from_text(&"11".repeat(32), "test").unwrap();
        let files = tempfile::tempdir().unwrap();
        let old = ProjectStore::new(files.path().join("p"), files.path().join("k")).with_key(key);
        old.add(token_project("bob-secret")).unwrap();
        let legacy = std::fs::read_to_string(old.get("r").unwrap().unwrap().file).unwrap();
        assert!(legacy.contains("version = 1"), "{legacy}");
        projects
            .db
            .of_user("bob")
            .insert("github.com/o/r", "r", &legacy)
            .unwrap();
        let err = projects.of_user("bob").get("r").unwrap_err().to_string();
        assert!(err.contains("not bound to user bob"), "{err}");
        drop(projects);

        // The start reseals what it can open, bound; bob reads his.
        let projects = ServiceProjects::open(&config).unwrap();
        let bob = projects.of_user("bob").get("r").unwrap().unwrap();
        assert!(matches!(
            bob.credential,
            Some(Credential::Token { ref token, .. }) if token == "bob-secret"
        ));
        let row = projects
            .db
            .of_user("bob")
            .get("github.com/o/r")
            .unwrap()
            .unwrap();
        assert!(row.text.contains("version = 2"), "{}", row.text);
    }

    #[test]
    fn the_store_seals_in_the_database_and_a_wrong_key_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = sealed_config(dir.path());
        let projects = ServiceProjects::open(&config).unwrap();
        let store = projects.of_user("alice");
        store
            .add(NewProject {
                url: RepoUrl::parse("github.com/o/r").unwrap(),
                name: None,
                branch: None,
                credential: Some(Credential::Token {
                    username: "x-access-token".into(),
                    token: "tok-very-secret-123".into(),
                }),
                host_keys: Vec::new(),
            })
            .unwrap();
        assert!(projects.of_user("bob").list().unwrap().is_empty());
        let checkout = store.checkout_of("r").unwrap().unwrap();
        assert!(matches!(
            checkout.credential,
            Some(Credential::Token { ref token, .. }) if token == "tok-very-secret-123"
        ));
        let bytes = std::fs::read(dir.path().join("cubbi.db")).unwrap();
        let wal = std::fs::read(dir.path().join("cubbi.db-wal")).unwrap_or_default();
        for file in [&bytes, &wal] {
            assert!(
                !file
                    .windows(b"tok-very-secret".len())
                    .any(|w| w == b"tok-very-secret"),
                "the token is in the database in clear"
            );
        }
        drop(store);
        drop(projects);
        config.projects.storage.key = Some(super::super::config::SecretText("22".repeat(32)));
        let err = ServiceProjects::open(&config).unwrap_err().to_string();
        assert!(
            err.contains("projects.storage.key") && err.contains("does not open"),
            "{err}"
        );
        // Without a configured key the state folder's key file is made, 0600.
        config.projects.storage.key = None;
        let other = tempfile::tempdir().unwrap();
        config.state_dir = other.path().to_path_buf();
        ServiceProjects::open(&config).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(other.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
