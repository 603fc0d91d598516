//! Routes and their OpenAPI entries registered in one step. A route's path and methods come
//! from its handler's `#[utoipa::path]`, so the service cannot serve a route its document
//! lacks, nor document one it does not serve (what utoipa-axum's `routes!` does, for handlers
//! generic over the session host, which that macro cannot name).

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter};
use utoipa::openapi::path::{HttpMethod, Paths};

/// An axum router with the OpenAPI paths of exactly the routes it serves.
pub struct DocumentedRoutes<S> {
    router: Router<S>,
    paths: Paths,
}

impl<S: Clone + Send + Sync + 'static> DocumentedRoutes<S> {
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            paths: Paths::new(),
        }
    }

    /// Serves `handler` at the path and methods `Doc` (the `__path_*` type utoipa generates
    /// for it) documents.
    pub fn route<Doc: utoipa::Path, T: 'static>(mut self, handler: impl Handler<T, S>) -> Self {
        let path = Doc::path();
        let methods = Doc::methods();
        let mut serving = MethodRouter::new();
        for method in &methods {
            serving = serving.on(method_filter(method), handler.clone());
        }
        self.router = self.router.route(&path, serving);
        self.paths
            .add_path_operation(&path, methods, Doc::operation());
        self
    }

    /// Applies `f` to the router (layers meant for exactly these routes).
    pub fn map_router(mut self, f: impl FnOnce(Router<S>) -> Router<S>) -> Self {
        self.router = f(self.router);
        self
    }

    /// The documented paths, without the router.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    pub fn into_parts(self) -> (Router<S>, Paths) {
        (self.router, self.paths)
    }
}

fn method_filter(method: &HttpMethod) -> MethodFilter {
    match method {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}
