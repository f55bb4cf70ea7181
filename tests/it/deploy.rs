//! The deploy/ folder: every YAML and JSON file parses and has the shape its tool
//! expects, the files agree with the gateway (probe paths, ports, graceful stop), and the
//! Grafana dashboard and the Prometheus alerts use only metrics that src/metrics.rs
//! exports. No network, no Docker: the files are read as text.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;
use serde_yaml::Value as Yaml;

const COMPOSE: &str = "deploy/docker-compose.yml";
const ALERTS: &str = "deploy/prometheus-alerts.yml";
const DASHBOARD: &str = "deploy/grafana-dashboard.json";
const K8S: &str = "deploy/k8s";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Every file below `deploy/`, as paths relative to the repository root, sorted.
fn deploy_files() -> Vec<String> {
    fn walk(dir: PathBuf, out: &mut Vec<String>) {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(path, out);
            } else {
                let rel = path
                    .strip_prefix(root())
                    .expect("below the repository root");
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(root().join("deploy"), &mut out);
    out.sort();
    out
}

/// The documents of a YAML file (several when separated by `---`); empty ones skipped.
fn yaml_documents(rel: &str) -> Vec<Yaml> {
    let text = read(rel);
    let docs: Vec<Yaml> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect();
    assert!(!docs.is_empty(), "{rel} holds no YAML document");
    docs
}

/// The value at a path of mapping keys, if every step exists.
fn at<'a>(value: &'a Yaml, path: &[&str]) -> Option<&'a Yaml> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

/// The string at a path of mapping keys.
fn str_at<'a>(value: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Yaml::as_str)
}

fn k8s_files() -> Vec<String> {
    let files: Vec<String> = deploy_files()
        .into_iter()
        .filter(|f| f.starts_with(&format!("{K8S}/")) && f.ends_with(".yaml"))
        .collect();
    assert!(!files.is_empty(), "no YAML file in {K8S}");
    files
}

/// Every `oktell_*` metric name in a PromQL expression, without the `_bucket`, `_count`
/// and `_sum` series suffixes of histograms.
fn metric_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    while let Some(found) = expr[i..].find("oktell_") {
        let start = i + found;
        let preceded_by_word =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start + "oktell_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded_by_word {
            let mut name = &expr[start..end];
            for suffix in ["_bucket", "_count", "_sum"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    name = base;
                    break;
                }
            }
            names.push(name.to_string());
        }
        i = end;
    }
    names
}

/// Asserts that every `oktell_*` metric used in `exprs` is a name src/metrics.rs writes
/// as a string literal; returns the names used.
fn assert_metrics_exist(what: &str, exprs: &[String]) -> BTreeSet<String> {
    let source = read("src/metrics.rs");
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    assert!(!used.is_empty(), "{what} uses no oktell_* metric");
    let unknown: Vec<&String> = used
        .iter()
        .filter(|name| !source.contains(&format!("\"{name}\"")))
        .collect();
    assert!(
        unknown.is_empty(),
        "{what} uses metrics that src/metrics.rs does not export: {unknown:?}"
    );
    used
}

#[test]
fn metric_names_are_found_in_expressions() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(oktell_scenario_duration_seconds_bucket[5m]))) \
         / x_oktell_not_this + oktell_db_pool_max",
    );
    assert_eq!(
        names,
        ["oktell_scenario_duration_seconds", "oktell_db_pool_max"]
    );
}

#[test]
fn every_deploy_file_is_documented_and_every_yaml_file_parses() {
    let files = deploy_files();
    let readme = read("deploy/README.md");
    for file in &files {
        let rel = file.strip_prefix("deploy/").expect("below deploy/");
        if rel != "README.md" {
            assert!(
                readme.contains(rel),
                "deploy/README.md does not mention {rel}"
            );
        }
        if rel.ends_with(".yml") || rel.ends_with(".yaml") {
            yaml_documents(file);
        }
    }
    for expected in [
        "deploy/Dockerfile",
        "deploy/README.md",
        COMPOSE,
        "deploy/nginx.conf",
        "deploy/oktell-gateway.service",
        ALERTS,
        DASHBOARD,
    ] {
        assert!(files.iter().any(|f| f == expected), "{expected} is missing");
    }
}

