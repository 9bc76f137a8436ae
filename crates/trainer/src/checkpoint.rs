//! Run checkpoints: `<run>/checkpoints/step-NNNNNNNN/` holds the model
//! record (`model.mpk`, full precision, BatchNorm statistics included), the
//! optimiser record (`optim.mpk`, momentum buffers) and `state.json`
//! (epoch, step, data position, RNG seed, metrics so far). A checkpoint is
//! written into a temporary directory and renamed into place, then
//! `checkpoints/latest` (itself written to a temporary file and renamed)
//! points at it, so a run killed at any moment leaves the previous
//! checkpoint intact.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use burn::record::RecorderError;
use models::Architecture;
use serde::{Deserialize, Serialize};

/// Where training stands; everything but the tensors. `A` describes the
/// network: an [`Architecture`] for vision runs, the GPT's shape for
/// language runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState<A = Architecture> {
    pub format: u32,
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Next batch of that epoch (the data position).
    pub batch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// The data RNG: batches are a pure function of (seed, epoch, batch),
    /// so the seed and the position above are its whole state.
    pub seed: u64,
    /// Running sums of the epoch in progress.
    pub running: Running,
    /// One entry per finished epoch.
    pub history: Vec<EpochRecord>,
    /// The network, so a checkpoint can be evaluated without its config.
    pub architecture: A,
    /// Training seconds so far (excludes evaluation).
    pub train_seconds: f64,
    /// The validation loss before the first step, for recipes that measure it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_val_loss: Option<f64>,
    /// CPU threads of the run that wrote the checkpoint (results are
    /// bit-identical across a resume only at the same count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

pub const STATE_FORMAT: u32 = 1;

/// Sums over the steps of the epoch in progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Running {
    pub steps: u64,
    pub images: u64,
    pub correct: u64,
    pub task_loss: f64,
    /// Sum of the steps' tau-weighted TopoLoss (named `topo_loss` before).
    #[serde(alias = "topo_loss")]
    pub weighted_topo_loss: f64,
    /// Training seconds of the epoch so far (for its images per second).
    #[serde(default)]
    pub seconds: f64,
}

/// Metrics of one finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub step: u64,
    /// The training resolution (recipes with images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<usize>,
    pub lr: f64,
    pub tau: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    /// The epoch's mean of the tau-weighted TopoLoss added to the task loss
    /// (named `topo_loss` before).
    #[serde(alias = "topo_loss")]
    pub weighted_topo_loss: f64,
    /// The mean over layers of `topo_layers`: the TopoLoss at tau = 1.
    #[serde(default)]
    pub mean_topo_loss: Option<f64>,
    /// Unscaled (tau = 1) TopoLoss per layer at the end of the epoch.
    pub topo_layers: BTreeMap<String, f64>,
    pub val_top1: Option<f64>,
    pub val_top5: Option<f64>,
    pub val_loss: Option<f64>,
    /// Validation samples (images, or token windows) behind the val_ figures.
    #[serde(default)]
    pub val_samples: Option<u64>,
    /// exp(val_loss), for language models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_perplexity: Option<f64>,
    /// Throughput: images, or tokens for language models, per second.
    pub images_per_sec: f64,
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// The latest complete checkpoint of a run, if any: the one `latest`
/// names, or without that file the newest complete one (with a message).
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let dir = checkpoints_dir(run_dir);
    let pointer = dir.join("latest");
    if !pointer.exists() {
        let newest = complete_checkpoints(&dir)?.pop();
        if let Some(path) = &newest {
            eprintln!(
                "{} is missing; using the newest complete checkpoint, {}",
                pointer.display(),
                path.display()
            );
        }
        return Ok(newest);
    }
    let name = fs::read_to_string(&pointer)
        .with_context(|| format!("cannot read {}", pointer.display()))?;
    let path = dir.join(name.trim());
    if !path.join("state.json").exists() {
        bail!(
            "{} points at {}, which is not a complete checkpoint",
            pointer.display(),
            path.display()
        );
    }
    Ok(Some(path))
}

/// The complete checkpoints (`step-*` with a `state.json`) in `dir`, oldest first.
fn complete_checkpoints(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .map(|e| e.path())
        .filter(|p| p.join("state.json").exists())
        .collect();
    paths.sort();
    Ok(paths)
}

