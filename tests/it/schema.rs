//! Schema tests (issue #15): schemathesis against `/openapi.json` of the real binary,
//! bounded in time. Every response must match its documented status and schema, a
//! documented method list (`405` with `Allow` for the others), and no 5xx but the
//! scenario's own on the webhook. Whatever `/openapi.json` lists is tested, so a new
//! endpoint is covered as soon as it is documented.
//!
//! schemathesis is found through `OKTELL_SCHEMATHESIS` (the `st` executable), or in the
//! venv `target/schemathesis/` that `.ci/run` installs. Under CI it must be there;
//! elsewhere the test skips, loudly, saying how to install it.

use std::path::PathBuf;
use std::time::Duration;

use awc::Client;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, GatewayProcess, id_of, skip_loudly, token_of};

/// The version `.ci/run` installs (README: "Schema tests").
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// The run's time bound in seconds (generation stops then; the last requests finish).
const MAX_TIME_S: u64 = 120;

fn schemathesis() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("OKTELL_SCHEMATHESIS") {
        return Some(PathBuf::from(path));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis/bin/st");
    if venv.is_file() {
        return Some(venv);
    }
    let how = format!(
        "python3 -m venv target/schemathesis && target/schemathesis/bin/pip install \
         schemathesis=={SCHEMATHESIS_VERSION} (or set OKTELL_SCHEMATHESIS to an `st`)"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but schemathesis is not installed: {how}");
    }
    skip_loudly(&format!(
        "schema test: schemathesis not found; install it with {how}"
    ));
    None
}

async fn post(client: &Client, url: String, admin: bool, body: Value) -> Value {
    let mut req = client.post(url);
    if admin {
        req = req.insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")));
    }
    let mut res = req.send_json(&body).await.expect("the gateway answers");
    let value: Value = res.json().await.expect("a JSON answer");
    assert!(res.status().is_success(), "{} {value}", res.status());
    value
}

/// What the run needs to reach the handlers' logic: real ids and tokens, per path.
/// DELETE gets none of them (it would take the data from the operations after it):
/// it deletes what the stateful phase created, or answers 404.
fn config(
    public_token: &str,
    victim_id: &str,
    eventing_token: &str,
    sub: &str,
    event: i64,
) -> String {
    format!(
        r#"# Written by tests/it/schema.rs.
# The phases share the ids they see (schemathesis' resource pool): a channel one
# sequence created may be deleted by another before its next step, and its 404 is
# right. Deletion itself is checked (404 after DELETE, use_after_free).
[checks]
enabled = true  # every check, but those turned off below with their reasons
ensure_resource_availability.enabled = false

# No inferred links: schemathesis 4.32 sometimes infers one from a channel's `id` to
# the subscribe list (whose path has `{{token}}`, no `id`) and then reports the document
# as invalid for its own guess. The stateful phase follows the document's links.
[phases.stateful.inference]
algorithms = []

[[operations]]
include-path-regex = '^/api/token/v1/\{{token\}}$'
parameters = {{ "path.token" = "{public_token}" }}
# The webhook answers what its scenario says, 500/502/503/504 included (documented);
# the body is the scenario's to read, so any body (or none) is accepted.
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "500", "502", "503", "504"]
checks.negative_data_rejection.enabled = false
# Every method reaches the scenario (it is documented as POST only for brevity).
checks.unsupported_method.enabled = false

[[operations]]
include-path-regex = '^/api/token/v1/\{{token\}}/subscribe'
exclude-method = "DELETE"
parameters = {{ "path.token" = "{eventing_token}", "path.id" = "{sub}" }}

[[operations]]
include-path-regex = '^/api/token/v1/\{{token\}}/subscribe'
include-method = "DELETE"
parameters = {{ "path.token" = "{eventing_token}" }}

[[operations]]
include-path-regex = '^/admin/v1/channels/\{{id\}}'
exclude-method = "DELETE"
parameters = {{ "path.id" = "{victim_id}", "path.v" = 1 }}

[[operations]]
include-path-regex = '^/admin/v1/subscriptions/\{{id\}}'
parameters = {{ "path.id" = "{sub}", "path.event_id" = {event} }}

# Bodies whose validity JSON Schema cannot state: a scenario must compile (Rhai), a
# subscriber's URL must resolve to an allowed address, a dry run's sample request
# must be a valid HTTP request (method token, header names, peer IP). A schema-valid
# body may be refused there with a 400 naming the field; every other check applies.
[[operations]]
include-path-regex = '^/admin/v1/channels(/\{{id\}})?$'
include-method = ["POST", "PATCH"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409"]

[[operations]]
include-path-regex = '^/admin/v1/channels/\{{id\}}/dry-run$'
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404"]

[[operations]]
include-path-regex = '^/api/token/v1/\{{token\}}/subscribe$'
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409"]
"#
    )
}

