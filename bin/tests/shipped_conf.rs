//! The shipped conf documents every key with its real default, and loads.

use gaidaros::cli::{documented_keys, settings, Args};

fn shipped() -> (std::path::PathBuf, String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/gaidaros.conf");
    let text = std::fs::read_to_string(&path).expect("etc/gaidaros.conf");
    (path, text)
}

#[test]
fn shipped_conf_documents_every_key_and_its_default() {
    let (_, text) = shipped();
    let lines: Vec<&str> = text.lines().collect();
    for (section, key, default, _) in documented_keys() {
        let at = lines
            .iter()
            .position(|l| !l.starts_with(';') && l.split('=').next().map(str::trim) == Some(key))
            .unwrap_or_else(|| panic!("[{section}] {key} is not in the shipped conf"));
        // The comment block right above the key states the default.
        let comment: Vec<&str> = lines[..at]
            .iter()
            .rev()
            .take_while(|l| l.starts_with(';'))
            .copied()
            .collect();
        let wanted = format!("default: {default}");
        assert!(
            comment.iter().any(|l| l.contains(&wanted)),
            "[{section}] {key}: comment above it should say {wanted:?}, has {comment:?}"
        );
    }
}

#[test]
fn shipped_conf_loads_with_the_built_in_handlers() {
    let (path, _) = shipped();
    let args = Args {
        conf: Some(path),
        ..Args::default()
    };
    let s = settings(&args, Vec::new(), &gaidaros_bin::registry()).expect("shipped conf is valid");
    let names: Vec<&str> = s.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["echo", "forward"]);
    assert_eq!(s.listeners[0].port, 8080);
    assert_eq!(
        s.listeners[1].options.get("upstream"),
        Some("127.0.0.1:8080")
    );
}
