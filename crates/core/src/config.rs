//! TOML configs with `--set key=value` overrides, resolved in one pure step.
//!
//! A command's config starts from its built-in defaults (or a `--config FILE`),
//! then each `--set a.b=value` replaces one key; the value is read as TOML
//! (`3`, `0.5`, `true`, `"text"`, `[1, 2]`) and otherwise taken as a bare string.
//! The result deserialises into a struct with `deny_unknown_fields`, so a typo
//! names the unknown key instead of being ignored.

use crate::error::{Error, IoContext, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Parses `text` (from `origin`), applies `sets` in order and deserialises into `T`.
pub fn resolve<T: DeserializeOwned>(text: &str, origin: &str, sets: &[String]) -> Result<T> {
    let cfg_err = |origin: &str, message: String| Error::Config { origin: origin.to_string(), message };
    let mut root: toml::Table = toml::from_str(text).map_err(|e| cfg_err(origin, e.to_string()))?;
    for set in sets {
        apply_set(&mut root, set).map_err(|m| cfg_err(&format!("--set {set}"), m))?;
    }
    let value = toml::Value::Table(root);
    let origin =
        if sets.is_empty() { origin.to_string() } else { format!("{origin} after --set {}", sets.join(" --set ")) };
    T::deserialize(value).map_err(|e| cfg_err(&origin, e.to_string()))
}

/// Reads `path` (or uses `builtin` when `None`) and resolves it with `sets`.
pub fn load<T: DeserializeOwned>(path: Option<&Path>, builtin: &str, sets: &[String]) -> Result<T> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).at("reading config", p)?;
            resolve(&text, &p.display().to_string(), sets)
        }
        None => resolve(builtin, "built-in defaults", sets),
    }
}

fn apply_set(root: &mut toml::Table, set: &str) -> std::result::Result<(), String> {
    let (key, raw) = set.split_once('=').ok_or("expected key=value, e.g. --set world.seed=7")?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(format!("bad key '{key}': use dotted names such as data.val_fraction"));
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed table has v"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("split yields at least one part");
    let mut table = root;
    for part in parts {
        let entry = table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        table = entry.as_table_mut().ok_or_else(|| format!("'{part}' in '{key}' is not a table"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        seed: u64,
        name: String,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        world: Inner,
        ratio: f64,
    }

    const BASE: &str = "ratio = 0.5\n[world]\nseed = 1\nname = \"a\"\n";

    #[test]
    fn sets_override_typed_values() {
        let sets = vec!["world.seed=9".to_string(), "world.name=bare words".into(), "ratio=0.25".into()];
        let c: Outer = resolve(BASE, "test", &sets).unwrap();
        assert_eq!((c.world.seed, c.world.name.as_str(), c.ratio), (9, "bare words", 0.25));
    }

    #[test]
    fn unknown_keys_and_bad_types_are_named() {
        let err = resolve::<Outer>(BASE, "test", &["world.sed=3".into()]).unwrap_err().to_string();
        assert!(err.contains("sed"), "{err}");
        let err = resolve::<Outer>(BASE, "test", &["world.seed=many".into()]).unwrap_err().to_string();
        assert!(err.contains("seed") || err.contains("invalid type"), "{err}");
        let err = resolve::<Outer>(BASE, "test", &["noequals".into()]).unwrap_err().to_string();
        assert!(err.contains("key=value"), "{err}");
    }
}
