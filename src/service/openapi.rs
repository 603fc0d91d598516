//! The OpenAPI 3.1 document of the service, generated from the handlers and types themselves
//! (utoipa), served at `/v1/openapi.json`; the tests validate every response against it.

use utoipa::openapi::path::Paths;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::router;

#[derive(OpenApi)]
#[openapi(
    info(title = "cubbi", description = "Sessions: system containers for AI coding agents."),
    components(schemas(
        crate::api::Session,
        crate::api::SessionState,
        crate::api::SshEndpoint,
        crate::api::Resources,
        crate::api::ErrorCode,
        crate::api::wire::CreateRequest,
        crate::api::wire::VolumeMountSchema,
        crate::api::wire::ConnectRequest,
        crate::api::Snapshot,
        crate::api::DataSummary,
        crate::api::wire::SnapshotRequest,
        crate::egress::EgressChange,
        crate::mcp::McpServer,
        crate::mcp::Stdio,
        crate::mcp::McpSummary,
        crate::api::wire::ExecRequest,
        crate::api::wire::ExecLine,
        crate::api::wire::LogLine,
        crate::api::wire::ErrorBody,
        crate::api::wire::ErrorDetail,
        crate::api::wire::Health,
        crate::api::wire::ImageInfo,
        crate::api::wire::RuntimeList,
        crate::api::wire::RunBody,
        crate::run::RunResult,
        crate::run::RunEvent,
        crate::run::Usage,
        crate::projects::store::ProjectSummary,
        crate::projects::store::HostKeySummary,
        crate::projects::store::HostKeySource,
        crate::projects::credential::CredentialSummary,
        crate::projects::wire::AddProjectRequest,
        crate::projects::wire::UpdateProjectRequest,
        crate::projects::wire::CredentialInput,
        super::oidc::wire::AuthConfig,
        super::ws::TicketRequest,
        super::ws::TicketAnswer,
        super::tickets::Purpose,
        super::oidc::wire::OidcOffer,
        super::oidc::wire::LoginRequest,
        super::oidc::wire::LoginFlow,
        super::oidc::wire::DeviceLogin,
        super::oidc::wire::PollRequest,
        super::oidc::wire::LoginPending,
        super::oidc::wire::LoginTokens,
        super::oidc::wire::RefreshRequest,
        super::oidc::wire::LogoutRequest,
        super::oidc::wire::LogoutResult,
        super::oidc::wire::BrowserLogin,
        super::oidc::wire::LoginStarted,
        super::oidc::wire::BrowserSession,
    )),
    modifiers(&BearerToken)
)]
struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Routes that answer without Docker or a store.
const ALWAYS_UP: &[&str] = &["/healthz", "/v1/openapi.json", "/", "/assets/{file}"];

/// The answers every route of a kind can give, whatever its handler says: 504 from the
/// request time limit on every timed route (`server.request_timeout`), and 503 on every route
/// that reaches Docker or the project store when they are down.
fn add_common_answers(paths: &mut Paths, timed: bool) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let answer = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for (path, item) in paths.paths.iter_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let responses = &mut operation.responses.responses;
            if timed {
                responses.entry("504".into()).or_insert_with(|| {
                    answer("The request took longer than server.request_timeout").into()
                });
            }
            if !ALWAYS_UP.contains(&path.as_str()) {
                responses.entry("503".into()).or_insert_with(|| {
                    answer("The Docker endpoint or the service's store is unavailable").into()
                });
            }
        }
    }
}

/// The document, as served.
pub fn document() -> utoipa::openapi::OpenApi {
    // The paths are the routes as the router registers them (the host type only picks
    // handler instances; no host is made).
    let routes = router::routes::<super::docker_host::DockerHost>();
    let mut document = ApiDoc::openapi();
    for (group, timed) in [
        (routes.timed.paths(), true),
        (routes.streamed.paths(), false),
        (routes.health.paths(), false),
        (routes.data.paths(), true),
    ] {
        let mut paths = group.clone();
        add_common_answers(&mut paths, timed);
        document.paths.merge(paths);
    }
    document.info.version = env!("CARGO_PKG_VERSION").to_string();
    document
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented() {
        let document = serde_json::to_value(super::document()).unwrap();
        assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = document["paths"].as_object().unwrap();
        for path in [
            "/healthz",
            "/v1/openapi.json",
            "/v1/sessions",
            "/v1/sessions/{id}",
            "/v1/sessions/{id}/connect",
            "/v1/sessions/{id}/exec",
            "/v1/sessions/{id}/logs",
            "/v1/images",
            "/v1/images/{name}",
            "/v1/runtimes",
            "/v1/projects",
            "/v1/projects/{reference}",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        assert_eq!(
            document["components"]["securitySchemes"]["token"]["scheme"],
            "bearer"
        );
    }

    /// Every timed route documents the time limit's 504, every route that reaches Docker or
    /// the store its 503, each with the error body.
    #[test]
    fn timeouts_and_outages_are_documented() {
        let document = serde_json::to_value(super::document()).unwrap();
        let paths = document["paths"].as_object().unwrap();
        let routes = super::router::routes::<crate::service::docker_host::DockerHost>();
        let mut timed = routes.timed.paths().paths.clone();
        timed.extend(routes.data.paths().paths.clone());
        assert!(timed.contains_key("/v1/sessions") && !timed.contains_key("/healthz"));
        let mut checked = 0;
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                let responses = &operation["responses"];
                let has = |code: &str| {
                    responses[code]["content"]["application/json"]["schema"]["$ref"]
                        == "#/components/schemas/ErrorBody"
                };
                if timed.contains_key(path) {
                    assert!(has("504"), "{method} {path} lacks 504");
                } else {
                    assert!(
                        responses.get("504").is_none(),
                        "{method} {path} is not timed"
                    );
                }
                if !super::ALWAYS_UP.contains(&path.as_str()) {
                    assert!(has("503"), "{method} {path} lacks 503");
                }
                checked += 1;
            }
        }
        assert!(checked >= 15, "{checked} operations");
        assert!(paths["/v1/sessions/{id}/exec"]["post"]["responses"]["503"].is_object());
    }

    /// Every `$ref` in the document names a schema it carries (the paths come from the
    /// routes, the schemas from the list above: a handler's new body type must be listed).
    #[test]
    fn every_reference_resolves() {
        fn refs(value: &serde_json::Value, found: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(target)) = map.get("$ref") {
                        found.push(target.clone());
                    }
                    map.values().for_each(|v| refs(v, found));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
                _ => {}
            }
        }
        let document = serde_json::to_value(super::document()).unwrap();
        let mut found = Vec::new();
        refs(&document, &mut found);
        assert!(found.len() > 20, "{} references", found.len());
        for target in found {
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {target}"));
            assert!(
                document["components"]["schemas"][name].is_object(),
                "{target} does not resolve"
            );
        }
    }

    /// The always-up list names routes that exist.
    #[test]
    fn always_up_routes_are_routes() {
        let document = serde_json::to_value(super::document()).unwrap();
        for path in super::ALWAYS_UP {
            assert!(document["paths"][path].is_object(), "{path}");
        }
    }
}
