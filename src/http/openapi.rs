//! `/openapi.json` (OpenAPI 3, generated from the handlers' annotations with utoipa) and
//! `/docs`, a small self-contained page that lists it (no CDN, works offline).

use std::sync::LazyLock;

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
        super::status_api::history,
        super::status_api::eventing,
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
        crate::executions::Inputs,
        super::status_api::TrafficHistory, super::status_api::ChannelTraffic, super::status_api::EventingSummary, super::status_api::OutboxView,
        super::status_api::DeliveryCounts, super::status_api::SubscriptionCounts, super::status_api::SubscriptionAttention)),
    modifiers(&AdminToken)
)]
pub struct ApiDoc;

/// `/openapi.json`, built once: the annotations' document with what every operation
/// shares filled in ([`with_common_parts`]).
pub fn document() -> &'static serde_json::Value {
    static DOC: LazyLock<serde_json::Value> = LazyLock::new(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        with_common_parts(&mut doc);
        doc
    });
    &DOC
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "patch", "delete", "options", "head", "trace",
];

/// The answers every operation of a kind can give, so that a handler's annotation
/// lists only its own: 400 where it takes parameters or a body (an unknown query
/// field included), 401 where it needs the admin token, 404 where its path names a
/// resource. And `ChannelCreate`: `ChannelInput` with `code` and `kind` required, the
/// body of `POST /admin/v1/channels`.
fn with_common_parts(doc: &mut serde_json::Value) {
    use serde_json::json;
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
        })
    };
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            for method in METHODS {
                let Some(op) = item.get_mut(method).and_then(|o| o.as_object_mut()) else {
                    continue;
                };
                let takes_input = op.get("requestBody").is_some()
                    || op
                        .get("parameters")
                        .and_then(|p| p.as_array())
                        .is_some_and(|p| !p.is_empty());
                let secured = op.get("security").is_some();
                let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut())
                else {
                    continue;
                };
                if takes_input && !responses.contains_key("400") {
                    responses.insert("400".into(), error("Invalid input, naming the field"));
                }
                if secured && !responses.contains_key("401") {
                    responses.insert("401".into(), error("No or wrong admin token"));
                }
                if path.contains('{') && !responses.contains_key("404") {
                    responses.insert("404".into(), error("No such resource"));
                }
            }
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    let mut create = schemas["ChannelInput"].clone();
    if create.is_object() {
        create["required"] = json!(["code", "kind"]);
        create["description"] = json!("A channel to create: `code` and `kind` are required.");
        for field in ["code", "kind"] {
            create["properties"][field]["type"] = json!("string");
        }
        schemas["ChannelCreate"] = create;
        doc["paths"]["/admin/v1/channels"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"] = json!({"$ref": "#/components/schemas/ChannelCreate"});
    }
}

/// The methods `/openapi.json` documents for a path (as actix spells its pattern, e.g.
/// `/admin/v1/channels/{id}`), for `Allow` on 405: `"GET, PATCH, DELETE"`.
pub fn allowed_methods(pattern: &str) -> Option<String> {
    let item = document()["paths"].get(pattern)?;
    let allow: Vec<String> = METHODS
        .iter()
        .filter(|m| item.get(**m).is_some())
        .map(|m| m.to_ascii_uppercase())
        .collect();
    Some(allow.join(", "))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    use super::admin::only;
    cfg.service(
        web::resource("/openapi.json")
            .route(web::get().to(openapi_json))
            .default_service(only("GET")),
    )
    .service(
        web::resource("/docs")
            .route(web::get().to(docs))
            .default_service(only("GET")),
    );
}

async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(document())
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
