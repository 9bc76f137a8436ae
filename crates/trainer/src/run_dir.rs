//! A run's output directory while `fit` writes it: an exclusive lock, the
//! checkpoint to resume from, and its `config.toml`, which a resume may
//! change only in keys that keep the run's meaning.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::checkpoint;

/// The exclusive lock on a run directory, held while a run writes it. The
/// operating system releases it when the process ends, however it ends,
/// so a killed run leaves no stale lock.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes `run_dir`'s lock (the file `lock` in it, holding the pid), or
    /// says which process holds it.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        let path = run_dir.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if file.try_lock().is_err() {
            let mut holder = String::new();
            file.read_to_string(&mut holder).ok();
            bail!(
                "{} is in use by another topotrain run (pid {}); wait for it to finish, or choose another output.dir",
                run_dir.display(),
                holder.trim()
            );
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(RunLock { _file: file })
    }
}

/// One config value a resumed run changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigChange {
    pub key: String,
    pub from: Option<toml::Value>,
    pub to: Option<toml::Value>,
}

impl std::fmt::Display for ConfigChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show =
            |v: &Option<toml::Value>| v.as_ref().map_or("unset".to_string(), |v| v.to_string());
        write!(
            f,
            "{} ({} -> {})",
            self.key,
            show(&self.from),
            show(&self.to)
        )
    }
}

/// A locked run directory, ready for a run.
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    /// The checkpoint to resume from.
    pub resume_from: Option<PathBuf>,
    /// What the resumed run's config changed (recorded in `metrics.jsonl`).
    pub config_changes: Vec<ConfigChange>,
    _lock: RunLock,
}

/// How a run directory is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenRunDir<'a> {
    pub resume: bool,
    /// Accept changes to keys outside `resumable_keys` on resume.
    pub allow_config_change: bool,
    /// Keys (or their section prefixes, ending in '.') a resume may change
    /// freely: they do not change what is trained.
    pub resumable_keys: &'a [&'a str],
}

/// Creates and locks `run_dir`, refuses one with checkpoints unless
/// resuming, checks a resumed run's config against the run's own, and
/// only then writes `config_toml` (keeping the earlier one if it changed).
pub fn open_run_dir(run_dir: &Path, how: OpenRunDir, config_toml: &str) -> Result<RunDir> {
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
    let lock = RunLock::acquire(run_dir)?;
    let resume_from = checkpoint::latest(run_dir)?;
    let config_path = run_dir.join("config.toml");
    let mut config_changes = vec![];
    match &resume_from {
        Some(_) if !how.resume => bail!(
            "{} already has checkpoints; pass --resume to continue it, or choose another output.dir",
            run_dir.display()
        ),
        Some(checkpoint) => {
            if let Ok(earlier) = std::fs::read_to_string(&config_path) {
                config_changes = changed_keys(&earlier, config_toml)
                    .with_context(|| format!("cannot compare with {}", config_path.display()))?;
                let refused: Vec<String> = config_changes
                    .iter()
                    .filter(|c| !is_resumable(&c.key, how.resumable_keys))
                    .map(ToString::to_string)
                    .collect();
                if !refused.is_empty() && !how.allow_config_change {
                    bail!(
                        "--resume with a changed config: {} would change what the run trains; resume with the run's own {}, or pass --allow-config-change to accept the change (recorded in metrics.jsonl)",
                        refused.join(", "),
                        config_path.display()
                    );
                }
                if !config_changes.is_empty() {
                    let name = checkpoint.file_name().unwrap_or_default().to_string_lossy();
                    let kept = run_dir.join(format!("config.before-{name}.toml"));
                    std::fs::write(&kept, earlier)
                        .with_context(|| format!("cannot write {}", kept.display()))?;
                    for change in &config_changes {
                        eprintln!("resume changes {change}");
                    }
                }
            }
        }
        None => {}
    }
    checkpoint::write_atomic(&config_path, config_toml.as_bytes())?;
    Ok(RunDir {
        path: run_dir.to_path_buf(),
        resume_from,
        config_changes,
        _lock: lock,
    })
}