pub fn read_state<A: serde::de::DeserializeOwned>(checkpoint: &Path) -> Result<TrainState<A>> {
    let path = checkpoint.join("state.json");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let state: TrainState<A> =
        serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    if state.format != STATE_FORMAT {
        bail!(
            "{}: state format {} (expected {STATE_FORMAT})",
            path.display(),
            state.format
        );
    }
    Ok(state)
}

/// The error for a record file of a checkpoint that Burn could not read,
/// without Burn's advice about its 0.14 format change (which is about
/// other files than ours).
pub fn unreadable_record(file: &Path, error: RecorderError) -> anyhow::Error {
    match error {
        RecorderError::FileNotFound(_) => anyhow!(
            "cannot load {}: no such file; a checkpoint folder holds model.mpk, optim.mpk and state.json",
            file.display()
        ),
        RecorderError::DeserializeError(reason) | RecorderError::Unknown(reason) => {
            let reason = reason.lines().next().unwrap_or_default();
            anyhow!(
                "cannot load {}: it is truncated, damaged or not written by topotrain ({reason}); use another checkpoint of the run (checkpoints/step-*) or train again",
                file.display()
            )
        }
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::File::open(&tmp).and_then(|f| f.sync_all()).ok();
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Creates a checkpoint: `write` fills the temporary directory with the
/// tensor records, then the state is added, the directory renamed into
/// place and `latest` moved to it. Older checkpoints beyond `keep` go.
pub fn commit<A: Serialize>(
    run_dir: &Path,
    state: &TrainState<A>,
    keep: usize,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = checkpoints_dir(run_dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = format!("step-{:010}", state.step);
    let final_path = dir.join(&name);
    let tmp = dir.join(format!(".tmp-{name}"));
    let in_path = |what: &str, path: &Path| format!("cannot {what} {}", path.display());
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| in_path("remove", &tmp))?;
    }
    fs::create_dir_all(&tmp).with_context(|| in_path("create", &tmp))?;
    write(&tmp)?;
    let mut record = serde_json::to_value(state)?;
    record["checksums"] = serde_json::to_value(checksums(&tmp)?)?;
    let state_path = tmp.join("state.json");
    fs::write(&state_path, serde_json::to_vec_pretty(&record)?)
        .with_context(|| in_path("write", &state_path))?;
    for entry in fs::read_dir(&tmp)? {
        fs::File::open(entry?.path())
            .and_then(|f| f.sync_all())
            .ok();
    }
    if final_path.exists() {
        fs::remove_dir_all(&final_path).with_context(|| in_path("remove", &final_path))?;
    }
    fs::rename(&tmp, &final_path).with_context(|| in_path("rename into place", &final_path))?;
    write_atomic(&dir.join("latest"), name.as_bytes())?;
    prune(&dir, &name, keep)?;
    Ok(final_path)
}

/// The CRC-32 of every file in `dir`, by name.
fn checksums(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut sums = BTreeMap::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        sums.insert(name, format!("{:08x}", crc32fast::hash(&bytes)));
    }
    Ok(sums)
}

/// Checks a checkpoint's files against the checksums its `state.json`
/// recorded when they were written (checkpoints written before checksums
/// pass unchecked).
pub fn verify(checkpoint: &Path) -> Result<()> {
    let state = checkpoint.join("state.json");
    let text =
        fs::read_to_string(&state).with_context(|| format!("cannot read {}", state.display()))?;
    let record: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("cannot parse {}", state.display()))?;
    let recorded: BTreeMap<String, String> = match record.get("checksums") {
        Some(sums) => serde_json::from_value(sums.clone())
            .with_context(|| format!("{}: checksums unreadable", state.display()))?,
        None => return Ok(()),
    };
    let found = checksums(checkpoint)?;
    for (name, sum) in &recorded {
        if found.get(name) != Some(sum) {
            let earlier = complete_checkpoints(checkpoint.parent().unwrap_or(checkpoint))?
                .into_iter()
                .rfind(|p| p.as_path() < checkpoint);
            let advice = match earlier {
                Some(p) => format!(
                    "the previous checkpoint is {}; to resume from it, write its name into {}",
                    p.display(),
                    checkpoint.with_file_name("latest").display()
                ),
                None => "there is no earlier checkpoint; train again".to_string(),
            };
            bail!(
                "{} is damaged or missing: its checksum differs from the one recorded when it was written; {advice}",
                checkpoint.join(name).display()
            );
        }
    }
    Ok(())
}

