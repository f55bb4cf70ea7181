//! `/admin/v1/channels`: auth, validation, CRUD, masking, paging.

use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, TestApp, id_of, token_of};
use crate::on_both_backends;

on_both_backends!(
    crud_round_trip,
    validation_errors_name_the_field,
    duplicate_code_is_a_conflict,
    listing_filters_and_pages,
    secrets_are_masked_unless_asked,
);

#[actix_web::test]
async fn bearer_scheme_is_case_insensitive_and_wrong_methods_are_405() {
    let app = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite)
        .await
        .unwrap();
    let req = app
        .client
        .get(app.url("/admin/v1/channels"))
        .insert_header(("Authorization", format!("bearer {ADMIN_TOKEN}")));
    assert_eq!(app.send(req, None).await.status, 200);
    let r = app
        .admin("PUT", "/admin/v1/channels", Some(json!({})))
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.error_code(), "method_not_allowed");
    let r = app.admin("POST", "/admin/v1/channels/some-id", None).await;
    assert_eq!(r.status, 405);
}

#[actix_web::test]
async fn admin_token_is_required() {
    let app = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite)
        .await
        .unwrap();
    for token in [None, Some("wrong-token-wrong-token"), Some("")] {
        let r = app
            .admin_with_token("GET", "/admin/v1/channels", None, token)
            .await;
        assert_eq!(r.status, 401, "token {token:?}");
        assert_eq!(r.error_code(), "unauthorized");
    }
    let r = app
        .admin_with_token(
            "POST",
            "/admin/v1/channels",
            Some(json!({"code": "x", "kind": "public"})),
            Some("nope"),
        )
        .await;
    assert_eq!(r.status, 401);
    // Nothing was created by the refused request.
    let r = app
        .admin_with_token("GET", "/admin/v1/channels", None, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.json()["total"], 0);
}

async fn crud_round_trip(app: TestApp) {
    let created = app
        .create_channel(json!({
            "code": "crm.main",
            "kind": "public",
            "wait_for_completion": true,
            "ws_role": "edge",
            "outgoing_url": "https://crm.example.com/api",
            "outgoing_token_primary": "p-secret",
            "outgoing_token_secondary": "s-secret",
            "webhook_scenario": "response_code = 200;",
            "websocket_scenario": "",
            "comment": "main CRM",
        }))
        .await;
    let id = id_of(&created);
    let token = token_of(&created);
    assert!(token.len() >= 22, "token has at least 128 bits: {token}");
    assert!(
        token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    for (field, value) in [
        ("code", json!("crm.main")),
        ("kind", json!("public")),
        ("wait_for_completion", json!(true)),
        ("ws_role", json!("edge")),
        ("outgoing_url", json!("https://crm.example.com/api")),
        ("comment", json!("main CRM")),
        ("enabled", json!(true)),
        ("version", json!(1)),
        ("domain", json!("default")),
    ] {
        assert_eq!(created[field], value, "field {field}");
    }
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    let got = app
        .admin("GET", &format!("/admin/v1/channels/{id}"), None)
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["token"], token.as_str());
    // The channel's actor published version 1 before the create answered.
    assert_eq!(got.json()["runtime"]["version"], 1, "{}", got.text());

    let patched = app
        .admin(
            "PATCH",
            &format!("/admin/v1/channels/{id}"),
            Some(json!({"comment": "changed", "enabled": false})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    let patched = patched.json();
    assert_eq!(patched["comment"], "changed");
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["version"], 2);
    assert_eq!(patched["token"], token.as_str(), "token is immutable");
    assert_eq!(patched["ws_role"], "edge", "untouched fields stay");
    // ... and version 2 before the update answered.
    assert_eq!(app.runtime(&id).await["version"], 2);

    let deleted = app
        .admin("DELETE", &format!("/admin/v1/channels/{id}"), None)
        .await;
    assert_eq!(deleted.status, 204);
    // Retired by its actor before the delete answered: nothing serves the token.
    let r = app.webhook(&token, "POST", "", "").await;
    assert_eq!(r.status, 404);
    let gone = app
        .admin("GET", &format!("/admin/v1/channels/{id}"), None)
        .await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.error_code(), "channel_not_found");
    let again = app
        .admin("DELETE", &format!("/admin/v1/channels/{id}"), None)
        .await;
    assert_eq!(again.status, 404);
}

