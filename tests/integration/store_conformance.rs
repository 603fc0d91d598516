//! The token store's one conformance suite (`cubbi::service::store_conformance`) over SQLite
//! and over a real PostgreSQL that the run starts (support::postgres); and two real `cubbi
//! serve` processes on one PostgreSQL sharing tokens.

use std::path::PathBuf;
use std::sync::Arc;

use cubbi::service::pg_store::PgStore;
use cubbi::service::projects::ProjectDb;
use cubbi::service::store::{SqliteStore, Store, StoreError};
use cubbi::service::store_conformance::{
    CASES, Case, StoreFactory, one_insert_won, project_records_round_trip_and_stay_per_user,
};
use libtest_mimic::{Failed, Trial};

use crate::support::{Cubbi, TestHome, docker_test, postgres};

pub fn tests() -> Vec<Trial> {
    let mut trials = Vec::new();
    for &(name, case) in CASES {
        // Named *without_sysbox so that they run outside the Sysbox kit: they need neither.
        trials.push(Trial::test(
            format!("store_conformance::sqlite::{name}_without_sysbox"),
            move || on_sqlite(case),
        ));
        trials.push(Trial::test(
            format!("store_conformance::postgres::{name}_without_sysbox"),
            move || on_postgres(name, case),
        ));
    }
    trials.extend(crate::trials![
        project_records_on_sqlite_without_sysbox,
        project_records_on_postgres_without_sysbox,
        project_names_stay_unique_across_postgres_pools_without_sysbox,
        tls_to_postgres_checks_the_servers_certificate_without_sysbox,
        a_stopped_postgres_fails_calls_fast_naming_the_database_without_sysbox,
        two_services_on_one_postgres_share_tokens,
        a_password_in_the_store_url_is_refused_without_sysbox,
    ]);
    trials
}

fn block_on<F: std::future::Future<Output = Result<(), Failed>>>(work: F) -> Result<(), Failed> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(work)
}

struct SqliteFactory(tempfile::TempDir);

#[async_trait::async_trait]
impl StoreFactory for SqliteFactory {
    async fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(Arc::new(SqliteStore::open(self.0.path())?))
    }
}

struct PgFactory {
    url: String,
    password_file: PathBuf,
}

#[async_trait::async_trait]
impl StoreFactory for PgFactory {
    async fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(Arc::new(
            PgStore::connect(&self.url, Some(&self.password_file), None).await?,
        ))
    }
}

fn on_sqlite(case: Case) -> Result<(), Failed> {
    block_on(async move {
        let factory = SqliteFactory(tempfile::tempdir()?);
        case(&factory).await?;
        Ok(())
    })
}

fn on_postgres(name: &str, case: Case) -> Result<(), Failed> {
    let server = postgres::shared()?;
    block_on(async move {
        let factory = PgFactory {
            url: server.database(name).await?,
            password_file: server.password_file.clone(),
        };
        case(&factory).await?;
        // The schema went in once, though every handle migrated.
        let store = PgStore::connect(&factory.url, Some(&factory.password_file), None).await?;
        assert_eq!(store.schema_version().await?, PgStore::SCHEMA_VERSION);
        Ok(())
    })
}

fn project_records_on_sqlite_without_sysbox() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let db = Arc::new(ProjectDb::open(dir.path())?);
    project_records_round_trip_and_stay_per_user(&db);
    Ok(())
}

fn project_records_on_postgres_without_sysbox() -> Result<(), Failed> {
    let server = postgres::shared()?;
    block_on(async move {
        let url = server.database("project_records").await?;
        let store = PgStore::connect(&url, Some(&server.password_file), None).await?;
        let db = Arc::new(ProjectDb::on_postgres(store));
        // The records are synchronous, as the service calls them: on its blocking pool.
        tokio::task::spawn_blocking(move || project_records_round_trip_and_stay_per_user(&db))
            .await?;
        Ok(())
    })
}

