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
}