/// Keeps the `keep` newest checkpoints up to `newest` (the one just
/// written). Later-numbered ones, left by a run resumed from an earlier
/// checkpoint, are not counted and not removed.
fn prune(dir: &Path, newest: &str, keep: usize) -> Result<()> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-") || n.starts_with(".tmp-step-"))
        .collect();
    names.sort();
    let complete: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("step-") && n.as_str() <= newest)
        .collect();
    let drop = complete.len().saturating_sub(keep.max(1));
    for name in complete.into_iter().take(drop) {
        fs::remove_dir_all(dir.join(name)).ok();
    }
    for name in names.iter().filter(|n| n.starts_with(".tmp-")) {
        fs::remove_dir_all(dir.join(name)).ok();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> TrainState {
        TrainState {
            format: STATE_FORMAT,
            epoch: 0,
            batch: step as usize,
            step,
            seed: 1,
            running: Running::default(),
            history: vec![],
            architecture: Architecture::from_name("resnet18", 10).unwrap(),
            train_seconds: 0.0,
            initial_val_loss: None,
            threads: None,
        }
    }

    #[test]
    fn commits_are_atomic_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        assert!(latest(dir.path()).unwrap().is_none());
        for step in 1..=4 {
            commit(dir.path(), &state(step), 2, |tmp| {
                fs::write(tmp.join("model.mpk"), b"x")?;
                Ok(())
            })
            .unwrap();
        }
        let last = latest(dir.path()).unwrap().unwrap();
        assert!(last.ends_with("step-0000000004"));
        assert_eq!(read_state::<Architecture>(&last).unwrap().step, 4);
        let left = fs::read_dir(checkpoints_dir(dir.path())).unwrap().count();
        assert_eq!(left, 3); // two checkpoints + latest
                             // A failed write leaves the previous checkpoint in place.
        let failed = commit(dir.path(), &state(5), 2, |_| bail!("disk full"));
        assert!(failed.is_err());
        assert!(latest(dir.path())
            .unwrap()
            .unwrap()
            .ends_with("step-0000000004"));
    }

    #[test]
    fn a_damaged_file_is_named_with_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut written = vec![];
        for step in [2, 4] {
            written.push(
                commit(dir.path(), &state(step), 5, |tmp| {
                    fs::write(tmp.join("optim.mpk"), vec![7u8; 1000])?;
                    Ok(())
                })
                .unwrap(),
            );
        }
        verify(&written[1]).unwrap();
        let file = written[1].join("optim.mpk");
        let mut bytes = fs::read(&file).unwrap();
        bytes[500] ^= 0x40;
        fs::write(&file, bytes).unwrap();
        let error = verify(&written[1]).unwrap_err().to_string();
        assert!(error.contains("optim.mpk is damaged"), "{error}");
        assert!(error.contains("step-0000000002"), "{error}");
        // The state itself still reads (checksums are an extra field).
        assert_eq!(read_state::<Architecture>(&written[1]).unwrap().step, 4);
    }

    #[test]
    fn without_latest_the_newest_complete_checkpoint_is_used() {
        let dir = tempfile::tempdir().unwrap();
        for step in [3, 5] {
            commit(dir.path(), &state(step), 5, |_| Ok(())).unwrap();
        }
        // An incomplete later one does not count.
        fs::create_dir_all(checkpoints_dir(dir.path()).join("step-0000000009")).unwrap();
        fs::remove_file(checkpoints_dir(dir.path()).join("latest")).unwrap();
        let found = latest(dir.path()).unwrap().unwrap();
        assert!(found.ends_with("step-0000000005"), "{}", found.display());
    }

    #[test]
    fn later_stale_checkpoints_do_not_push_out_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        for step in [10, 11] {
            commit(dir.path(), &state(step), 2, |_| Ok(())).unwrap();
        }
        // A run resumed from an earlier point writes steps 3 and 4.
        for step in [3, 4] {
            let written = commit(dir.path(), &state(step), 2, |_| Ok(())).unwrap();
            assert!(written.exists(), "{} was pruned at once", written.display());
        }
        assert!(latest(dir.path())
            .unwrap()
            .unwrap()
            .ends_with("step-0000000004"));
    }
}
