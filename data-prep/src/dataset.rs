//! Read-only, memory-mapped access to a dataset file.

use crate::codec::{decode_jpeg_record, Pixels};
use crate::error::{DataError, Result};
use crate::format::{corrupt, Encoding, Header, IndexEntry, HEADER_LEN, INDEX_ENTRY_LEN};
use memmap2::Mmap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A dataset file opened with `mmap`: records are borrowed from the mapping, never
/// copied, and memory use does not grow with the file beyond the page cache.
pub struct Dataset {
    path: PathBuf,
    map: Mmap,
    header: Header,
    class_names: Vec<String>,
    /// The file's modification time when opened (see [`Dataset::check_unchanged`]).
    opened_modified: Option<std::time::SystemTime>,
}

/// A borrowed view of one record.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Payload bytes inside the memory map.
    pub bytes: &'a [u8],
    /// Class index.
    pub label: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Payload encoding.
    pub encoding: Encoding,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("path", &self.path)
            .field("len", &self.len())
            .field("channels", &self.channels())
            .field("num_classes", &self.num_classes())
            .finish()
    }
}

impl Dataset {
    /// Opens and checks a dataset file: magic, version, header checksum, file
    /// length, index checksum, and that every record lies inside the data region
    /// with a valid label. A truncated, interrupted or foreign file is refused.
    pub fn open(path: impl AsRef<Path>) -> Result<Dataset> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| DataError::io("cannot open dataset", path, e))?;
        let metadata = file
            .metadata()
            .map_err(|e| DataError::io("cannot stat dataset", path, e))?;
        let file_len = metadata.len();
        if file_len == 0 {
            return Err(DataError::SizeMismatch {
                path: path.to_path_buf(),
                expected: HEADER_LEN as u64,
                found: 0,
            });
        }
        // SAFETY: the mapping is read-only; datasets are written once and renamed
        // into place, so they are not modified while mapped (a concurrent writer
        // would use a new inode).
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| DataError::io("cannot memory-map dataset", path, e))?;
        #[cfg(unix)]
        {
            // Records are read in random order during training.
            let _ = map.advise(memmap2::Advice::Random);
        }
        let header = Header::parse(&map[..map.len().min(HEADER_LEN)], file_len, path)?;
        let index_start = header.index_offset as usize;
        let classes_start = header.classes_offset as usize;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&map[index_start..]);
        if hasher.finalize() != header.index_checksum {
            return Err(corrupt(path, "index checksum mismatch"));
        }
        let class_names: Vec<String> =
            serde_json::from_slice(&map[classes_start..]).map_err(|e| {
                corrupt(
                    path,
                    &format!("class list is not a JSON array of names: {e}"),
                )
            })?;
        if class_names.len() != header.num_classes as usize {
            return Err(corrupt(path, "class count differs from the class list"));
        }
        let dataset = Dataset {
            path: path.to_path_buf(),
            map,
            header,
            class_names,
            opened_modified: metadata.modified().ok(),
        };
        dataset.check_index()?;
        Ok(dataset)
    }

    fn check_index(&self) -> Result<()> {
        let data_end = self.header.index_offset;
        for index in 0..self.len() {
            let problem = match self.entry(index) {
                None => Some("unknown record encoding".to_string()),
                Some(entry) => {
                    let end = entry.offset.checked_add(u64::from(entry.len));
                    let raw_len = u64::from(entry.width)
                        * u64::from(entry.height)
                        * u64::from(self.header.channels);
                    if entry.offset < HEADER_LEN as u64 || end.is_none_or(|end| end > data_end) {
                        Some("record lies outside the data region".to_string())
                    } else if entry.label >= self.header.num_classes {
                        Some(format!(
                            "label {} is not below {} classes",
                            entry.label, self.header.num_classes
                        ))
                    } else if entry.width == 0 || entry.height == 0 {
                        Some("record has an empty image".to_string())
                    } else if entry.encoding == Encoding::Raw && raw_len != u64::from(entry.len) {
                        Some("raw record length does not match its size".to_string())
                    } else {
                        None
                    }
                }
            };
            if let Some(problem) = problem {
                return Err(corrupt(&self.path, &format!("record {index}: {problem}")));
            }
        }
        Ok(())
    }

    fn entry(&self, index: usize) -> Option<IndexEntry> {
        let start = self.header.index_offset as usize + index * INDEX_ENTRY_LEN;
        IndexEntry::from_bytes(&self.map[start..start + INDEX_ENTRY_LEN])
    }

    /// The file this dataset was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.header.num_records as usize
    }

    /// Whether the dataset has no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channels per pixel of every image (1 = grey, 3 = RGB).
    pub fn channels(&self) -> usize {
        self.header.channels as usize
    }

    /// Number of classes (labels are `0..num_classes`).
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Class names in label order (ImageNet: sorted wnids).
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Borrowed view of record `index`.
    ///
    /// # Panics
    /// If `index >= len()`.
    pub fn record(&self, index: usize) -> Record<'_> {
        assert!(
            index < self.len(),
            "record {index} of a dataset with {} records",
            self.len()
        );
        let entry = self.entry(index).expect("index checked at open");
        let start = entry.offset as usize;
        Record {
            bytes: &self.map[start..start + entry.len as usize],
            label: entry.label,
            width: entry.width,
            height: entry.height,
            encoding: entry.encoding,
        }
    }

    /// Record `index` after checking its payload against the index's CRC-32
    /// (files from before record checksums have none to check).
    pub fn checked_record(&self, index: usize) -> Result<Record<'_>> {
        let record = self.record(index);
        let entry = self.entry(index).expect("index checked at open");
        if let Some(expected) = entry.checksum {
            let found = crc32fast::hash(record.bytes);
            if found != expected {
                return Err(DataError::BadRecord {
                    path: self.path.clone(),
                    index,
                    reason: format!(
                        "its bytes changed since it was written (CRC-32 {found:08x}, \
                         written {expected:08x}): the file is damaged; prepare it again"
                    ),
                });
            }
        }
        Ok(record)
    }

    /// Fails, naming the file, when it was truncated, replaced or rewritten
    /// since it was opened: reading a shrunk memory map would end the
    /// process with SIGBUS instead.
    pub fn check_unchanged(&self) -> Result<()> {
        let metadata = std::fs::metadata(&self.path)
            .map_err(|e| DataError::io("cannot stat dataset", &self.path, e))?;
        let same_size = metadata.len() == self.map.len() as u64;
        if !same_size || metadata.modified().ok() != self.opened_modified {
            return Err(corrupt(
                &self.path,
                &format!(
                    "the file changed while in use ({} bytes when opened, {} now); \
                     restart with a complete file",
                    self.map.len(),
                    metadata.len()
                ),
            ));
        }
        Ok(())
    }

    /// Label of record `index`.
    pub fn label(&self, index: usize) -> u32 {
        self.record(index).label
    }

    /// Decodes record `index` into interleaved pixels with [`channels`](Self::channels)
    /// channels. Raw records come back exactly as written.
    pub fn decode(&self, index: usize) -> Result<Pixels> {
        let mut data = Vec::new();
        let (width, height) = self.decode_into(index, &mut data)?;
        Ok(Pixels {
            width: width as u32,
            height: height as u32,
            channels: self.header.channels,
            data,
        })
    }

    /// Decodes record `index` into `buffer` (resized to fit), returning
    /// `(width, height)`. Reusing the buffer avoids an allocation per image.
    pub fn decode_into(&self, index: usize, buffer: &mut Vec<u8>) -> Result<(usize, usize)> {
        let record = self.checked_record(index)?;
        match record.encoding {
            Encoding::Raw => {
                buffer.clear();
                buffer.extend_from_slice(record.bytes);
                Ok((record.width as usize, record.height as usize))
            }
            Encoding::Jpeg => {
                let size = decode_jpeg_record(record.bytes, self.header.channels, buffer).map_err(
                    |reason| DataError::BadRecord {
                        path: self.path.clone(),
                        index,
                        reason,
                    },
                )?;
                if size != (record.width as usize, record.height as usize) {
                    return Err(DataError::BadRecord {
                        path: self.path.clone(),
                        index,
                        reason: format!(
                            "JPEG is {}x{} but the index says {}x{}",
                            size.0, size.1, record.width, record.height
                        ),
                    });
                }
                Ok(size)
            }
        }
    }
}
