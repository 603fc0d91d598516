//! Setup's last step: the endpoint it brought up answers, has sysbox-runc registered as its
//! default runtime, and, where Sysbox is installed, a smoke container under it runs with root
//! mapped to an unprivileged host uid.

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;

use super::{Check, Status};
use super::{checks, uid_probe};
use crate::engine::daemon_json::SYSBOX_RUNTIME;

/// Every verification, in order; the first failing one ends it. `default_runtime` is what setup
/// configured: sysbox-runc, or runc after `--unsafe-runc`.
pub async fn verify_endpoint(
    endpoint: &str,
    default_runtime: &str,
    sysbox_installed: bool,
) -> Vec<Check> {
    let docker = match crate::docker::connect(endpoint).await {
        Ok(docker) => docker,
        Err(err) => {
            return vec![Check::fail(
                "endpoint-answers",
                err.to_string(),
                "cubbi doctor",
            )];
        }
    };
    let mut results = vec![Check::ok("endpoint-answers", format!("{endpoint} answers"))];
    let info = docker
        .info()
        .await
        .ok()
        .and_then(|info| serde_json::to_value(info).ok());
    if default_runtime != SYSBOX_RUNTIME {
        let actual = info
            .as_ref()
            .and_then(|info| info.get("DefaultRuntime"))
            .and_then(|value| value.as_str())
            .unwrap_or("unknown");
        results.push(if actual == default_runtime {
            Check::warn(
                "sysbox-default-runtime",
                format!(
                    "{actual} is the default runtime (--unsafe-runc): sessions are NOT isolated \
                     from the host"
                ),
                "install Sysbox, then sudo cubbi setup (without --unsafe-runc)",
            )
        } else {
            Check::fail(
                "sysbox-default-runtime",
                format!("the default runtime is {actual}, setup configured {default_runtime}"),
                "sudo cubbi setup",
            )
        });
        return results;
    }
    let runtime = checks::sysbox_runtime(info.as_ref());
    let runtime_ok = runtime.status == Status::Ok;
    results.push(runtime);
    if !runtime_ok {
        return results;
    }
    results.push(if sysbox_installed {
        smoke(&docker).await
    } else {
        Check::warn(
            "sysbox-smoke",
            "Sysbox is not installed, so no container can run under it yet",
            "install Sysbox (sudo cubbi setup --sysbox-deb PATH), then cubbi doctor",
        )
    });
    results
}

/// Runs the uid-map probe under sysbox-runc and judges the mapping. The probe image is made
/// by cubbi itself (see [`uid_probe`]), so this works right after setup, before any build.
pub async fn smoke(docker: &Docker) -> Check {
    const ID: &str = "sysbox-smoke";
    let image = match uid_probe::ensure(docker).await {
        Ok(image) => image,
        Err(reason) => return Check::warn(ID, reason, "cubbi doctor"),
    };
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        entrypoint: Some(vec![uid_probe::PROGRAM.into()]),
        labels: Some([("io.cubbi.smoke".to_string(), "true".to_string())].into()),
        host_config: Some(HostConfig {
            runtime: Some(SYSBOX_RUNTIME.into()),
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = match docker
        .create_container(Some(CreateContainerOptionsBuilder::new().build()), body)
        .await
    {
        Ok(created) => created,
        Err(err) => {
            return Check::fail(
                ID,
                format!("cannot create a smoke container: {err}"),
                "cubbi doctor",
            );
        }
    };
    let outcome = run_and_read(docker, &created.id).await;
    let _ = docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await;
    match outcome {
        Ok(uid_map) => {
            let mut check = checks::uid_map(&uid_map);
            check.id = ID;
            check.finding = format!("{} ({image} under {SYSBOX_RUNTIME})", check.finding);
            check
        }
        Err(reason) => Check::fail(
            ID,
            format!("the smoke container under {SYSBOX_RUNTIME} failed: {reason}"),
            "journalctl -u sysbox-mgr -u sysbox-fs; cubbi doctor",
        ),
    }
}

async fn run_and_read(docker: &Docker, id: &str) -> Result<String, String> {
    docker
        .start_container(id, None)
        .await
        .map_err(|err| err.to_string())?;
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        docker
            .wait_container(id, Some(WaitContainerOptionsBuilder::new().build()))
            .collect::<Vec<_>>(),
    )
    .await
    .map_err(|_| "it did not finish within 60 s".to_string())?;
    for result in waited {
        match result {
            Ok(status) if status.status_code != 0 => {
                return Err(format!("it exited with {}", status.status_code));
            }
            Err(err) => return Err(err.to_string()),
            Ok(_) => {}
        }
    }
    let output: Vec<_> = docker
        .logs(
            id,
            Some(LogsOptionsBuilder::new().stdout(true).stderr(true).build()),
        )
        .collect()
        .await;
    Ok(output
        .into_iter()
        .filter_map(Result::ok)
        .map(|chunk| chunk.to_string())
        .collect())
}
