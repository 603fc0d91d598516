//! The web page at `/` and its files at `/assets/*`: sessions, live logs and terminals in the
//! browser (the sources are in `web/`; `build.rs` embeds `web/dist` when it was built). The
//! page runs under a strict Content-Security-Policy: scripts and styles from this origin
//! only, connections (fetch, WebSocket) to this origin only, no frames, no plugins. The one
//! allowance is a nonce, new on every load of `/`, for the `<style>` elements xterm.js makes
//! at run time; the page's script stamps it on them (`web/src/nonce.js`).

use axum::body::Body;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::http_error::HttpError;
use crate::api::ErrorCode;

/// The built page's files by path under `web/dist` (`index.html`, `assets/app.js`, ...);
/// empty when the page was not built before `cargo build`.
const ASSETS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// Where index.html wants this load's style nonce.
const NONCE_SLOT: &str = "__CUBBI_STYLE_NONCE__";

/// What `/` says when the page was not built into this binary.
const NOT_BUILT: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>cubbi</title></head><body>\n<h1>cubbi</h1>\n<p>The service works (the API is under \
<code>/v1</code>, see <code>/v1/openapi.json</code>), but this <code>cubbi</code> was built \
without its web page.</p>\n<p>To build it, with Node.js 20 or newer, in the source tree run \
<code>npm ci --prefix web &amp;&amp; npm run build --prefix web</code>, then build cubbi again \
(<code>cargo build</code>).</p>\n</body></html>\n";

fn find(name: &str) -> Option<&'static [u8]> {
    ASSETS
        .iter()
        .find(|(file, _)| *file == name)
        .map(|(_, bytes)| *bytes)
}

/// Whether this binary carries the page.
pub fn built() -> bool {
    find("index.html").is_some()
}

/// The policy for the page, with this load's style nonce.
fn page_policy(nonce: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; \
         img-src 'self'; font-src 'self'; connect-src 'self'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}

/// The headers every answer of the page carries.
fn secured(mut response: Response, policy: &str, cache: &'static str) -> Response {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(policy) {
        headers.insert(CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

#[utoipa::path(get, path = "/", operation_id = "web_page", tag = "service",
    responses((status = 200, description = "The web page (HTML): sign in, sessions, live logs and terminals. Without the page built into this binary, a short page saying how to build it", content_type = "text/html")))]
pub(super) async fn index() -> Response {
    let Some(page) = find("index.html") else {
        let response = ([(CONTENT_TYPE, "text/html; charset=utf-8")], NOT_BUILT).into_response();
        return secured(response, "default-src 'none'", "no-store");
    };
    let nonce = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 18]>());
    let html = String::from_utf8_lossy(page).replace(NONCE_SLOT, &nonce);
    let response = ([(CONTENT_TYPE, content_type("index.html"))], html).into_response();
    // A new nonce each load: never cached.
    secured(response, &page_policy(&nonce), "no-store")
}

#[utoipa::path(get, path = "/assets/{file}", operation_id = "web_asset", tag = "service",
    params(("file" = String, Path, description = "A file of the page (`app.js`, `app.css`)")),
    responses((status = 200, description = "The file"),
        (status = 404, description = "No such file of the page", body = crate::api::wire::ErrorBody)))]
pub(super) async fn asset(file: Result<Path<String>, PathRejection>) -> Response {
    let found = file.ok().and_then(|Path(file)| {
        let plain = !file.is_empty()
            && file.len() <= 128
            && !file.starts_with('.')
            && file
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        let bytes = find(&format!("assets/{file}")).filter(|_| plain)?;
        Some((file, bytes))
    });
    let Some((file, bytes)) = found else {
        let missing = HttpError::new(ErrorCode::NotFound, "no such file of the web page")
            .with_status(StatusCode::NOT_FOUND)
            .into_response();
        return secured(missing, "default-src 'none'", "no-store");
    };
    let response = ([(CONTENT_TYPE, content_type(&file))], Body::from(bytes)).into_response();
    // The names are not content-hashed: revalidate so a new cubbi serves its new page.
    secured(response, "default-src 'none'", "no-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn header(response: &Response, name: &str) -> String {
        response.headers()[name].to_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn the_page_runs_under_a_strict_policy_with_a_new_nonce_each_load() {
        let first = index().await;
        let second = index().await;
        assert_eq!(first.status(), StatusCode::OK);
        let policy = header(&first, "content-security-policy");
        assert!(policy.starts_with("default-src 'none'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(header(&first, "x-content-type-options"), "nosniff");
        assert_eq!(header(&first, "x-frame-options"), "DENY");
        assert_eq!(header(&first, "cache-control"), "no-store");
        let text = body(first).await;
        if built() {
            assert!(policy.contains("script-src 'self';"), "{policy}");
            assert!(policy.contains("connect-src 'self';"), "{policy}");
            assert_ne!(policy, header(&second, "content-security-policy"));
            let nonce = policy
                .split("'nonce-")
                .nth(1)
                .and_then(|rest| rest.split('\'').next())
                .unwrap();
            assert!(text.contains(&format!("content=\"{nonce}\"")), "{text}");
            assert!(!text.contains(NONCE_SLOT));
            assert!(!text.contains("<script>"), "no inline script");
        } else {
            assert!(text.contains("npm ci --prefix web"), "{text}");
        }
    }

    #[tokio::test]
    async fn only_the_pages_own_files_are_served() {
        for name in ["../Cargo.toml", "..", ".hidden", "a/b", "", "nothing.js"] {
            let response = asset(Ok(Path(name.to_string()))).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{name}");
            assert_eq!(header(&response, "x-content-type-options"), "nosniff");
        }
        if built() {
            let script = asset(Ok(Path("app.js".to_string()))).await;
            assert_eq!(script.status(), StatusCode::OK);
            assert_eq!(
                header(&script, "content-type"),
                "text/javascript; charset=utf-8"
            );
        }
    }
}
