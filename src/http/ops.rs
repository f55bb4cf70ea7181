//! Operations endpoints: liveness and readiness.

use actix_web::{HttpResponse, web};

use crate::app::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Ready when the database answers; the registry is loaded before the listener opens.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let database = state.db.ping().await;
    let body = serde_json::json!({
        "status": if database.is_ok() { "ready" } else { "not_ready" },
        "database": match &database { Ok(()) => "ok".to_string(), Err(e) => e.to_string() },
        "channels_served": state.registry.len(),
        "domain": state.config.domain,
    });
    if database.is_ok() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
