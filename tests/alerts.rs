//! The Prometheus alert rules the Helm chart ships (charts/labelgate/files/alerts.yaml): promtool
//! accepts them, their unit tests (tests/alerts/alerts.test.yaml) pass, and each alert has its
//! severity, summary, description and runbook link.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
};

const RUNBOOK: &str = "https://github.com/labelgate/labelgate/blob/main/docs/runbook.md";

fn manifest_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn rules_path() -> PathBuf {
    manifest_path("charts/labelgate/files/alerts.yaml")
}

/// Runs `promtool <args>` and fails the test, with promtool's output, unless it succeeds. A missing
/// promtool fails too: skipping would let broken rules pass CI unnoticed.
fn promtool(args: &[&str], file: &Path) {
    let out = match Command::new("promtool").args(args).arg(file).output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!("promtool is not on PATH; scripts/test.sh installs it (Debian package prometheus)"),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {} {} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}", args.join(" "), file.display(), out.status);
}

#[test]
fn promtool_accepts_the_alert_rules() {
    promtool(&["check", "rules"], &rules_path());
}

#[test]
fn alert_rule_unit_tests_pass() {
    promtool(&["test", "rules"], &manifest_path("tests/alerts/alerts.test.yaml"));
}

/// Every alert the rules file defines (read from it, not listed here), once, with its severity,
/// summary, description and runbook link; each has a runbook section and a unit test.
#[test]
fn every_alert_is_defined_with_severity_runbook_and_a_unit_test() {
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(rules_path()).unwrap()).unwrap();
    let alerts: Vec<&serde_yaml_ng::Value> = rules["groups"].as_sequence().unwrap().iter().flat_map(|g| g["rules"].as_sequence().unwrap()).filter(|r| r.get("alert").is_some()).collect();
    assert!(alerts.len() >= 7, "{} alerts in {}", alerts.len(), rules_path().display());
    let runbook = std::fs::read_to_string(manifest_path("docs/runbook.md")).unwrap();
    let unit_tests = std::fs::read_to_string(manifest_path("tests/alerts/alerts.test.yaml")).unwrap();
    let mut names: Vec<&str> = alerts.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    for rule in &alerts {
        let alert = rule["alert"].as_str().unwrap();
        let text = |field: &str, key: &str| rule[field][key].as_str().unwrap_or_default().to_string();
        assert_eq!(text("annotations", "runbook_url"), format!("{RUNBOOK}#{}", alert.to_lowercase()), "{alert}'s runbook link");
        assert!(!text("labels", "severity").is_empty(), "{alert} lacks a severity label");
        assert!(!text("annotations", "summary").is_empty(), "{alert} lacks a summary annotation");
        assert!(!text("annotations", "description").is_empty(), "{alert} lacks a description annotation");
        assert!(runbook.lines().any(|l| l == format!("## {alert}")), "docs/runbook.md has no section `## {alert}`");
        assert!(unit_tests.contains(&format!("alertname: {alert}")), "tests/alerts/alerts.test.yaml has no test of {alert}");
    }
    names.sort();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "an alert is defined twice");
}
