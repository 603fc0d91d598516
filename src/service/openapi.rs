//! The OpenAPI 3.1 document of the service, generated from the handlers and types themselves
//! (utoipa), served at `/v1/openapi.json`; the tests validate every response against it.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{project_routes, router};

#[derive(OpenApi)]
#[openapi(
    info(title = "cubbi", description = "Sessions: system containers for AI coding agents."),
    paths(
        router::healthz,
        router::openapi_document,
        router::list,
        router::create,
        router::show,
        router::close,
        router::connect,
        router::exec,
        router::logs,
        router::images,
        router::image,
        project_routes::list,
        project_routes::add,
        project_routes::show,
        project_routes::update,
        project_routes::remove,
    ),
    components(schemas(
        crate::api::Session,
        crate::api::SessionState,
        crate::api::SshEndpoint,
        crate::api::Resources,
        crate::api::ErrorCode,
        crate::api::wire::CreateRequest,
        crate::api::wire::VolumeMountSchema,
        crate::api::wire::ConnectRequest,
        crate::api::wire::ExecRequest,
        crate::api::wire::ExecLine,
        crate::api::wire::LogLine,
        crate::api::wire::ErrorBody,
        crate::api::wire::ErrorDetail,
        crate::api::wire::Health,
        crate::api::wire::ImageInfo,
        crate::projects::store::ProjectSummary,
        crate::projects::store::HostKeySummary,
        crate::projects::store::HostKeySource,
        crate::projects::credential::CredentialSummary,
        crate::projects::wire::AddProjectRequest,
        crate::projects::wire::UpdateProjectRequest,
        crate::projects::wire::CredentialInput,
    )),
    modifiers(&BearerToken, &CommonAnswers)
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

/// The answers every route of a kind can give, whatever its handler says: 504 from the
/// request time limit on every route but the streams (`server.request_timeout`), and 503 on
/// every route that reaches Docker or the project store when they are down.
struct CommonAnswers;

/// Routes under the request time limit (see `router::router`).
const TIMED: &[&str] = &[
    "/v1/sessions",
    "/v1/sessions/{id}",
    "/v1/sessions/{id}/connect",
    "/v1/images",
    "/v1/images/{name}",
    "/v1/openapi.json",
    "/v1/projects",
    "/v1/projects/{reference}",
];

/// Routes that answer without Docker or a store.
const ALWAYS_UP: &[&str] = &["/healthz", "/v1/openapi.json"];

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
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
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                if TIMED.contains(&path.as_str()) {
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
}

/// The document, as served.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
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
        let mut checked = 0;
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                let responses = &operation["responses"];
                let has = |code: &str| {
                    responses[code]["content"]["application/json"]["schema"]["$ref"]
                        == "#/components/schemas/ErrorBody"
                };
                if super::TIMED.contains(&path.as_str()) {
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
}
