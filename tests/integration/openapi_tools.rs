//! The served OpenAPI document as other tools read it: a real validator
//! (`openapi-spec-validator`) accepts it, and a real client generator
//! (`openapi-python-client`) makes a function for every operation in it. Both come from PyPI
//! into a venv install/test.sh prepares (`CUBBI_TEST_OPENAPI_TOOLS`, default
//! `~/.cache/cubbi-test/openapi/bin`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::support::docker_test;
use crate::support::service::{TestService, user};

pub fn tests() -> Vec<Trial> {
    crate::trials![served_document_validates_and_generates_every_operation]
}

/// The folder holding the tools' executables, or why there is none.
fn tools() -> Result<PathBuf, Failed> {
    let dir = std::env::var_os("CUBBI_TEST_OPENAPI_TOOLS")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|cache| cache.join("cubbi-test/openapi/bin")))
        .ok_or("no cache folder for the OpenAPI tools")?;
    for tool in ["openapi-spec-validator", "openapi-python-client"] {
        if !dir.join(tool).is_file() {
            return Err(format!(
                "{tool} is not in {}: run install/test.sh, which installs it from PyPI \
                 (or set CUBBI_TEST_OPENAPI_TOOLS)",
                dir.display()
            )
            .into());
        }
    }
    Ok(dir)
}

fn run(command: &mut Command) -> Result<String, Failed> {
    let output = command.output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        return Err(format!("{command:?} failed:\n{text}").into());
    }
    Ok(text)
}

fn served_document_validates_and_generates_every_operation() -> Result<(), Failed> {
    let tools = tools()?;
    docker_test("openapi-tools", |scope| async move {
        let mut service = TestService::start(&scope, |_| {}).await?;
        let token = service.token(&user(&scope, "alice"), false)?;
        let document: Value = reqwest::Client::new()
            .get(format!("{}/v1/openapi.json", service.url))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        service.stop().await?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("openapi.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&document)?)?;

        run(Command::new(tools.join("openapi-spec-validator")).arg(&file))?;

        let mut operations = BTreeSet::new();
        for (path, methods) in document["paths"].as_object().ok_or("no paths")? {
            for (method, operation) in methods.as_object().ok_or("a path without methods")? {
                let id = operation["operationId"]
                    .as_str()
                    .ok_or_else(|| format!("{method} {path} has no operationId"))?;
                assert!(
                    operations.insert(id.to_string()),
                    "operationId `{id}` repeats ({method} {path})"
                );
            }
        }
        // Streams (NDJSON) are bytes to a generated client: it reads the lines itself.
        let generator_config = dir.path().join("generator.yaml");
        std::fs::write(
            &generator_config,
            "content_type_overrides:\n  application/x-ndjson: application/octet-stream\n",
        )?;
        let output = dir.path().join("client");
        let generated = run(Command::new(tools.join("openapi-python-client"))
            .env("PATH", path_with(&tools))
            .args(["generate", "--meta", "none", "--config"])
            .arg(&generator_config)
            .arg("--path")
            .arg(&file)
            .arg("--output-path")
            .arg(&output))?;
        assert!(
            !generated.contains("will not be generated") && !generated.contains("Warning"),
            "the generator skipped parts of the document:\n{generated}"
        );
        // One module per operation, named after its id (snake case).
        let mut modules = BTreeSet::new();
        for entry in walk(&output.join("api"))? {
            if let Some(stem) = entry.file_stem().and_then(|stem| stem.to_str())
                && entry.extension().is_some_and(|ext| ext == "py")
                && stem != "__init__"
            {
                modules.insert(stem.to_string());
            }
        }
        for id in &operations {
            assert!(
                modules.contains(id),
                "no generated client function for `{id}`: {modules:?}\n{generated}"
            );
        }
        Ok(())
    })
}

fn path_with(tools: &std::path::Path) -> std::ffi::OsString {
    let mut paths = vec![tools.to_path_buf()];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn walk(dir: &std::path::Path) -> Result<Vec<PathBuf>, Failed> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)
        .map_err(|err| format!("{}: {err} (nothing generated?)", dir.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(walk(&path)?);
        } else {
            found.push(path);
        }
    }
    Ok(found)
}
