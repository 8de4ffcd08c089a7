//! The venue's Settings → Webhooks page at `GET /portal`: its HTML, script and styles are
//! compiled into the binary (no build step, nothing loaded from another origin) and served
//! with a strict Content-Security-Policy (no inline script; `frame-ancestors` as configured, so
//! that Popup's dashboard can frame it). The HTML names its assets with a version (a hash of
//! their content), so the assets can be cached for good and the HTML never is.

use http::{HeaderValue, StatusCode};
use lambda_http::{Body, Response};

const INDEX: &str = include_str!("../portal/index.html");
const SCRIPT: &str = include_str!("../portal/app.js");
const STYLE: &str = include_str!("../portal/app.css");

/// The page and its assets, ready to serve.
#[derive(Clone)]
pub struct Page {
    index: String,
    version: String,
    csp: String,
}

impl Page {
    /// `frame_ancestors`: the CSP `frame-ancestors` sources that may frame the page.
    pub fn new(frame_ancestors: &str) -> Self {
        let version: String = shared::model::api_key::sha256_hex(&format!("{SCRIPT}{STYLE}"))
            .chars()
            .take(16)
            .collect();
        Self {
            index: INDEX.replace("{{version}}", &version),
            csp: format!(
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                 img-src 'self' data:; base-uri 'none'; form-action 'self'; \
                 frame-ancestors {frame_ancestors}"
            ),
            version,
        }
    }

    /// The answer to a GET of `path` if it is the page or one of its assets.
    pub fn serve(&self, path: &str, query: Option<&str>) -> Option<Response<Body>> {
        let (body, content_type, cache) = match path {
            "/portal" | "/portal/" => (self.index.as_str(), "text/html; charset=utf-8", "no-cache"),
            "/portal/app.js" => (SCRIPT, "text/javascript; charset=utf-8", self.cache(query)),
            "/portal/app.css" => (STYLE, "text/css; charset=utf-8", self.cache(query)),
            _ => return None,
        };
        let mut response = Response::new(Body::Text(body.to_owned()));
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        for (name, value) in [
            ("content-type", content_type),
            ("cache-control", cache),
            ("content-security-policy", self.csp.as_str()),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        Some(response)
    }

    /// An asset asked for by this version is cached for good; otherwise it is checked.
    fn cache(&self, query: Option<&str>) -> &'static str {
        if query == Some(format!("v={}", self.version).as_str()) {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }
    }

    /// The page and its assets together, in bytes.
    pub fn size() -> usize {
        INDEX.len() + SCRIPT.len() + STYLE.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_small_strict_and_versions_its_assets() {
        assert!(Page::size() < 150 * 1024, "{} bytes", Page::size());
        let page = Page::new("'self' https://dashboard.popup.example");
        let index = page.serve("/portal", None).unwrap();
        let headers = index.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.ends_with("frame-ancestors 'self' https://dashboard.popup.example"));
        assert_eq!(headers["cache-control"], "no-cache");
        let Body::Text(html) = index.body() else {
            panic!("text")
        };
        // No inline script: every <script> names a file of this origin.
        assert_eq!(html.matches("<script").count(), 1);
        assert!(html.contains(&format!("src=\"/portal/app.js?v={}\"", page.version)));
        assert!(!html.contains("http://") && !html.contains("https://"));
        let script = page
            .serve("/portal/app.js", Some(&format!("v={}", page.version)))
            .unwrap();
        assert_eq!(
            script.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        let stale = page.serve("/portal/app.css", Some("v=old")).unwrap();
        assert_eq!(stale.headers()["cache-control"], "no-cache");
        assert!(page.serve("/portal/other", None).is_none());
    }
}