#[test]
fn compose_runs_postgres_two_gateway_nodes_and_nginx() {
    let docs = yaml_documents(COMPOSE);
    assert_eq!(docs.len(), 1, "{COMPOSE}: one document");
    let services = docs[0]
        .get("services")
        .and_then(Yaml::as_mapping)
        .expect("compose: a services mapping");
    let service = |name: &str| {
        services
            .get(name)
            .unwrap_or_else(|| panic!("compose: no service {name}"))
    };

    let postgres = service("postgres");
    assert!(
        str_at(postgres, &["image"]).is_some_and(|i| i.starts_with("postgres:16")),
        "compose: postgres runs PostgreSQL 16"
    );
    assert!(
        at(postgres, &["healthcheck", "test"]).is_some(),
        "compose: postgres has a healthcheck"
    );

    let nginx_address = str_at(service("nginx"), &["networks", "oktell", "ipv4_address"])
        .expect("compose: nginx has a fixed address (the gateway's trusted proxy)");
    let nginx_conf = read("deploy/nginx.conf");

    let gateways: Vec<&str> = services
        .iter()
        .filter(|(_, s)| {
            at(s, &["command"])
                .and_then(Yaml::as_sequence)
                .is_some_and(|c| c.first().and_then(Yaml::as_str) == Some("serve"))
        })
        .map(|(name, _)| name.as_str().expect("service names are strings"))
        .collect();
    assert_eq!(
        gateways.len(),
        2,
        "compose: two gateway nodes, got {gateways:?}"
    );
    let mut tokens = BTreeSet::new();
    for &name in &gateways {
        let env = |key: &str| {
            str_at(service(name), &["environment", key])
                .unwrap_or_else(|| panic!("compose: {name} has no {key}"))
        };
        assert_eq!(
            env("OKTELL_DATABASE_URL"),
            "postgres://oktell:oktell@postgres:5432/oktell"
        );
        assert_eq!(env("OKTELL_LOG_FORMAT"), "json");
        assert_eq!(env("OKTELL_LISTEN"), "0.0.0.0:8080");
        assert_eq!(env("OKTELL_TRUSTED_PROXIES"), nginx_address);
        tokens.insert(env("OKTELL_ADMIN_TOKEN"));
        assert!(
            at(service(name), &["depends_on", "postgres"]).is_some(),
            "compose: {name} waits for postgres"
        );
        assert!(
            nginx_conf.contains(&format!("server {name}:8080")),
            "nginx.conf: {name} is not in the upstream"
        );
    }
    assert_eq!(tokens.len(), 1, "compose: the nodes share one admin token");
    for needle in [
        "location /ws/",
        "proxy_set_header Upgrade $http_upgrade",
        "proxy_set_header Connection $connection_upgrade",
        "proxy_set_header X-Forwarded-For",
        "proxy_read_timeout",
    ] {
        assert!(nginx_conf.contains(needle), "nginx.conf lacks {needle:?}");
    }
}

