//! The status page at `/admin/`: one static HTML file embedded in the binary. It asks
//! for the admin token once (kept in the tab's sessionStorage) and polls the admin API.

use actix_web::{HttpResponse, web};

const INDEX: &str = include_str!("status/index.html");

pub fn routes(cfg: &mut web::ServiceConfig) {
    use super::admin::only;
    cfg.service(
        web::resource("/admin/")
            .route(web::get().to(index))
            .default_service(only("GET")),
    )
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

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // The page runs only its own inline script and talks only to this origin.
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ))
        .insert_header(("X-Frame-Options", "DENY"))
        .body(INDEX)
}
