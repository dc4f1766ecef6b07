//! The Helm chart (charts/labelgate): `helm lint`, `helm template` with the default values and
//! with every option on, the rendered manifests against Kubernetes schemas (kubeconform), the
//! PrometheusRule holding exactly the project's alert-rules file, the rendered TOML accepted by
//! the service's own config loader, and the dashboard's queries parsed by promtool.
//! `scripts/test.sh` installs helm and kubeconform (scripts/chart-tools.sh) and puts them on PATH.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use figment::providers::{Format, Toml};
use serde_yaml_ng::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/labelgate")
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).current_dir(root()).output().unwrap_or_else(|e| panic!("{program}: {e}; scripts/test.sh installs it (scripts/chart-tools.sh)"))
}

fn ok(out: &Output, what: &str) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const ALL_ON: &str = "tests/chart/all-on.yaml";

/// `helm template` with `extra` arguments: the rendered documents.
fn render(extra: &[&str]) -> (String, Vec<Value>) {
    let chart = chart();
    let mut args = vec!["template", "lg", chart.to_str().unwrap(), "--namespace", "quality"];
    args.extend_from_slice(extra);
    let text = ok(&run("helm", &args), "helm template");
    let docs = serde_yaml_ng::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect();
    (text, docs)
}

use serde::Deserialize;

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs.iter().map(|d| d["kind"].as_str().unwrap().to_string()).collect();
    k.sort();
    k
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn all_on() -> Vec<&'static str> {
    vec!["-f", ALL_ON, "--api-versions", "monitoring.coreos.com/v1"]
}

#[test]
fn helm_lint_passes_with_default_and_all_on_values() {
    let chart = chart();
    ok(&run("helm", &["lint", "--strict", chart.to_str().unwrap()]), "helm lint");
    ok(&run("helm", &["lint", "--strict", chart.to_str().unwrap(), "-f", ALL_ON]), "helm lint (all on)");
}

#[test]
fn default_values_render_a_plain_deployment_without_operator_objects() {
    let (_, docs) = render(&[]);
    assert_eq!(kinds(&docs), ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]);
    // Asked for, but the cluster has no monitoring.coreos.com/v1: still none.
    let (_, docs) = render(&["--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true"]);
    assert!(!kinds(&docs).iter().any(|k| k == "ServiceMonitor" || k == "PrometheusRule"));
    let deployment = find(&docs, "Deployment");
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["limits"].get("nvidia.com/gpu").is_none());
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace >= 120, "grace period {grace} s must outlast a window");
}

#[test]
fn every_option_on_renders_operator_objects_gpu_and_secret_references() {
    let (text, docs) = render(&all_on());
    assert_eq!(kinds(&docs), ["ConfigMap", "ConfigMap", "Deployment", "Deployment", "PodDisruptionBudget", "PrometheusRule", "Service", "Service", "ServiceAccount", "ServiceMonitor"]);
    let pod = &find(&docs, "Deployment")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(c["image"], "registry.example.com/labelgate:0.1.0-cuda");
    assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
    assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.present"], "true");
    let secret_envs: Vec<&str> = c["env"].as_sequence().unwrap().iter().filter(|e| e["valueFrom"].get("secretKeyRef").is_some()).map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(secret_envs, ["LABELGATE__KAFKA__SASL_PASSWORD", "LABELGATE__STATE__REDIS__PASSWORD"]);
    let volumes: Vec<&str> = pod["volumes"].as_sequence().unwrap().iter().filter_map(|v| v["secret"]["secretName"].as_str()).collect();
    assert_eq!(volumes, ["labelgate-kafka-tls", "labelgate-redis-tls"]);
    let dashboard = docs.iter().find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1").expect("dashboard ConfigMap");
    serde_json::from_str::<serde_json::Value>(dashboard["data"]["labelgate.json"].as_str().unwrap()).expect("dashboard JSON");
    assert!(!text.to_lowercase().contains("password:"), "no secret value in any rendered object");
}

#[test]
fn the_review_bridge_takes_its_token_from_the_existing_secret_and_stays_out_of_the_gates_service() {
    let (text, docs) = render(&all_on());
    let bridge = docs.iter().find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "lg-labelgate-review-bridge").expect("bridge Deployment");
    let c = &bridge["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"][0], "review-bridge");
    assert_eq!(c["image"], "registry.example.com/labelgate:0.1.0", "the CPU image");
    let secret = |name: &str| c["env"].as_sequence().unwrap().iter().find(|e| e["name"] == name).map(|e| e["valueFrom"]["secretKeyRef"]["name"].clone());
    assert_eq!(secret("LABELGATE__REVIEW_BRIDGE__TOKEN").unwrap(), "labelgate-label-studio");
    assert_eq!(secret("LABELGATE__REVIEW_BRIDGE__WEBHOOK_SECRET").unwrap(), "labelgate-label-studio");
    let gate_service = docs.iter().find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "lg-labelgate").unwrap();
    let pod_labels = &bridge["spec"]["template"]["metadata"]["labels"];
    let selects_bridge = gate_service["spec"]["selector"].as_mapping().unwrap().iter().all(|(k, v)| pod_labels.get(k) == Some(v));
    assert!(!selects_bridge, "the gate's Service must not select the bridge's pods");
    assert!(!text.contains("token:"), "no token value in any rendered object");
    let (_, docs) = render(&[]);
    assert_eq!(docs.iter().filter(|d| d["kind"] == "Deployment").count(), 1, "no bridge unless enabled");
}