async fn validation_errors_name_the_field(app: TestApp) {
    let cases = [
        (json!({"kind": "public"}), "code"),
        (json!({"code": "", "kind": "public"}), "code"),
        (json!({"code": "a b", "kind": "public"}), "code"),
        (json!({"code": "x".repeat(65), "kind": "public"}), "code"),
        (json!({"code": "ok"}), "kind"),
        (json!({"code": "ok", "kind": "private"}), "kind"),
        (
            json!({"code": "ok", "kind": "public", "outgoing_url": "file:///etc/passwd"}),
            "outgoing_url",
        ),
        (
            json!({"code": "ok", "kind": "public", "outgoing_url": "http://"}),
            "outgoing_url",
        ),
        (
            json!({"code": "ok", "kind": "public", "token": "mine"}),
            "token",
        ),
        (
            json!({"code": "ok", "kind": "public", "outgoing_token_primary": "a\r\nX-Evil: 1"}),
            "outgoing_token_primary",
        ),
        (
            json!({"code": "ok", "kind": "public", "outgoing_token_secondary": "with space"}),
            "outgoing_token_secondary",
        ),
        (
            json!({"code": "ok", "kind": "public", "wait_for_completion": "yes"}),
            "wait_for_completion",
        ),
        (
            json!({"code": "ok", "kind": "public", "colour": "red"}),
            "colour",
        ),
    ];
    for (body, field) in cases {
        let r = app
            .admin("POST", "/admin/v1/channels", Some(body.clone()))
            .await;
        assert_eq!(r.status, 400, "{body} -> {}", r.text());
        let err = &r.json()["error"];
        assert_eq!(err["field"], field, "{body} -> {}", r.text());
        assert!(!err["message"].as_str().unwrap_or_default().is_empty());
    }
    // A scenario syntax error points at the line and column.
    let r = app
        .admin(
            "POST",
            "/admin/v1/channels",
            Some(json!({"code": "ok", "kind": "public", "webhook_scenario": "let a = 1;\nlet b = ;"})),
        )
        .await;
    assert_eq!(r.status, 400);
    let err = &r.json()["error"];
    assert_eq!(err["code"], "scenario_syntax_error");
    assert_eq!(err["field"], "webhook_scenario");
    assert_eq!(err["line"], 2);
    assert!(err["column"].as_u64().is_some());
    // Not JSON at all.
    let req = app
        .client
        .post(app.url("/admin/v1/channels"))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")));
    let r = app.send(req, Some(b"{not json".to_vec())).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["field"], "body");
    // None of the refused requests created anything.
    let list = app.admin("GET", "/admin/v1/channels", None).await;
    assert_eq!(list.json()["total"], 0);

    // Updates are validated the same way, and a refused update changes nothing.
    let c = app.public_channel("valid", false, "").await;
    let id = id_of(&c);
    for (body, field) in [
        (json!({"token": "x"}), "token"),
        (json!({"kind": "other"}), "kind"),
        (json!({"websocket_scenario": "fn ("}), "websocket_scenario"),
    ] {
        let r = app
            .admin(
                "PATCH",
                &format!("/admin/v1/channels/{id}"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["error"]["field"], field);
    }
    let after = app
        .admin("GET", &format!("/admin/v1/channels/{id}"), None)
        .await
        .json();
    assert_eq!(after["version"], 1);
    let r = app
        .admin(
            "PATCH",
            "/admin/v1/channels/no-such-id",
            Some(json!({"comment": "x"})),
        )
        .await;
    assert_eq!(r.status, 404);
}