fn is_resumable(key: &str, resumable: &[&str]) -> bool {
    resumable
        .iter()
        .any(|k| key == *k || (k.ends_with('.') && key.starts_with(k)))
}

/// The dotted keys whose values differ between two TOML texts.
fn changed_keys(earlier: &str, now: &str) -> Result<Vec<ConfigChange>> {
    let (earlier, now) = (flatten(&earlier.parse()?), flatten(&now.parse()?));
    let keys: std::collections::BTreeSet<&String> = earlier.keys().chain(now.keys()).collect();
    Ok(keys
        .into_iter()
        .filter(|key| earlier.get(*key) != now.get(*key))
        .map(|key| ConfigChange {
            key: key.clone(),
            from: earlier.get(key).cloned(),
            to: now.get(key).cloned(),
        })
        .collect())
}

/// A table's values by dotted key; arrays of tables count as one value.
fn flatten(table: &toml::Table) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
        for (key, value) in table {
            let key = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => walk(&key, inner, out),
                other => {
                    out.insert(key, other.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", table, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: OpenRunDir = OpenRunDir {
        resume: false,
        allow_config_change: false,
        resumable_keys: &["training.epochs", "output."],
    };

    #[test]
    fn a_locked_run_directory_is_refused_and_its_config_kept() {
        let dir = tempfile::tempdir().unwrap();
        let run = open_run_dir(dir.path(), FRESH, "first = 1").unwrap();
        let error = open_run_dir(dir.path(), FRESH, "second = 2")
            .unwrap_err()
            .to_string();
        assert!(error.contains(&dir.path().display().to_string()), "{error}");
        assert!(
            error.contains(&format!("pid {}", std::process::id())),
            "{error}"
        );
        let config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
        assert_eq!(config, "first = 1");
        drop(run);
        open_run_dir(dir.path(), FRESH, "second = 2").unwrap();
    }

    /// A run directory with a checkpoint and `config`.
    fn resumable(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        drop(open_run_dir(dir.path(), FRESH, config).unwrap());
        let state = checkpoint::TrainState {
            format: checkpoint::STATE_FORMAT,
            epoch: 0,
            batch: 3,
            step: 3,
            seed: 0,
            running: Default::default(),
            history: vec![],
            architecture: models::Architecture::from_name("resnet18", 10).unwrap(),
            train_seconds: 0.0,
            initial_val_loss: None,
            threads: None,
        };
        checkpoint::commit(dir.path(), &state, 2, |_| Ok(())).unwrap();
        dir
    }

    const RUN: &str =
        "[lr]\npeak = 1.7\n[training]\nepochs = 16\nseed = 0\n[output]\ndir = \"a\"\n";

    #[test]
    fn a_resume_may_change_only_what_keeps_the_runs_meaning() {
        let dir = resumable(RUN);
        let resume = OpenRunDir {
            resume: true,
            ..FRESH
        };
        let changed = RUN
            .replace("peak = 1.7", "peak = 0.5")
            .replace("seed = 0", "seed = 1");
        let error = open_run_dir(dir.path(), resume, &changed)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("lr.peak (1.7 -> 0.5), training.seed (0 -> 1)"),
            "{error}"
        );
        assert!(error.contains("--allow-config-change"), "{error}");
        let config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
        assert_eq!(config, RUN, "a refused resume rewrote config.toml");

        let longer = RUN.replace("epochs = 16", "epochs = 88");
        let run = open_run_dir(dir.path(), resume, &longer).unwrap();
        assert_eq!(run.config_changes.len(), 1);
        assert_eq!(
            run.config_changes[0].to_string(),
            "training.epochs (16 -> 88)"
        );
        let kept = dir.path().join("config.before-step-0000000003.toml");
        assert_eq!(std::fs::read_to_string(kept).unwrap(), RUN);
        drop(run);

        let allowed = OpenRunDir {
            allow_config_change: true,
            ..resume
        };
        let run = open_run_dir(dir.path(), allowed, &changed).unwrap();
        let keys: Vec<&str> = run.config_changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["lr.peak", "training.epochs", "training.seed"]);
    }
}
