//! The operator's documentation stays true: every configuration key of the embedded defaults is in
//! the README's reference with its environment variable, and every alert has a runbook entry.

use figment::{
    providers::{Format, Toml},
    value::Value,
    Figment,
};

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

fn keys(prefix: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        // Maps of the operator's own names (librdkafka settings, vendors) are one key.
        Value::Dict(_, d) if !matches!(prefix, "kafka.client" | "gate.vendor_sla") => {
            for (k, v) in d {
                keys(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn every_configuration_key_is_in_the_readme_with_its_variable() {
    let defaults: Value = Figment::from(Toml::string(&read("config/default.toml"))).extract().unwrap();
    let mut all = Vec::new();
    keys("", &defaults, &mut all);
    assert!(all.len() > 40, "{all:?}");
    let readme = read("README.md");
    for key in all.iter().map(String::as_str).chain(["kafka.sasl_password", "state.redis.password", "state.redis.tls_ca_file"]) {
        let env = format!("LABELGATE__{}", key.replace('.', "__").to_uppercase());
        let row = readme.lines().find(|l| l.starts_with(&format!("| `{key}` |"))).unwrap_or_else(|| panic!("README has no reference row for `{key}`"));
        assert!(row.contains(&format!("`{env}`")), "row of `{key}` lacks `{env}`: {row}");
    }
}

#[test]
fn every_alert_has_a_runbook_entry_and_a_readme_row() {
    let rules = read("charts/labelgate/files/alerts.yaml");
    let runbook = read("docs/runbook.md");
    let readme = read("README.md");
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert_eq!(alerts.len(), 7);
    for a in alerts {
        assert!(runbook.contains(&format!("## {a}\n")), "docs/runbook.md has no section for {a}");
        for part in ["**Means.**", "**Check.**", "**Do.**"] {
            let section = runbook.split(&format!("## {a}\n")).nth(1).unwrap().split("\n## ").next().unwrap();
            assert!(section.contains(part), "runbook entry {a} lacks {part}");
        }
        assert!(readme.contains(&format!("docs/runbook.md#{}", a.to_lowercase())), "README does not link the runbook entry of {a}");
    }
}

/// Every file and folder at the top of `src/` has a row in the README's layout table, and every
/// `src/` path the table names exists.
#[test]
fn the_layout_table_names_every_module_and_only_those() {
    let readme = read("README.md");
    let table: Vec<&str> = readme.split("## Layout").nth(1).expect("a Layout section").lines().filter(|l| l.starts_with("| `")).collect();
    let named: Vec<String> = table.iter().filter_map(|l| l.split('`').nth(1)).map(str::to_string).collect();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let path = if entry.file_type().unwrap().is_dir() { format!("src/{name}/") } else { format!("src/{name}") };
        if name == "lib.rs" {
            continue;
        }
        assert!(named.iter().any(|n| n == &path) || table.iter().any(|l| l.contains(&format!("`{path}`"))), "README's layout table has no row for {path}");
    }
    for path in named.iter().filter(|n| n.starts_with("src/")) {
        assert!(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path).exists(), "README's layout table names {path}, which does not exist");
    }
}
