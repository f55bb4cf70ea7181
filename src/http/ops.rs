//! Operations endpoints: liveness, readiness, metrics.
//!
//! `/metrics` names every channel in its per-channel series. Those are shown on the
//! `metrics_listen` address (meant for scrapers on a private network), and on the main
//! listener only to a caller with the admin token (Prometheus sends it with
//! `authorization: {credentials: ...}`) or with `metrics_public_channels = true`.
//! Anyone else gets the node-wide series.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::http::state::AppState;

/// Set as app data on the `metrics_listen` server: its callers see every series.
#[derive(Clone, Copy)]
pub struct MetricsListener;

pub fn routes(cfg: &mut web::ServiceConfig) {
    // Resources, so that another method is a 405 with `Allow` rather than a 404.
    let resource =
        |path: &str| web::resource(path).default_service(web::to(super::admin::method_not_allowed));
    cfg.service(resource("/healthz").route(web::get().to(healthz)))
        .service(resource("/readyz").route(web::get().to(readyz)))
        .service(resource("/metrics").route(web::get().to(metrics)));
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive")))]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Ready when the database answers and has every migration this binary knows; the
/// registry is loaded before the listener opens.
/// Readiness: the database answers and has every migration of this binary.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready"), (status = 503, description = "Not ready")))]
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    // A node out of touch with the cluster refuses token routes: not ready, without
    // waiting on a database it cannot reach.
    let stale = state.freshness.is_stale();
    let migrations = if stale {
        Err(crate::db::StoreError::Pool(
            "out of touch with the cluster".into(),
        ))
    } else {
        // A probe answers in time even when the database does not.
        actix_web::rt::time::timeout(
            std::time::Duration::from_secs(2),
            state.db.migrations_applied(),
        )
        .await
        .unwrap_or_else(|_| Err(crate::db::StoreError::Pool("no answer within 2 s".into())))
    };
    let (ready, database, migrations) = match migrations {
        Ok(true) => (true, "ok".to_string(), "applied"),
        Ok(false) => (false, "ok".to_string(), "pending"),
        Err(e) => {
            // Details go to the log: this endpoint is unauthenticated.
            slog::warn!(state.logger, "readiness: database check failed"; "error" => %e);
            (false, "unavailable".to_string(), "unknown")
        }
    };
    let ready = ready && !stale;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "stale": stale,
        "database": database,
        "migrations": migrations,
        "channels_served": state.registry.len(),
        "domain": state.config.domain,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Metrics", content_type = "text/plain")))]
async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let per_channel = req.app_data::<MetricsListener>().is_some()
        || state.config.metrics_public_channels
        || super::admin::carries_admin_token(&req);
    // The outbox backlog is shared by the nodes of the domain: read it from storage.
    let domain = state.config.domain.clone();
    let outbox = state
        .db
        .run(move |c| crate::db::subscriptions::backlog(c, &domain))
        .await
        .ok();
    HttpResponse::Ok()
        .content_type(prometheus::TEXT_FORMAT)
        .body(crate::metrics::render(&state, outbox, per_channel))
}
