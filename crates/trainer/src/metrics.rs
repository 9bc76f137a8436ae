//! `metrics.jsonl`: one JSON object per line, `"kind": "train"` every
//! `log_every_steps` steps and `"kind": "epoch"` at each epoch's end; the
//! same numbers go to TensorBoard event files in `<run>/tensorboard/`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::checkpoint::{self, EpochRecord};
use crate::tensorboard::EventFile;

#[derive(Serialize)]
pub(crate) struct EpochLine {
    pub kind: &'static str,
    #[serde(flatten)]
    pub record: EpochRecord,
}

/// The log of one run. On resume, lines past the checkpoint's step
/// (written by the stopped run after it) are dropped, so the log reads as
/// if the run had never stopped; a new run (step 0) starts an empty log.
pub struct MetricsLog {
    file: fs::File,
    path: PathBuf,
    tensorboard: EventFile,
}

impl MetricsLog {
    pub fn open(path: &Path, resume_step: u64) -> Result<Self> {
        let kept = match fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|line| {
                    let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                    let step = value
                        .get("step")
                        .and_then(|s| s.as_u64())
                        .unwrap_or(u64::MAX);
                    step <= resume_step && !(step == resume_step && resume_step == 0)
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            Err(_) => String::new(),
        };
        checkpoint::write_atomic(path, kept.as_bytes())?;
        let file = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let run_dir = path.parent().unwrap_or(Path::new("."));
        Ok(MetricsLog {
            file,
            path: path.to_path_buf(),
            tensorboard: EventFile::create(&run_dir.join("tensorboard"), resume_step)?,
        })
    }

    pub fn write(&mut self, line: &impl Serialize) -> Result<()> {
        let mut text = serde_json::to_string(line)?;
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.tensorboard.metrics_line(&serde_json::to_value(line)?)
    }
}