#[actix_web::test]
async fn every_documented_operation_answers_as_documented() {
    let Some(st) = schemathesis() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("oktell-schema-{}", uuid::Uuid::new_v4().simple()));
    // Subscribers at 127.0.0.1 are test data, not an attack.
    let gateway = GatewayProcess::start_logging(&dir, &["--allow-private-targets".into()]).await;
    let base = gateway.base.clone();
    let client = Client::builder().timeout(Duration::from_secs(30)).finish();

    // Test data, so that the run gets past "no such channel".
    let public = gateway
        .create_channel(json!({"code": "schema-public", "kind": "public", "webhook_scenario": ""}))
        .await;
    let victim = gateway
        .create_channel(json!({"code": "schema-victim", "kind": "public"}))
        .await;
    let eventing = gateway
        .create_channel(json!({"code": "schema-eventing", "kind": "eventing"}))
        .await;
    let eventing_token = token_of(&eventing);
    let sub = post(
        &client,
        format!("{base}/api/token/v1/{eventing_token}/subscribe"),
        false,
        json!({"url": "http://127.0.0.1:9/hook", "event_types": ["schema.*"]}),
    )
    .await;
    let event = post(
        &client,
        format!("{base}/admin/v1/events"),
        true,
        json!({"type": "schema.test", "data": {"n": 1}}),
    )
    .await;
    let config_text = config(
        &token_of(&public),
        &id_of(&victim),
        &eventing_token,
        sub["id"].as_str().expect("subscription id"),
        event["id"].as_i64().expect("event id"),
    );
    let config_file = dir.join("schemathesis.toml");
    std::fs::write(&config_file, config_text).expect("config written");

    let mut command = std::process::Command::new(&st);
    command
        .arg("--config-file")
        .arg(&config_file)
        .args(["run", &format!("{base}/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        // Every check: the config file enables them all and names its exceptions
        // (`--checks all` would override those).
        .args(["--max-time", &MAX_TIME_S.to_string()])
        // One worker: the machine's two cores also serve the gateway.
        .args(["--workers", "1", "--seed", "15"])
        // A websocket upgrade is not a request/response exchange schemathesis checks;
        // tests/it/websocket.rs and subscribe.rs cover those routes.
        .args(["--exclude-path-regex", "^/ws/"])
        .args(["--no-color"])
        // Its caches (.hypothesis) go to the test's folder.
        .current_dir(&dir)
        .env("NO_COLOR", "1");
    let started = std::time::Instant::now();
    let output = actix_web::rt::task::spawn_blocking(move || command.output())
        .await
        .expect("the run finishes")
        .expect("schemathesis starts");
    let report = String::from_utf8_lossy(&output.stdout);
    let tail = |s: &str, n: usize| s[s.len().saturating_sub(n)..].to_string();
    assert!(
        output.status.success(),
        "schemathesis found problems ({}, {:?}):\n{}\n{}\n--- gateway log (tail) ---\n{}",
        output.status,
        started.elapsed(),
        report,
        String::from_utf8_lossy(&output.stderr),
        tail(&gateway.log_text(), 8000),
    );
    // It ran something: a misconfigured run that tests nothing must not pass.
    assert!(
        report.contains("Tested:") && !report.contains("Tested: 0"),
        "schemathesis tested nothing:\n{report}"
    );
    drop(gateway);
}