#[test]
fn kubernetes_manifests_have_kind_name_and_the_probes() {
    let mut names: Vec<(String, String)> = Vec::new();
    let mut deployments = Vec::new();
    for file in k8s_files() {
        let docs = yaml_documents(&file);
        let mut kinds = BTreeSet::new();
        for doc in docs {
            let api = str_at(&doc, &["apiVersion"]);
            let kind = str_at(&doc, &["kind"]);
            let name = str_at(&doc, &["metadata", "name"]);
            let (Some(_), Some(kind), Some(name)) = (api, kind, name) else {
                panic!("{file}: every document needs apiVersion, kind and metadata.name");
            };
            kinds.insert(kind.to_string());
            names.push((kind.to_string(), name.to_string()));
            if kind == "Deployment" {
                deployments.push(doc);
            }
        }
        assert_eq!(kinds.len(), 1, "{file}: one kind per file, got {kinds:?}");
    }
    let has = |kind: &str, name: &str| names.iter().any(|(k, n)| k == kind && n == name);
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
    ] {
        assert!(names.iter().any(|(k, _)| k == kind), "{K8S}: no {kind}");
    }

    assert_eq!(deployments.len(), 1, "{K8S}: one Deployment");
    let deployment = &deployments[0];
    let spec = at(deployment, &["spec", "template", "spec"]).expect("Deployment: a pod spec");
    let grace = at(spec, &["terminationGracePeriodSeconds"])
        .and_then(Yaml::as_u64)
        .expect("Deployment: terminationGracePeriodSeconds");
    assert!(
        grace > 30,
        "the grace period must exceed the 30 s drain, is {grace}"
    );
    let containers = at(spec, &["containers"])
        .and_then(Yaml::as_sequence)
        .expect("Deployment: containers");
    let gateway = containers.first().expect("Deployment: a container");
    assert_eq!(
        str_at(gateway, &["readinessProbe", "httpGet", "path"]),
        Some("/readyz")
    );
    assert_eq!(
        str_at(gateway, &["livenessProbe", "httpGet", "path"]),
        Some("/healthz")
    );
    assert!(
        at(gateway, &["lifecycle", "preStop"]).is_some(),
        "Deployment: a preStop hook lets endpoints drain"
    );
    let env_from = at(gateway, &["envFrom"])
        .and_then(Yaml::as_sequence)
        .expect("Deployment: envFrom");
    for (reference, kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
        let name = env_from
            .iter()
            .find_map(|e| str_at(e, &[reference, "name"]))
            .unwrap_or_else(|| panic!("Deployment: envFrom has no {reference}"));
        assert!(
            has(kind, name),
            "Deployment: {reference} {name} is not in {K8S}"
        );
    }
    assert_eq!(
        at(deployment, &["spec", "replicas"]).and_then(Yaml::as_u64),
        Some(2)
    );
    let pod_labels = at(deployment, &["spec", "template", "metadata", "labels"])
        .expect("Deployment: pod labels");
    for file in k8s_files() {
        for doc in yaml_documents(&file) {
            let selector = match str_at(&doc, &["kind"]) {
                Some("Service") => at(&doc, &["spec", "selector"]),
                Some("PodDisruptionBudget") => at(&doc, &["spec", "selector", "matchLabels"]),
                _ => None,
            };
            if let Some(selector) = selector.and_then(Yaml::as_mapping) {
                for (key, value) in selector {
                    assert_eq!(
                        pod_labels.get(key),
                        Some(value),
                        "{file}: the selector does not match the Deployment's pods"
                    );
                }
            }
        }
    }
}

#[test]
fn every_alert_rule_is_complete_and_uses_known_metrics() {
    let docs = yaml_documents(ALERTS);
    let groups = docs[0]
        .get("groups")
        .and_then(Yaml::as_sequence)
        .expect("alerts: a groups list");
    assert!(!groups.is_empty(), "alerts: no group");
    let mut exprs = Vec::new();
    for group in groups {
        let name = str_at(group, &["name"]).expect("alerts: every group has a name");
        let rules = at(group, &["rules"])
            .and_then(Yaml::as_sequence)
            .unwrap_or_else(|| panic!("alerts: group {name} has no rules list"));
        assert!(!rules.is_empty(), "alerts: group {name} is empty");
        for rule in rules {
            let alert = str_at(rule, &["alert"])
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| panic!("alerts: a rule of {name} has no alert name"));
            let expr = str_at(rule, &["expr"])
                .filter(|e| !e.trim().is_empty())
                .unwrap_or_else(|| panic!("alerts: {alert} has no expr"));
            assert!(
                str_at(rule, &["labels", "severity"]).is_some(),
                "alerts: {alert} has no severity label"
            );
            assert!(
                str_at(rule, &["annotations", "summary"]).is_some(),
                "alerts: {alert} has no summary"
            );
            exprs.push(expr.to_string());
        }
    }
    let used = assert_metrics_exist(ALERTS, &exprs);
    for name in [
        "oktell_webhook_responses_total",
        "oktell_scenario_pool_admitted",
        "oktell_scenario_pool_queue_capacity",
        "oktell_channel_restarts_total",
        "oktell_db_pool_connections",
        "oktell_db_pool_max",
        "oktell_cluster_stale",
        "oktell_cluster_notification_queue_usage",
    ] {
        assert!(used.contains(name), "alerts: nothing watches {name}");
    }
}

