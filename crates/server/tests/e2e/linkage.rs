//! What the server is built from: no libtorch in its binary or its dependency tree.

use super::*;

#[test]
fn the_server_binary_does_not_link_libtorch() {
    let out = Command::new("readelf")
        .args(["-d", SERVER])
        .output()
        .expect("readelf (binutils) is needed");
    let text = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = text.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(!needed.is_empty(), "{text}");
    assert!(
        needed
            .iter()
            .all(|l| !l.contains("libtorch") && !l.contains("libc10")),
        "{needed:#?}"
    );
    // No search path into a torch installation either (the trainer's build script bakes
    // one into the trainer only).
    let paths: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("(RUNPATH)") || l.contains("(RPATH)"))
        .collect();
    assert!(paths.iter().all(|l| !l.contains("torch")), "{paths:#?}");
}

/// Every package `simsiam-server` can reach in `Cargo.lock`, itself included. The lock
/// file lists each package's dependencies of every kind, dev-dependencies included, so
/// this is a superset of what the server binary is built from.
fn lock_closure(lock: &str, from: &str) -> std::collections::BTreeSet<String> {
    let mut deps: std::collections::HashMap<String, Vec<String>> = Default::default();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        let name = field("name = ").unwrap_or_default();
        let list = block
            .split("dependencies = [")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .unwrap_or("");
        let names = list
            .split(',')
            .filter_map(|d| d.trim().trim_matches('"').split(' ').next())
            .filter(|d| !d.is_empty())
            .map(str::to_string);
        deps.entry(name).or_default().extend(names);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(p) = todo.pop() {
        if seen.insert(p.clone()) {
            todo.extend(deps.get(&p).into_iter().flatten().cloned());
        }
    }
    seen
}

#[test]
fn the_server_crate_depends_on_no_libtorch_plotting_xml_or_mat_code() {
    let lock = std::fs::read_to_string(Path::new(ROOT).join("Cargo.lock")).expect("Cargo.lock");
    let reach = lock_closure(&lock, "simsiam-server");
    assert!(
        reach.contains("actix-web") && reach.contains("ort"),
        "{reach:?}"
    );
    for banned in [
        "tch",
        "torch-sys",
        "simsiam-trainer",
        "plotters",
        "quick-xml",
    ] {
        assert!(!reach.contains(banned), "simsiam-server reaches {banned}");
    }
    // The trainer, by contrast, reaches all of them: the walk does see through the lock.
    let trainer = lock_closure(&lock, "simsiam-trainer");
    for needed in ["tch", "torch-sys", "plotters", "quick-xml"] {
        assert!(trainer.contains(needed), "{needed}");
    }
}