/// Eight pools (as eight services) add a project of one name at once: one wins, the others
/// are told the name is taken (the per-user advisory lock), none fails otherwise.
fn project_names_stay_unique_across_postgres_pools_without_sysbox() -> Result<(), Failed> {
    use cubbi::projects::records::ProjectRecords;
    let server = postgres::shared()?;
    block_on(async move {
        let url = server.database("project_names").await?;
        let mut tasks = Vec::new();
        for index in 0..8 {
            let store = PgStore::connect(&url, Some(&server.password_file), None).await?;
            let db = Arc::new(ProjectDb::on_postgres(store));
            tasks.push(tokio::task::spawn_blocking(move || {
                db.of_user("alice")
                    .insert(&format!("github.com/o{index}/same"), "same", "t")
            }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await?);
        }
        one_insert_won(&outcomes);
        Ok(())
    })
}

/// `tls_only` refuses plain connections (the server's pg_hba): with `ca_file` (or
/// `sslmode=require` and the CA) the store connects over TLS; without the CA, checked against
/// the system's roots, the private certificate is refused, as is a plain connection.
fn tls_to_postgres_checks_the_servers_certificate_without_sysbox() -> Result<(), Failed> {
    let server = postgres::shared()?;
    block_on(async move {
        let url = server.database("tls_only").await?;
        let password = Some(server.password_file.as_path());
        let plain = PgStore::connect(&url, password, None).await;
        let err = plain
            .err()
            .ok_or("a plain connection to tls_only was let in")?;
        assert!(err.to_string().contains("no encryption"), "{err}");

        let store = PgStore::connect(&url, password, Some(&server.ca_file)).await?;
        let (_, token) = store.issue_token("alice", None).await?;
        let required = format!("{url}?sslmode=require");
        let other = PgStore::connect(&required, password, Some(&server.ca_file)).await?;
        assert!(other.authenticate(&token).await?.is_some());

        let unchecked = PgStore::connect(&required, password, None).await;
        let err = unchecked
            .err()
            .ok_or("a certificate of an unknown CA was accepted")?;
        assert!(err.to_string().contains("certificate"), "{err}");
        for secret in [
            std::fs::read_to_string(&server.password_file)?.trim(),
            &token,
        ] {
            assert!(!err.to_string().contains(secret), "{err}");
        }
        Ok(())
    })
}

/// A database that goes away fails the store's calls within the connect timeout, with an
/// error naming the database (never its password), which the service answers 503 to; one
/// that is not there stops the service from starting, named the same way.
fn a_stopped_postgres_fails_calls_fast_naming_the_database_without_sysbox() -> Result<(), Failed> {
    let mut server = postgres::Postgres::start_private()?;
    let password_file = server.password_file.clone();
    let password = std::fs::read_to_string(&password_file)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let url = runtime.block_on(server.database("going_away"))?;
    let store = runtime.block_on(PgStore::connect(&url, Some(&password_file), None))?;
    let (_, token) = runtime.block_on(store.issue_token("alice", None))?;
    server.stop();
    let started = std::time::Instant::now();
    let failed = runtime.block_on(store.authenticate(&token));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let err = failed
        .err()
        .ok_or("a stopped database authenticated a token")?;
    let message = err.to_string();
    assert!(message.contains(&url), "{message}");
    assert!(
        !message.contains(password.trim()) && !message.contains(&token),
        "{message}"
    );

    let refused = runtime.block_on(PgStore::connect(&url, Some(&password_file), None));
    let message = refused
        .err()
        .ok_or("connected to a stopped server")?
        .to_string();
    assert!(message.contains(&url), "{message}");
    assert!(!message.contains(password.trim()), "{message}");
    Ok(())
}

fn a_password_in_the_store_url_is_refused_without_sysbox() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("service.toml");
    std::fs::write(
        &config,
        "[store]\nurl = \"postgres://cubbi:hunter2-secret@127.0.0.1:1/cubbi\"\n",
    )?;
    let refused = Cubbi::new(&TestHome::new())
        .args(["serve", "token", "list", "--config"])
        .arg(&config)
        .run()
        .failure()
        .stderr_contains("store.url")
        .stderr_contains("password_file");
    assert!(
        !refused.stderr().contains("hunter2"),
        "{}",
        refused.stderr()
    );
    Ok(())
}

/// Runs the real `cubbi` with `args` off the async runtime.
async fn cubbi(args: Vec<std::ffi::OsString>) -> Result<crate::support::cli::Ran, Failed> {
    Ok(tokio::task::spawn_blocking(move || Cubbi::new(&TestHome::new()).args(args).run()).await?)
}