async fn duplicate_code_is_a_conflict(app: TestApp) {
    app.public_channel("dup", false, "").await;
    let r = app
        .admin(
            "POST",
            "/admin/v1/channels",
            Some(json!({"code": "dup", "kind": "eventing"})),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["field"], "code");
    // Renaming another channel onto a taken code is refused too.
    let other = app.public_channel("other", false, "").await;
    let r = app
        .admin(
            "PATCH",
            &format!("/admin/v1/channels/{}", id_of(&other)),
            Some(json!({"code": "dup"})),
        )
        .await;
    assert_eq!(r.status, 409);
}

async fn listing_filters_and_pages(app: TestApp) {
    for i in 0..5 {
        app.public_channel(&format!("pub-{i}"), false, "").await;
    }
    for i in 0..3 {
        app.create_channel(json!({"code": format!("ev-{i}"), "kind": "eventing"}))
            .await;
    }
    let all = app.admin("GET", "/admin/v1/channels", None).await.json();
    assert_eq!(all["total"], 8);
    let eventing = app
        .admin("GET", "/admin/v1/channels?kind=eventing", None)
        .await
        .json();
    assert_eq!(eventing["total"], 3);
    assert!(
        eventing["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["kind"] == "eventing")
    );
    let by_code = app
        .admin("GET", "/admin/v1/channels?code=pub-3", None)
        .await
        .json();
    assert_eq!(by_code["total"], 1);
    assert_eq!(by_code["items"][0]["code"], "pub-3");
    let page = app
        .admin("GET", "/admin/v1/channels?limit=3&offset=3", None)
        .await
        .json();
    let codes: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes, ["pub-0", "pub-1", "pub-2"], "ordered by code");
    assert_eq!(page["total"], 8);
    for bad in [
        "limit=0",
        "limit=1001",
        "offset=-1",
        "kind=x",
        "limit=abc",
        "unknown=1",
    ] {
        let r = app
            .admin("GET", &format!("/admin/v1/channels?{bad}"), None)
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.json()["error"]["code"].is_string());
    }
}

async fn secrets_are_masked_unless_asked(app: TestApp) {
    let c = app
        .create_channel(json!({
            "code": "sec", "kind": "public",
            "outgoing_url": "ftp://files.example.com/in",
            "outgoing_token_primary": "prim-123",
        }))
        .await;
    assert_eq!(c["outgoing_token_primary"], "********");
    assert_eq!(
        c["outgoing_token_secondary"], "",
        "unset stays visibly unset"
    );
    let id = id_of(&c);
    let masked = app
        .admin("GET", &format!("/admin/v1/channels/{id}"), None)
        .await;
    assert!(!masked.text().contains("prim-123"));
    let revealed = app
        .admin(
            "GET",
            &format!("/admin/v1/channels/{id}?reveal_secrets=true"),
            None,
        )
        .await
        .json();
    assert_eq!(revealed["outgoing_token_primary"], "prim-123");
    let listed = app.admin("GET", "/admin/v1/channels", None).await;
    assert!(!listed.text().contains("prim-123"));

    // A password inside an FTP URL is a secret too: masked in reads and for scenarios.
    let ftp = app
        .create_channel(json!({
            "code": "ftp-pass", "kind": "public", "wait_for_completion": true,
            "outgoing_url": "ftp://loader:s3cret@files.example.com/in",
            "webhook_scenario": "response_content = startparam(1);",
        }))
        .await;
    assert!(!ftp.to_string().contains("s3cret"));
    assert!(ftp["outgoing_url"].as_str().unwrap().contains("loader:"));
    let revealed = app
        .admin(
            "GET",
            &format!("/admin/v1/channels/{}?reveal_secrets=true", id_of(&ftp)),
            None,
        )
        .await
        .json();
    assert_eq!(
        revealed["outgoing_url"],
        "ftp://loader:s3cret@files.example.com/in"
    );
    let seen = app
        .webhook(&crate::helpers::token_of(&ftp), "POST", "", "")
        .await;
    assert!(!seen.text().contains("s3cret"), "{}", seen.text());
}
