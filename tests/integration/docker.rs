//! The harness itself: a container from the locally bootstrapped `debian:bookworm` runs on the
//! test dockerd through bollard, and cleanup removes what a test made.

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder};
use futures_util::TryStreamExt;
use libtest_mimic::{Failed, Trial};

use crate::support::{self, DockerScope, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        debian_container_runs_and_prints,
        dedicated_bridge_is_not_docker0,
        cleanup_removes_labelled_containers,
        mirror_is_read_from_apt_sources,
    ]
}

async fn run_to_completion(scope: &DockerScope, cmd: &[&str]) -> Result<String, Failed> {
    let docker = &scope.docker;
    let body = ContainerCreateBody {
        image: Some(support::base_image::BASE_IMAGE.into()),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        labels: Some(scope.labels()),
        ..Default::default()
    };
    let created = docker
        .create_container(Some(CreateContainerOptionsBuilder::new().build()), body)
        .await?;
    docker.start_container(&created.id, None).await?;
    let waited: Vec<_> = docker
        .wait_container(&created.id, None)
        .try_collect()
        .await?;
    assert_eq!(
        waited.last().map(|w| w.status_code),
        Some(0),
        "container exit code"
    );
    let logs: Vec<_> = docker
        .logs(
            &created.id,
            Some(LogsOptionsBuilder::new().stdout(true).stderr(true).build()),
        )
        .try_collect()
        .await?;
    Ok(logs.iter().map(|chunk| chunk.to_string()).collect())
}

fn debian_container_runs_and_prints() -> Result<(), Failed> {
    docker_test("debian-runs", |scope| async move {
        let output = run_to_completion(
            &scope,
            &["sh", "-c", "echo hello from $(cat /etc/debian_version)"],
        )
        .await?;
        assert!(
            output.starts_with("hello from 12."),
            "unexpected output: {output:?}"
        );
        Ok(())
    })
}

fn dedicated_bridge_is_not_docker0() -> Result<(), Failed> {
    docker_test("bridge", |scope| async move {
        assert!(scope.endpoint.starts_with("unix://"), "{}", scope.endpoint);
        let info = scope.docker.info().await?;
        let root = info.docker_root_dir.unwrap_or_default();
        if std::env::var_os("CUBBI_TEST_DOCKER_HOST").is_none() {
            assert!(
                root.starts_with("/tmp/cubbi-dockerd-"),
                "private data-root, got {root}"
            );
            let bridge = scope.docker.inspect_network("bridge", None).await?;
            let options = bridge.options.unwrap_or_default();
            let name = options
                .get("com.docker.network.bridge.name")
                .cloned()
                .unwrap_or_default();
            assert!(
                name.starts_with("cbt"),
                "the harness's own bridge, got {name:?}"
            );
        }
        Ok(())
    })
}

fn cleanup_removes_labelled_containers() -> Result<(), Failed> {
    let mut leftover_label = String::new();
    docker_test("cleanup", |scope| {
        leftover_label = format!("{}={}", support::TEST_LABEL, scope.id);
        async move {
            run_to_completion(&scope, &["true"]).await?;
            Ok(())
        }
    })?;
    let endpoint = support::docker_endpoint()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let docker = cubbi::docker::connect(&endpoint).await?;
        let left = support::containers_labelled(&docker, &leftover_label).await?;
        assert!(left.is_empty(), "containers left behind: {left:?}");
        Ok(())
    })
}

fn mirror_is_read_from_apt_sources() -> Result<(), Failed> {
    Ok(support::base_image::mirror_parsing_self_check()?)
}
