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
