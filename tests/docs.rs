//! The operator's documentation stays true: every configuration key of the embedded defaults is in
//! the reference of docs/configuration.md with its environment variable, every alert has a runbook
//! entry and a row in docs/gate.md that links it, the README's layout table matches `src/`, and
//! every relative link in README.md and docs/ names a file that exists.

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
fn every_configuration_key_is_in_the_reference_with_its_variable() {
    let defaults: Value = Figment::from(Toml::string(&read("config/default.toml"))).extract().unwrap();
    let mut all = Vec::new();
    keys("", &defaults, &mut all);
    assert!(all.len() > 40, "{all:?}");
    let reference = read("docs/configuration.md");
    let secrets = ["kafka.sasl_password", "state.redis.password", "state.redis.tls_ca_file", "review_bridge.token", "review_bridge.webhook_secret"];
    for key in all.iter().map(String::as_str).chain(secrets) {
        let env = format!("LABELGATE__{}", key.replace('.', "__").to_uppercase());
        let row = reference.lines().find(|l| l.starts_with(&format!("| `{key}` |"))).unwrap_or_else(|| panic!("docs/configuration.md has no reference row for `{key}`"));
        assert!(row.contains(&format!("`{env}`")), "row of `{key}` lacks `{env}`: {row}");
    }
}

#[test]
fn every_alert_has_a_runbook_entry_and_a_linked_row() {
    let rules = read("charts/labelgate/files/alerts.yaml");
    let runbook = read("docs/runbook.md");
    let gate = read("docs/gate.md");
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert_eq!(alerts.len(), 7);
    for a in alerts {
        assert!(runbook.contains(&format!("## {a}\n")), "docs/runbook.md has no section for {a}");
        for part in ["**Means.**", "**Check.**", "**Do.**"] {
            let section = runbook.split(&format!("## {a}\n")).nth(1).unwrap().split("\n## ").next().unwrap();
            assert!(section.contains(part), "runbook entry {a} lacks {part}");
        }
        let row = gate.lines().find(|l| l.starts_with(&format!("| `{a}` |"))).unwrap_or_else(|| panic!("docs/gate.md's alerts table has no row for {a}"));
        assert!(row.contains(&format!("](runbook.md#{})", a.to_lowercase())), "docs/gate.md's row of {a} does not link its runbook entry: {row}");
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

/// The targets of the inline links and images on one line of markdown, code spans left out.
fn link_targets(line: &str) -> Vec<String> {
    let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
    prose
        .match_indices("](")
        .filter_map(|(i, _)| {
            let rest = &prose[i + 2..];
            let target = &rest[..rest.find(')')?];
            Some(target.split_whitespace().next().unwrap_or("").trim_matches(['<', '>']).to_string())
        })
        .collect()
}

/// Every relative link and image in README.md and in the markdown pages under `docs/` names a file
/// or folder that exists, read relative to the page (any `#anchor` stripped). Links in fenced code
/// blocks and code spans are not links; web addresses and in-page anchors are not checked.
#[test]
fn every_relative_link_resolves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    let (mut checked, mut broken) = (0, Vec::new());
    for page in &pages {
        let mut fenced = false;
        for (n, line) in std::fs::read_to_string(page).unwrap().lines().enumerate() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
            }
            if fenced || line.trim_start().starts_with("```") {
                continue;
            }
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") || target.starts_with('#') {
                    continue;
                }
                checked += 1;
                let file = target.split('#').next().unwrap();
                if file.is_empty() || !page.parent().unwrap().join(file).exists() {
                    broken.push(format!("{}:{}: {target}", page.strip_prefix(root).unwrap().display(), n + 1));
                }
            }
        }
    }
    assert!(pages.len() > 10 && checked > 50, "{} pages, {checked} relative links: the scan found too little", pages.len());
    assert!(broken.is_empty(), "relative links to nothing:\n{}", broken.join("\n"));
}
