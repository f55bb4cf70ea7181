//! The binary's `channel` commands share the admin API's validation.

use std::process::Command;

/// The binary with `args`, on an SQLite database in `dir`.
pub(crate) fn gateway(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oktell-gateway"))
        .args(["--database-url", &dir.join("cli.db").display().to_string()])
        .args(["--data-dir", &dir.display().to_string()])
        .args(args)
        .env_remove("OKTELL_ADMIN_TOKEN")
        .output()
        .expect("binary runs")
}

#[test]
fn channel_commands_create_list_show_and_validate() {
    let dir = std::env::temp_dir().join(format!("oktell-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("hook.rhai");
    std::fs::write(&script, "response_content = \"hi\";").unwrap();

    let out = gateway(&dir, &["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = gateway(
        &dir,
        &[
            "channel",
            "create",
            "--code",
            "cli",
            "--kind",
            "public",
            "--webhook-scenario-file",
            script.to_str().unwrap(),
            "--outgoing-token-primary",
            "sekret",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["code"], "cli");
    assert_eq!(created["outgoing_token_primary"], "********");

    let out = gateway(
        &dir,
        &[
            "channel", "create", "--code", "bad code", "--kind", "public",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("code:"));

    let bad = dir.join("bad.rhai");
    std::fs::write(&bad, "let x = ;").unwrap();
    let out = gateway(
        &dir,
        &[
            "channel",
            "create",
            "--code",
            "b",
            "--kind",
            "public",
            "--webhook-scenario-file",
            bad.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = gateway(&dir, &["channel", "list"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listing.lines().count(), 1, "{listing}");
    assert!(listing.contains("\tcli\tpublic\tenabled"));

    let out = gateway(&dir, &["channel", "show", "cli", "--reveal-secrets"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["outgoing_token_primary"], "sekret");

    let out = gateway(&dir, &["channel", "update", "cli", "--enabled", "false"]);
    let updated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(updated["enabled"], false);
    assert_eq!(updated["version"], 2);

    let out = gateway(&dir, &["channel", "delete", "cli"]);
    assert!(out.status.success());
    let out = gateway(&dir, &["channel", "show", "cli"]);
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `subscriptions create` with private targets allowed.
fn subscribe(dir: &std::path::Path, channel: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--allow-private-targets",
        "subscriptions",
        "create",
        "--channel",
        channel,
        "--url",
        "https://127.0.0.1:9/hook",
    ];
    args.extend_from_slice(extra);
    gateway(dir, &args)
}

fn refused(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn events_and_subscriptions_commands_share_the_apis_rules() {
    let dir = std::env::temp_dir().join(format!("oktell-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();

    // --event-types on channel create and update.
    let created: serde_json::Value = serde_json::from_str(&ok(&gateway(
        &dir,
        &[
            "channel",
            "create",
            "--code",
            "feed",
            "--kind",
            "eventing",
            "--event-types",
            "call.*,order.paid",
        ],
    )))
    .unwrap();
    assert_eq!(
        created["event_types"],
        serde_json::json!(["call.*", "order.paid"])
    );
    let updated: serde_json::Value = serde_json::from_str(&ok(&gateway(
        &dir,
        &["channel", "update", "feed", "--event-types", "call.ended"],
    )))
    .unwrap();
    assert_eq!(updated["event_types"], serde_json::json!(["call.ended"]));
    let err = refused(&gateway(
        &dir,
        &[
            "channel",
            "update",
            "feed",
            "--event-types",
            "Not A Pattern",
        ],
    ));
    assert!(err.contains("event_types[0]"), "{err}");
    let cleared: serde_json::Value = serde_json::from_str(&ok(&gateway(
        &dir,
        &["channel", "update", "feed", "--event-types", ""],
    )))
    .unwrap();
    assert_eq!(cleared["event_types"], serde_json::json!([]));

    // events publish / list.
    let data = dir.join("data.json");
    std::fs::write(&data, r#"{"call_id": "c-1"}"#).unwrap();
    let event: serde_json::Value = serde_json::from_str(&ok(&gateway(
        &dir,
        &[
            "events",
            "publish",
            "--type",
            "call.ended",
            "--data",
            &format!("@{}", data.display()),
            "--idempotency-key",
            "k1",
        ],
    )))
    .unwrap();
    assert_eq!(event["type"], "call.ended");
    assert_eq!(event["data"], serde_json::json!({"call_id": "c-1"}));
    let again = gateway(
        &dir,
        &[
            "events",
            "publish",
            "--type",
            "call.ended",
            "--idempotency-key",
            "k1",
        ],
    );
    let again_event: serde_json::Value = serde_json::from_str(&ok(&again)).unwrap();
    assert_eq!(again_event["id"], event["id"], "deduplicated by the key");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already stored"));
    ok(&gateway(
        &dir,
        &[
            "events",
            "publish",
            "--type",
            "order.paid",
            "--data",
            r#"{"n": 2}"#,
        ],
    ));
    let err = refused(&gateway(&dir, &["events", "publish", "--type", "Bad Type"]));
    assert!(err.contains("type:"), "{err}");
    let err = refused(&gateway(
        &dir,
        &["events", "publish", "--type", "a.b", "--data", "[1]"],
    ));
    assert!(err.contains("data: must be a JSON object"), "{err}");
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&gateway(&dir, &["events", "list"]))).unwrap();
    let types: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["call.ended", "order.paid"]);
    assert_eq!(listed["last_id"], 2);
    let after: serde_json::Value = serde_json::from_str(&ok(&gateway(
        &dir,
        &["events", "list", "--after", "1", "--limit", "5"],
    )))
    .unwrap();
    assert_eq!(after["items"].as_array().unwrap().len(), 1);
    refused(&gateway(&dir, &["events", "list", "--limit", "0"]));

    // subscriptions create / list / show / enable / delete.
    let err = refused(&gateway(
        &dir,
        &[
            "subscriptions",
            "create",
            "--channel",
            "feed",
            "--url",
            "https://127.0.0.1:9/hook",
        ],
    ));
    assert!(err.contains("url:"), "private targets are refused: {err}");
    ok(&gateway(
        &dir,
        &["channel", "create", "--code", "pub", "--kind", "public"],
    ));
    let err = refused(&subscribe(&dir, "pub", &[]));
    assert!(err.contains("not an eventing channel"), "{err}");
    let sub: serde_json::Value = serde_json::from_str(&ok(&subscribe(
        &dir,
        "feed",
        &["--event-types", "call.*", "--description", "CRM"],
    )))
    .unwrap();
    let id = sub["id"].as_str().unwrap().to_string();
    assert!(
        sub["secret"].as_str().unwrap().starts_with("whsec_"),
        "{sub}"
    );
    assert_eq!(sub["event_types"], serde_json::json!(["call.*"]));
    let listing = ok(&gateway(
        &dir,
        &["subscriptions", "list", "--channel", "feed"],
    ));
    assert_eq!(
        listing.trim(),
        format!("{id}\tfeed\thttps://127.0.0.1:9/hook\tenabled")
    );
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&gateway(&dir, &["subscriptions", "show", &id]))).unwrap();
    assert_eq!(shown["description"], "CRM");
    assert!(
        shown.get("secret").is_none(),
        "the secret is shown only on create"
    );
    let enabled: serde_json::Value =
        serde_json::from_str(&ok(&gateway(&dir, &["subscriptions", "enable", &id]))).unwrap();
    assert_eq!(enabled["enabled"], true);
    ok(&gateway(&dir, &["subscriptions", "delete", &id]));
    let err = refused(&gateway(&dir, &["subscriptions", "show", &id]));
    assert!(err.contains("no subscription"), "{err}");
    refused(&gateway(&dir, &["subscriptions", "delete", &id]));
    assert_eq!(ok(&gateway(&dir, &["subscriptions", "list"])).trim(), "");
    let _ = std::fs::remove_dir_all(&dir);
}