fn two_services_on_one_postgres_share_tokens() -> Result<(), Failed> {
    let server = postgres::shared()?;
    docker_test("serve-postgres", |scope| async move {
        let dir = tempfile::tempdir()?;
        let url = server.database("two_services").await?;
        let config = dir.path().join("service.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nshutdown_grace = 3\n[ssh]\nbind = \"127.0.0.1\"\n[store]\nurl = \
                 \"{url}\"\npassword_file = \"{}\"\n[projects.storage]\nkey = \"{}\"\n",
                server.password_file.display(),
                "42".repeat(32)
            ),
        )?;
        let token_args = |rest: &[&str]| -> Vec<std::ffi::OsString> {
            let mut args: Vec<std::ffi::OsString> = vec!["serve".into(), "token".into()];
            args.extend(rest.iter().map(Into::into));
            args.extend(["--config".into(), config.clone().into_os_string()]);
            args
        };
        let made = cubbi(token_args(&["create", "--user", "alice"]))
            .await?
            .success();
        let token = made.stdout().trim().to_string();
        assert!(token.starts_with("cubbi_"), "{token}");

        let mut services = Vec::new();
        for index in 0..2 {
            let state = dir.path().join(format!("state{index}"));
            services
                .push(crate::support::service::ServeProcess::start(&scope, &config, &state).await?);
        }
        let http = reqwest::Client::new();
        for service in &services {
            let listed = http
                .get(format!("http://{}/v1/sessions", service.address))
                .bearer_auth(&token)
                .send()
                .await?;
            assert_eq!(listed.status(), 200, "{}", service.address);
        }
        // A token issued while both run works on both at once, without a restart.
        let bobs = cubbi(token_args(&["create", "--user", "bob"]))
            .await?
            .success()
            .stdout()
            .trim()
            .to_string();
        for service in &services {
            let listed = http
                .get(format!("http://{}/v1/sessions", service.address))
                .bearer_auth(&bobs)
                .send()
                .await?;
            assert_eq!(listed.status(), 200, "{}", service.address);
        }
        // A project bob registers through one service is his through the other, and
        // removed through the other it is gone from both.
        let added = http
            .post(format!("http://{}/v1/projects", services[0].address))
            .bearer_auth(&bobs)
            .json(
                &serde_json::json!({"url": "https://gitlab.com/team/app", "name": "app",
                "credential": {"token": "glpat-shared-secret"}}),
            )
            .send()
            .await?;
        assert_eq!(added.status(), 201, "{}", added.text().await?);
        let shown: serde_json::Value = http
            .get(format!("http://{}/v1/projects/app", services[1].address))
            .bearer_auth(&bobs)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        assert_eq!(shown["id"], "gitlab.com/team/app", "{shown}");
        assert_eq!(shown["credential"]["token"], "set", "{shown}");
        let others = http
            .get(format!("http://{}/v1/projects/app", services[1].address))
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(others.status(), 404, "alice sees bob's project");
        let removed = http
            .delete(format!("http://{}/v1/projects/app", services[1].address))
            .bearer_auth(&bobs)
            .send()
            .await?;
        assert!(removed.status().is_success(), "{}", removed.status());
        let gone = http
            .get(format!("http://{}/v1/projects/app", services[0].address))
            .bearer_auth(&bobs)
            .send()
            .await?;
        assert_eq!(gone.status(), 404);

        // Revoked through the CLI: refused by both.
        let id = token
            .strip_prefix("cubbi_")
            .and_then(|rest| rest.split('_').next())
            .ok_or("a token id")?
            .to_string();
        cubbi(token_args(&["revoke", &id])).await?.success();
        for service in &services {
            let refused = http
                .get(format!("http://{}/v1/sessions", service.address))
                .bearer_auth(&token)
                .send()
                .await?;
            assert_eq!(refused.status(), 401, "{}", service.address);
        }
        // Not one token or project in either state folder's SQLite file: they are in
        // PostgreSQL.
        for index in 0..2 {
            let db = dir.path().join(format!("state{index}/cubbi.db"));
            if db.exists() {
                let connection = rusqlite::Connection::open(&db)?;
                for table in ["tokens", "projects"] {
                    let rows: i64 = connection.query_row(
                        &format!("SELECT count(*) FROM {table}"),
                        [],
                        |row| row.get(0),
                    )?;
                    assert_eq!(rows, 0, "{} holds {table}", db.display());
                }
            }
        }
        let listed = cubbi(token_args(&["list"])).await?.success();
        assert!(listed.stdout().contains("alice") && listed.stdout().contains("bob"));
        let password = std::fs::read_to_string(&server.password_file)?;
        for service in services {
            let log = service.stop().await?;
            assert!(log.contains("/v1/sessions"), "no request was logged: {log}");
            for secret in [
                token.as_str(),
                bobs.as_str(),
                password.trim(),
                "glpat-shared-secret",
            ] {
                assert!(!log.contains(secret), "a secret reached the log");
            }
        }
        Ok(())
    })
}