#[test]
fn every_dashboard_panel_has_a_query_over_known_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    let panels = dashboard["panels"]
        .as_array()
        .expect("dashboard: a panels array");
    assert!(!panels.is_empty(), "dashboard: no panel");
    let mut exprs = Vec::new();
    for panel in panels {
        let title = panel["title"]
            .as_str()
            .filter(|t| !t.is_empty())
            .expect("dashboard: every panel has a title");
        assert!(panel["type"].is_string(), "dashboard: {title} has no type");
        let targets = panel["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("dashboard: {title} has no targets"));
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .filter(|e| !e.trim().is_empty())
                .unwrap_or_else(|| panic!("dashboard: a target of {title} has no expr"));
            exprs.push(expr.to_string());
        }
    }
    // Template variables query metrics too.
    if let Some(variables) = dashboard["templating"]["list"].as_array() {
        for variable in variables {
            let query = &variable["query"];
            if let Some(q) = query.as_str().or_else(|| query["query"].as_str()) {
                exprs.push(q.to_string());
            }
        }
    }
    let used = assert_metrics_exist(DASHBOARD, &exprs);
    assert!(
        exprs.iter().any(|e| e.contains("histogram_quantile(0.99")
            && e.contains("oktell_scenario_duration_seconds_bucket")),
        "dashboard: no p99 of the scenario duration"
    );
    for name in [
        "oktell_webhook_responses_total",
        "oktell_scenario_in_flight",
        "oktell_scenario_rejected_total",
        "oktell_channel_restarts_total",
        "oktell_ws_sessions_open",
        "oktell_ws_messages_total",
        "oktell_ws_sessions_closed_total",
        "oktell_scenario_pool_queue_depth",
        "oktell_scenario_pool_busy",
        "oktell_db_pool_connections",
        "oktell_build_info",
    ] {
        assert!(used.contains(name), "dashboard: no panel shows {name}");
    }
}

#[test]
fn image_and_unit_match_the_gateway() {
    let dockerfile = read("deploy/Dockerfile");
    for needle in [
        "FROM rust:1-bookworm",
        "cargo build --release --locked",
        "FROM debian:bookworm-slim",
        "libpq5",
        "OKTELL_LISTEN=0.0.0.0:8080",
        "OKTELL_DATA_DIR=/var/lib/oktell",
        "EXPOSE 8080",
        "USER 10001",
        "/healthz",
        "ENTRYPOINT [\"oktell-gateway\"]",
        "CMD [\"serve\"]",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle:?}");
    }
    let unit = read("deploy/oktell-gateway.service");
    for needle in [
        "User=oktell",
        "EnvironmentFile=/etc/oktell-gateway/env",
        "ExecStart=/usr/local/bin/oktell-gateway serve",
        "KillSignal=SIGTERM",
        "ReadWritePaths=/var/lib/oktell",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == needle),
            "oktell-gateway.service lacks {needle:?}"
        );
    }
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("oktell-gateway.service: TimeoutStopSec in seconds");
    assert!(
        stop > 30,
        "TimeoutStopSec must exceed the 30 s drain, is {stop}"
    );
}

/// The image's build context is the repository root: build output, local data (the
/// admin token, the SQLite file with every channel's tokens) and .git stay out of it,
/// and what the Dockerfile needs stays in.
#[test]
fn docker_context_leaves_out_target_and_data() {
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["/target", "/data", "*.db", "/.git"] {
        assert!(patterns.contains(&needed), ".dockerignore lacks {needed:?}");
    }
    for kept in [
        "src",
        "migrations",
        "benches",
        "Cargo.toml",
        "Cargo.lock",
        "config.default.toml",
    ] {
        assert!(
            !patterns
                .iter()
                .any(|p| p.trim_start_matches('/') == kept || *p == "*"),
            ".dockerignore must not leave out {kept:?}, the image build needs it"
        );
    }
}

/// Test builds unify a dev-dependency's features into the binary the tests run: a
/// dev-dependency on a crate the gateway already depends on (say, awc with TLS) would
/// make the tests pass with features the release lacks. So none may exist.
#[test]
fn no_dev_dependency_duplicates_a_dependency() {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml parses");
    let names = |section: &str| -> BTreeSet<String> {
        manifest
            .get(section)
            .and_then(|t| t.as_table())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    };
    let both: Vec<String> = names("dependencies")
        .intersection(&names("dev-dependencies"))
        .cloned()
        .collect();
    assert!(
        both.is_empty(),
        "dev-dependencies that are also dependencies: {both:?}"
    );
}
