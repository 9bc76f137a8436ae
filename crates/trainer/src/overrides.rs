//! `--set KEY=VALUE` over a TOML config, as nanoGPT's `--key=value`: a
//! dotted key (`training.batch_size`, `lr.peak`) and a value in TOML syntax
//! (`256`, `0.5`, `true`, `[1, 2]`; text that is not TOML is a string, so
//! `--set training.device=cuda:1` needs no quotes). The merged text is then
//! parsed and validated like the file itself.

use anyhow::{bail, Context, Result};

/// One `KEY=VALUE` setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub key: String,
    pub value: toml::Value,
}

impl std::str::FromStr for Override {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let Some((key, value)) = text.split_once('=') else {
            return Err(format!(
                "{text:?} is not KEY=VALUE (e.g. training.batch_size=256)"
            ));
        };
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(format!("{key:?} is not a dotted config key (e.g. lr.peak)"));
        }
        let value = value.trim();
        let value = format!("value = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut table| table.remove("value"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        Ok(Override {
            key: key.to_string(),
            value,
        })
    }
}

/// `text` (a TOML config) with `overrides` applied in order.
pub fn apply(text: &str, overrides: &[Override]) -> Result<String> {
    if overrides.is_empty() {
        return Ok(text.to_string());
    }
    let mut table: toml::Table = text.parse().context("the config is not valid TOML")?;
    for o in overrides {
        let mut segments: Vec<&str> = o.key.split('.').collect();
        let last = segments.pop().expect("a key has at least one segment");
        let mut at = &mut table;
        let mut path = String::new();
        for segment in segments {
            path = if path.is_empty() {
                segment.to_string()
            } else {
                format!("{path}.{segment}")
            };
            let entry = at
                .entry(segment)
                .or_insert_with(|| toml::Value::Table(Default::default()));
            let toml::Value::Table(inner) = entry else {
                bail!("--set {}: {path} is a value, not a section", o.key);
            };
            at = inner;
        }
        at.insert(last.to_string(), o.value.clone());
    }
    Ok(toml::to_string(&table)?)
}

/// The text of the config file at `path` with `overrides` applied.
pub fn read(path: &std::path::Path, overrides: &[Override]) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    apply(&text, overrides).with_context(|| format!("invalid config {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> Vec<Override> {
        items.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn values_are_typed_and_keys_dotted() {
        let text = "[training]\nbatch_size = 32\ndevice = \"cpu\"\n[lr]\npeak = 1.7\n";
        let merged = apply(
            text,
            &set(&[
                "training.batch_size=256",
                "lr.peak = 0.5",
                "training.device=cuda:1",
                "model.init_weights=a.pt",
                "data.mean=[1, 2]",
            ]),
        )
        .unwrap();
        let table: toml::Table = merged.parse().unwrap();
        assert_eq!(table["training"]["batch_size"].as_integer(), Some(256));
        assert_eq!(table["lr"]["peak"].as_float(), Some(0.5));
        assert_eq!(table["training"]["device"].as_str(), Some("cuda:1"));
        assert_eq!(table["model"]["init_weights"].as_str(), Some("a.pt"));
        assert_eq!(table["data"]["mean"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn malformed_settings_are_errors_naming_them() {
        assert!("batch_size"
            .parse::<Override>()
            .unwrap_err()
            .contains("KEY=VALUE"));
        assert!("training..x=1"
            .parse::<Override>()
            .unwrap_err()
            .contains("dotted"));
        let error = apply("[lr]\npeak = 1.0\n", &set(&["lr.peak.x=1"])).unwrap_err();
        assert!(error.to_string().contains("lr.peak is a value"), "{error}");
    }
}
