//! `/openapi.json` (OpenAPI 3, generated from the handlers' annotations with utoipa) and
//! `/docs`, a small self-contained page that lists it (no CDN, works offline).

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::error::ErrorBody;
use crate::actors::sessions::SessionView;
use crate::channels::{ChannelInput, ChannelView};

/// Every error: `{"error": {"code", "message", "field"?, "line"?, "column"?}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// One page of channels.
#[derive(Serialize, ToSchema)]
pub struct ChannelPage {
    pub items: Vec<ChannelView>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// A channel's open websocket sessions on this node.
#[derive(Serialize, ToSchema)]
pub struct SessionPage {
    pub items: Vec<SessionView>,
    pub total: usize,
}

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "oktell-gateway", description = "Integration gateway of Oktell Studio: channels, webhooks, websockets, events, scenario authoring (dry runs, versions, execution history with replay)."),
    paths(
        super::admin::create_channel,
        super::admin::list_channels,
        super::admin::get_channel,
        super::admin::update_channel,
        super::admin::delete_channel,
        super::admin::list_sessions,
        super::admin::push_to_session,
        super::admin::close_session,
        super::admin::node,
        super::admin::nodes,
        super::authoring::dry_run,
        super::authoring::versions,
        super::authoring::version,
        super::authoring::restore,
        super::executions::list,
        super::executions::get,
        super::executions::replay,
        super::events::publish,
        super::events::list,
        super::webhook::webhook,
        super::websocket::websocket,
        super::websocket::subscribe,
        super::subscribe::create,
        super::subscribe::list,
        super::subscribe::get,
        super::subscribe::delete,
        super::subscribe::rotate,
        super::subscriptions_admin::list,
        super::subscriptions_admin::get,
        super::subscriptions_admin::enable,
        super::subscriptions_admin::recover,
        super::subscriptions_admin::resend,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
    ),
    components(schemas(crate::events::webhooks::SubscriptionInput, crate::events::webhooks::SubscriptionView, crate::events::EventInput, crate::events::EventView, ChannelInput, ChannelView, ChannelPage, SessionView, SessionPage, ErrorResponse, ErrorBody, super::admin::PushBody,
        crate::channels::DryRunInput, crate::channels::authoring::SampleRequest, crate::channels::authoring::SampleMessage, crate::channels::authoring::MockInput,
        crate::scenario::dry_run::Report, crate::scenario::dry_run::ReplyRecord, crate::scenario::dry_run::ErrorRecord, crate::scenario::dry_run::LogLine,
        crate::scenario::dry_run::CallRecord, crate::scenario::dry_run::WsRecord, crate::scenario::dry_run::EventRecord, crate::scenario::dry_run::StateRecord, crate::scenario::dry_run::Text,
        super::authoring::VersionView, super::authoring::VersionPage, super::authoring::RestoreInput,
        super::executions::ExecutionView, super::executions::ExecutionPage, super::executions::ReplayInput, super::executions::ReplayReport,
        crate::executions::Inputs)),
    modifiers(&AdminToken)
)]
pub struct ApiDoc;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(openapi_json))
        .route("/docs", web::get().to(docs));
}

async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>oktell-gateway API</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
code{background:#f3f3f3;padding:0 .3em}h2{margin-top:2rem}.m{display:inline-block;width:4.5rem;font-weight:600}
details{margin:.3rem 0}pre{background:#f7f7f7;padding:.6rem;overflow:auto}</style></head>
<body><h1>oktell-gateway API</h1><p>The machine-readable document: <a href="openapi.json">/openapi.json</a>.</p>
<div id="api">Loading…</div>
<script>
fetch('openapi.json').then(r => r.json()).then(doc => {
  const root = document.getElementById('api'); root.textContent = '';
  const byTag = {};
  for (const [path, item] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(item))
      (byTag[(op.tags || ['other'])[0]] ||= []).push([method, path, op]);
  for (const [tag, ops] of Object.entries(byTag)) {
    const h = document.createElement('h2'); h.textContent = tag; root.append(h);
    for (const [method, path, op] of ops) {
      const d = document.createElement('details');
      const s = document.createElement('summary');
      s.innerHTML = '<span class="m"></span><code></code> ';
      s.children[0].textContent = method.toUpperCase(); s.children[1].textContent = path;
      s.append(op.summary || '');
      const pre = document.createElement('pre'); pre.textContent = JSON.stringify(op, null, 2);
      d.append(s, pre); root.append(d);
    }
  }
});
</script></body></html>"#;

async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(DOCS_PAGE)
}
