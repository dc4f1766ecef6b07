//! The Prometheus alert rules the Helm chart ships (charts/labelgate/files/alerts.yaml): promtool
//! accepts them, their unit tests (tests/alerts/alerts.test.yaml) pass, and each alert has its
//! severity, summary, description and runbook link.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
};

const ALERTS: [&str; 5] = [
    "LabelgateVendorAccuracyBelowSla",
    "LabelgateVendorAccuracyDrop",
    "LabelgateNoWindowCompleted",
    "LabelgateDeadLetterSpike",
    "LabelgateNotReady",
];

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
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "promtool is not on PATH; scripts/test.sh installs it (Debian package prometheus)"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool {} {} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        args.join(" "),
        file.display(),
        out.status
    );
}

#[test]
fn promtool_accepts_the_alert_rules() {
    promtool(&["check", "rules"], &rules_path());
}

#[test]
fn alert_rule_unit_tests_pass() {
    promtool(
        &["test", "rules"],
        &manifest_path("tests/alerts/alerts.test.yaml"),
    );
}

/// No YAML parser (no new crates): each `- alert:` item runs to the next one, which is enough to
/// tie a rule to its labels and annotations in this file's layout.
#[test]
fn every_alert_is_defined_with_severity_and_runbook() {
    let text = std::fs::read_to_string(rules_path()).unwrap();
    let rules: Vec<(&str, &str)> = text
        .split("- alert:")
        .skip(1)
        .map(|rule| {
            let name = rule.lines().next().unwrap_or("").trim();
            (name, rule)
        })
        .collect();
    for alert in ALERTS {
        let matching: Vec<&str> = rules
            .iter()
            .filter(|(name, _)| *name == alert)
            .map(|(_, r)| *r)
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "{alert} must be defined exactly once in {}",
            rules_path().display()
        );
        let rule = matching[0];
        let runbook = format!("runbook_url: {RUNBOOK}#{}", alert.to_lowercase());
        assert!(rule.contains(&runbook), "{alert} lacks `{runbook}`");
        assert!(rule.contains("severity:"), "{alert} lacks a severity label");
        assert!(
            rule.contains("summary:"),
            "{alert} lacks a summary annotation"
        );
        assert!(
            rule.contains("description:"),
            "{alert} lacks a description annotation"
        );
    }
}