#[test]
fn the_prometheus_rule_holds_exactly_the_alert_rules_file() {
    let (_, docs) = render(&all_on());
    let rule = find(&docs, "PrometheusRule");
    let file: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(chart().join("files/alerts.yaml")).unwrap()).unwrap();
    assert_eq!(rule["spec"], file, "PrometheusRule.spec differs from charts/labelgate/files/alerts.yaml");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
}

/// The ConfigMap's TOML goes through the service's own loader: unknown keys, wrong types and
/// invalid values would fail here, not in the cluster.
#[test]
fn the_rendered_config_is_accepted_by_the_service() {
    for extra in [vec![], all_on()] {
        let (_, docs) = render(&extra);
        let cm = docs.iter().find(|d| d["kind"] == "ConfigMap" && d["data"].get("labelgate.toml").is_some()).expect("config map");
        let toml = cm["data"]["labelgate.toml"].as_str().unwrap();
        let config =
            labelgate::config::Config::from_figment(labelgate::config::Config::defaults_figment().merge(Toml::string(toml))).unwrap_or_else(|e| panic!("rendered config rejected:\n{e}\n{toml}"));
        assert_eq!(config.metrics.listen, "0.0.0.0:9464");
        if !extra.is_empty() {
            assert_eq!(config.runtime.device, labelgate::device::DeviceChoice::Cuda);
            assert_eq!(config.kafka.client["ssl.ca.location"], "/etc/labelgate/kafka-tls/ca.crt");
            assert_eq!(config.state.redis.tls_ca_file.as_deref(), Some(Path::new("/etc/labelgate/redis-tls/ca.crt")));
            assert_eq!(config.gate.sla("acme-labels"), 0.95);
            assert_eq!(config.kafka.client["fetch.wait.max.ms"], "100");
            assert_eq!(config.kafka.client["enable.ssl.certificate.verification"], "true");
        }
    }
}

#[test]
fn the_values_schema_refuses_bad_values() {
    let chart = chart();
    for (set, why) in [
        ("config.kafka.sasl_password=hunter2", "a password in the ConfigMap"),
        ("replicaCount=two", "a replica count that is not a number"),
        ("gpu.enabeld=true", "a misspelt key"),
        ("config.review_bridge.token=pat", "a Label Studio token in the ConfigMap"),
    ] {
        let out = run("helm", &["template", "lg", chart.to_str().unwrap(), "--set", set]);
        assert!(!out.status.success(), "{why} ({set}) was accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("values don't meet the specifications of the schema"), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn rendered_manifests_pass_kubeconform() {
    let args = ok(&run("bash", &["scripts/chart-tools.sh", "kubeconform-args"]), "chart-tools.sh kubeconform-args");
    let args: Vec<&str> = args.split_whitespace().collect();
    for (name, extra) in [("default", vec![]), ("all-on", all_on())] {
        let (text, _) = render(&extra);
        let file = std::env::temp_dir().join(format!("labelgate-chart-{}-{name}.yaml", std::process::id()));
        std::fs::write(&file, text).unwrap();
        let mut a = args.clone();
        a.push(file.to_str().unwrap());
        ok(&run("kubeconform", &a), &format!("kubeconform ({name})"));
    }
}

/// Every dashboard query parses as PromQL (as recording rules through promtool).
#[test]
fn dashboard_queries_parse() {
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(chart().join("files/dashboard.json")).unwrap()).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", "5m").replace("$vendor", ".*");
            rules.push_str(&format!("      - record: dashboard:query{n}\n        expr: {}\n", serde_json::to_string(&expr).unwrap()));
            n += 1;
        }
    }
    let file = std::env::temp_dir().join(format!("labelgate-dashboard-{}.rules.yaml", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    ok(&run("promtool", &["check", "rules", file.to_str().unwrap()]), "promtool check rules (dashboard queries)");
    assert!(n >= 10, "{n} queries");
}

/// No Docker engine here: the Dockerfile is linted instead (hadolint, from scripts/chart-tools.sh).
#[test]
fn the_dockerfile_passes_hadolint() {
    ok(&run("hadolint", &["--no-color", "--failure-threshold", "info", "Dockerfile"]), "hadolint Dockerfile");
}
