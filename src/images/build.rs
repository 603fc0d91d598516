//! Building an image through the Docker API, reporting each step and, on failure, the
//! failing step's own output instead of a stack trace.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt;

use super::{ImageDefinition, ImageError, METADATA_LABEL, NAME_LABEL};

/// Lines of a failing step kept for the error message.
const FAILURE_TAIL_LINES: usize = 40;

pub struct BuildRequest<'a> {
    pub image: &'a ImageDefinition,
    pub tag: String,
    /// The `BASE` build argument; the Dockerfile's default when `None`.
    pub base: Option<String>,
    pub no_cache: bool,
    pub ca_certificates: Vec<PathBuf>,
}

/// What the build reports while it runs.
pub enum BuildEvent<'a> {
    /// A Dockerfile step began (`Step 3/12 : RUN ...`).
    Step(&'a str),
    /// A line of output from the current step.
    Output(&'a str),
}

/// Builds and tags the image; returns its id.
pub async fn build(
    docker: &Docker,
    request: &BuildRequest<'_>,
    mut report: impl FnMut(BuildEvent<'_>),
) -> Result<String, ImageError> {
    let context = super::context::build_context(request.image, &request.ca_certificates)?;
    let metadata_json =
        serde_json::to_string(&request.image.metadata).map_err(|err| ImageError::Docker {
            tag: request.tag.clone(),
            reason: err.to_string(),
        })?;
    let labels = HashMap::from([
        (NAME_LABEL.to_string(), request.image.metadata.name.clone()),
        (METADATA_LABEL.to_string(), metadata_json),
    ]);
    let mut build_args = HashMap::new();
    if let Some(base) = &request.base {
        build_args.insert("BASE".to_string(), base.clone());
    }
    if let Some(version) = &request.image.metadata.tool_version {
        build_args.insert("TOOL_VERSION".to_string(), version.clone());
    }
    let options = BuildImageOptionsBuilder::new()
        .dockerfile("Dockerfile")
        .t(&request.tag)
        .nocache(request.no_cache)
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .buildargs(&build_args)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let mut step = String::from("the start of the build");
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut image_id = None;
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(err) => {
                return Err(failure(request, &step, &tail, Some(&err.to_string())));
            }
        };
        if let Some(detail) = info.error_detail {
            let message = detail.message.unwrap_or_default();
            return Err(failure(request, &step, &tail, Some(&message)));
        }
        if let Some(text) = info.stream {
            for line in text.lines().filter(|line| !line.trim().is_empty()) {
                if line.starts_with("Step ") {
                    step = line.to_string();
                    tail.clear();
                    report(BuildEvent::Step(line));
                } else if is_builder_chatter(line) {
                    continue;
                } else {
                    if tail.len() == FAILURE_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.to_string());
                    report(BuildEvent::Output(line));
                }
            }
        }
        if let Some(id) = info.aux.and_then(|aux| aux.id) {
            image_id = Some(id);
        }
    }
    match image_id {
        Some(id) => Ok(id),
        None => docker
            .inspect_image(&request.tag)
            .await
            .ok()
            .and_then(|image| image.id)
            .ok_or_else(|| failure(request, &step, &tail, Some("the build produced no image"))),
    }
}

/// The classic builder's bookkeeping lines, which say nothing about what a step did.
fn is_builder_chatter(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("--->")
        || line.starts_with("Removing intermediate container")
        || line.starts_with("Successfully built")
        || line.starts_with("Successfully tagged")
}

fn failure(
    request: &BuildRequest<'_>,
    step: &str,
    tail: &VecDeque<String>,
    message: Option<&str>,
) -> ImageError {
    let mut output: Vec<String> = tail.iter().map(|line| format!("  {line}")).collect();
    if let Some(message) = message {
        output.push(format!("  {}", message.trim()));
        if message.contains("sysbox-runc: no such file") {
            // Builds run under the engine's default runtime, which names a Sysbox not installed.
            output.push(
                "  the endpoint's default runtime is sysbox-runc, which is not installed: install \
                 Sysbox (sudo cubbi setup), or for a trial without isolation run \
                 `sudo cubbi setup --unsafe-runc` so images build with runc"
                    .to_string(),
            );
        }
    }
    ImageError::BuildFailed {
        tag: request.tag.clone(),
        step: step.to_string(),
        output: output.join("\n"),
    }
}
