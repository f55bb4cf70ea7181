//! The status page at `/admin/`: a static HTML page, its script and its style sheet,
//! embedded in the binary. The page asks for the admin token once (kept in the tab's
//! sessionStorage) and polls the admin API. It runs under a Content-Security-Policy
//! without `unsafe-inline`: nothing inline, only these files, and everything it shows
//! that callers or scripts wrote is set as text (the script never parses markup).

use actix_web::{HttpResponse, web};

const INDEX: &str = include_str!("status/index.html");
const SCRIPT: &str = include_str!("status/status.js");
const STYLE: &str = include_str!("status/status.css");

/// The page's policy: its own script and style sheet, requests to this origin only;
/// no inline script, style or handler, no plugins, frames, forms or base URL.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes(cfg: &mut web::ServiceConfig) {
    use super::admin::only;
    let file = |path: &str, content_type: &'static str, body: &'static str| {
        web::resource(path)
            .route(web::get().to(move || async move { serve(content_type, body) }))
            .default_service(only("GET"))
    };
    cfg.service(file("/admin/", "text/html; charset=utf-8", INDEX))
        .service(file(
            "/admin/status.js",
            "text/javascript; charset=utf-8",
            SCRIPT,
        ))
        .service(file("/admin/status.css", "text/css; charset=utf-8", STYLE))
        .service(
            web::resource("/admin")
                .route(web::get().to(|| async {
                    HttpResponse::PermanentRedirect()
                        .insert_header(("Location", "/admin/"))
                        .finish()
                }))
                .default_service(only("GET")),
        );
}

fn serve(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Content-Security-Policy", CSP))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        // A new binary's page is picked up at once (the files are small).
        .insert_header(("Cache-Control", "no-cache"))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_inline() {
        assert!(!CSP.contains("unsafe"));
        // No inline script, style, handler or style attribute in the markup.
        for banned in [
            "<script>",
            "<style",
            " style=",
            " onclick",
            " onload",
            " onsubmit",
        ] {
            assert!(!INDEX.contains(banned), "index.html contains {banned}");
        }
        assert!(INDEX.contains(r#"<script src="status.js""#));
        assert!(INDEX.contains(r#"<link rel="stylesheet" href="status.css">"#));
        // The script builds markup from data only through DOM APIs.
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!SCRIPT.contains(banned), "status.js uses {banned}");
        }
    }
}
