//! Crash-safe writer for dataset files: everything goes to `<name>.partial`, the
//! header is written last, and the file is renamed into place only when complete.

use crate::error::{DataError, Result};
use crate::format::{Encoding, Header, IndexEntry, HEADER_LEN};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// An encoded image ready to be appended.
#[derive(Clone, Debug)]
pub struct EncodedRecord {
    /// Payload bytes (raw HWC pixels or a JPEG).
    pub bytes: Vec<u8>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// How `bytes` is encoded.
    pub encoding: Encoding,
}

/// Writes records into a temporary file and renames it into place on [`finish`](Self::finish).
/// Dropping an unfinished writer deletes the temporary file.
pub struct DatasetWriter {
    final_path: PathBuf,
    partial_path: PathBuf,
    file: Option<BufWriter<File>>,
    channels: u32,
    class_names: Vec<String>,
    index: Vec<u8>,
    num_records: u64,
    next_offset: u64,
    finished: bool,
}

impl DatasetWriter {
    /// Starts writing `path` (created as `path` + `.partial` until finished).
    pub fn create(path: &Path, channels: u32, class_names: Vec<String>) -> Result<Self> {
        if channels != 1 && channels != 3 {
            return Err(DataError::InvalidOption(format!(
                "datasets hold 1 or 3 channels, not {channels}"
            )));
        }
        let mut partial_name = path.as_os_str().to_owned();
        partial_name.push(".partial");
        let partial_path = PathBuf::from(partial_name);
        let file = File::create(&partial_path)
            .map_err(|e| DataError::io("cannot create", &partial_path, e))?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        // Placeholder header (all zeros, no magic): a crash leaves a file that is refused.
        file.write_all(&[0u8; HEADER_LEN])
            .map_err(|e| DataError::io("cannot write", &partial_path, e))?;
        Ok(DatasetWriter {
            final_path: path.to_path_buf(),
            partial_path,
            file: Some(file),
            channels,
            class_names,
            index: Vec::new(),
            num_records: 0,
            next_offset: HEADER_LEN as u64,
            finished: false,
        })
    }

    /// Appends one record with its class label.
    pub fn append(&mut self, record: &EncodedRecord, label: u32) -> Result<()> {
        if label as usize >= self.class_names.len() {
            return Err(DataError::InvalidOption(format!(
                "label {label} is out of range for {} classes",
                self.class_names.len()
            )));
        }
        if record.encoding == Encoding::Raw {
            let expected = record.width as usize * record.height as usize * self.channels as usize;
            if record.bytes.len() != expected {
                return Err(DataError::InvalidOption(format!(
                    "raw record of {}x{}x{} needs {expected} bytes, got {}",
                    record.width,
                    record.height,
                    self.channels,
                    record.bytes.len()
                )));
            }
        }
        let len = u32::try_from(record.bytes.len()).map_err(|_| {
            DataError::InvalidOption(format!(
                "a record of {} bytes exceeds the 4 GiB limit; use a smaller --max-side",
                record.bytes.len()
            ))
        })?;
        let file = self.file.as_mut().expect("file is open until finish");
        file.write_all(&record.bytes)
            .map_err(|e| DataError::io("cannot write", &self.partial_path, e))?;
        let entry = IndexEntry {
            offset: self.next_offset,
            len,
            label,
            width: record.width,
            height: record.height,
            encoding: record.encoding,
            checksum: Some(crc32fast::hash(&record.bytes)),
        };
        self.index.extend_from_slice(&entry.to_bytes());
        self.next_offset += u64::from(len);
        self.num_records += 1;
        Ok(())
    }

    /// Number of records appended so far.
    pub fn len(&self) -> u64 {
        self.num_records
    }

    /// Whether no record was appended yet.
    pub fn is_empty(&self) -> bool {
        self.num_records == 0
    }

    /// Writes index, class list and header, syncs, and renames the file into place.
    /// Returns the final path and its size in bytes.
    pub fn finish(mut self) -> Result<(PathBuf, u64)> {
        let classes = serde_json::to_vec(&self.class_names).expect("strings serialise");
        let index_offset = self.next_offset;
        let classes_offset = index_offset + self.index.len() as u64;
        let file_len = classes_offset + classes.len() as u64;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&self.index);
        hasher.update(&classes);
        let header = Header {
            channels: self.channels,
            num_records: self.num_records,
            num_classes: self.class_names.len() as u32,
            index_offset,
            classes_offset,
            classes_len: classes.len() as u64,
            file_len,
            index_checksum: hasher.finalize(),
        };
        let partial = self.partial_path.clone();
        let write_err = |e| DataError::io("cannot write", &partial, e);
        let mut file = self.file.take().expect("file is open until finish");
        file.write_all(&self.index).map_err(write_err)?;
        file.write_all(&classes).map_err(write_err)?;
        let mut file = file.into_inner().map_err(|e| write_err(e.into_error()))?;
        // Make the body durable before the header marks the file complete.
        file.sync_all().map_err(write_err)?;
        file.seek(SeekFrom::Start(0)).map_err(write_err)?;
        file.write_all(&header.to_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        drop(file);
        std::fs::rename(&self.partial_path, &self.final_path)
            .map_err(|e| DataError::io("cannot rename into place", &self.final_path, e))?;
        self.finished = true;
        if let Some(dir) = self
            .final_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            // Persist the rename; failure to open a directory for sync is harmless.
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok((self.final_path.clone(), file_len))
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.file = None;
            let _ = std::fs::remove_file(&self.partial_path);
        }
    }
}
