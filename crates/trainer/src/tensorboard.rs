//! TensorBoard event files (`<run>/tensorboard/events.out.tfevents.*`):
//! every number of every `metrics.jsonl` line, as the scalar
//! `<kind>/<field>` at the line's step, so `tensorboard --logdir runs`
//! shows the curves of every run.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use protobuf::Message;
use tensorboard_proto::event::{Event, SessionLog, SessionLog_SessionStatus};
use tensorboard_proto::summary::{Summary, Summary_Value};

/// TensorFlow's record checksum: CRC-32C, rotated and offset.
fn masked_crc(bytes: &[u8]) -> u32 {
    const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let crc = CRC32C.checksum(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its checksum, the data, its checksum.
fn record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An event file being written. Each process writes its own file; a
/// resumed run starts with a `SessionLog START` at its step, which makes
/// TensorBoard drop the points the stopped run wrote after it.
pub struct EventFile {
    file: BufWriter<File>,
    path: PathBuf,
}

impl EventFile {
    /// A new event file in `dir`, for a run starting (or resuming) at `step`.
    pub fn create(dir: &Path, step: u64) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let time = now();
        let path = dir.join(format!(
            "events.out.tfevents.{:010}.topotrain.{}",
            time as u64,
            std::process::id()
        ));
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut events = EventFile {
            file: BufWriter::new(file),
            path,
        };
        let mut version = Event::new();
        version.set_wall_time(time);
        version.set_file_version("brain.Event:2".to_string());
        events.write(&version)?;
        if step > 0 {
            let mut start = SessionLog::new();
            start.set_status(SessionLog_SessionStatus::START);
            let mut resumed = Event::new();
            resumed.set_wall_time(time);
            resumed.set_step(step as i64);
            resumed.set_session_log(start);
            events.write(&resumed)?;
        }
        Ok(events)
    }

    /// Writes `values` as scalars at `step`.
    pub fn scalars(&mut self, step: u64, values: &[(String, f32)]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut summary = Summary::new();
        for (tag, value) in values {
            let mut scalar = Summary_Value::new();
            scalar.set_tag(tag.clone());
            scalar.set_simple_value(*value);
            summary.mut_value().push(scalar);
        }
        let mut event = Event::new();
        event.set_wall_time(now());
        event.set_step(step as i64);
        event.set_summary(summary);
        self.write(&event)
    }

    /// Writes the numbers of one metrics line (nested objects as
    /// `kind/field/key`; `kind`, `step` and `epoch` are not plotted).
    pub fn metrics_line(&mut self, line: &serde_json::Value) -> Result<()> {
        let Some(step) = line.get("step").and_then(|s| s.as_u64()) else {
            return Ok(());
        };
        let kind = line
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("metrics");
        let mut values = Vec::new();
        if let Some(fields) = line.as_object() {
            for (key, value) in fields {
                if !matches!(key.as_str(), "kind" | "step" | "epoch") {
                    numbers(&format!("{kind}/{key}"), value, &mut values);
                }
            }
        }
        self.scalars(step, &values)
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        let bytes = event
            .write_to_bytes()
            .context("cannot encode a TensorBoard event")?;
        self.file
            .write_all(&record(&bytes))
            .and_then(|()| self.file.flush())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Every number in `value`, tagged by its path under `tag`.
fn numbers(tag: &str, value: &serde_json::Value, out: &mut Vec<(String, f32)>) {
    match value {
        serde_json::Value::Number(n) => {
            if let Some(v) = n.as_f64() {
                out.push((tag.to_string(), v as f32));
            }
        }
        serde_json::Value::Object(fields) => {
            for (key, value) in fields {
                numbers(&format!("{tag}/{key}"), value, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events of a file, each record's framing and checksums checked.
    fn read_events(path: &Path) -> Vec<Event> {
        let bytes = fs::read(path).unwrap();
        let mut rest = bytes.as_slice();
        let mut events = Vec::new();
        while !rest.is_empty() {
            let (length, tail) = rest.split_at(8);
            let n = u64::from_le_bytes(length.try_into().unwrap()) as usize;
            assert_eq!(&tail[..4], masked_crc(length).to_le_bytes());
            let data = &tail[4..4 + n];
            assert_eq!(&tail[4 + n..8 + n], masked_crc(data).to_le_bytes());
            events.push(Event::parse_from_bytes(data).unwrap());
            rest = &tail[8 + n..];
        }
        events
    }

    #[test]
    fn the_record_checksum_is_tensorflows() {
        // CRC-32C's check value 0xe3069283, masked as
        // tensorflow/core/lib/hash/crc32c.h does:
        // ((crc >> 15) | (crc << 17)) + 0xa282ead8.
        assert_eq!(masked_crc(b"123456789"), 0xc78ab0e5);
    }

    #[test]
    fn metrics_lines_become_scalars_at_their_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut events = EventFile::create(dir.path(), 0).unwrap();
        let line = serde_json::json!({
            "kind": "train", "step": 7, "epoch": 1, "lr": 0.5, "task_loss": 2.25,
            "mean_topo_loss": null, "topo_layers": {"layer1.0.conv1": 0.125},
        });
        events.metrics_line(&line).unwrap();
        let path = events.path.clone();
        drop(events);
        let read = read_events(&path);
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].get_file_version(), "brain.Event:2");
        assert_eq!(read[1].get_step(), 7);
        let mut scalars: Vec<(String, f32)> = read[1]
            .get_summary()
            .get_value()
            .iter()
            .map(|v| (v.get_tag().to_string(), v.get_simple_value()))
            .collect();
        scalars.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            scalars,
            vec![
                ("train/lr".to_string(), 0.5),
                ("train/task_loss".to_string(), 2.25),
                ("train/topo_layers/layer1.0.conv1".to_string(), 0.125),
            ]
        );
    }

    #[test]
    fn a_resumed_run_starts_a_session_at_its_step() {
        let dir = tempfile::tempdir().unwrap();
        let events = EventFile::create(dir.path(), 40).unwrap();
        let read = read_events(&events.path);
        assert_eq!(read.len(), 2);
        assert_eq!(read[1].get_step(), 40);
        assert_eq!(
            read[1].get_session_log().get_status(),
            SessionLog_SessionStatus::START
        );
    }
}
