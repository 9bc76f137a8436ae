//! On-disk layout of a dataset file (`*.topo`), version 1. All integers are little-endian.
//!
//! ```text
//! offset  size  field
//! 0       8     magic  b"TOPODSET"
//! 8       4     format version (1)
//! 12      4     channels per pixel (1 = grey, 3 = RGB)
//! 16      8     number of records
//! 24      4     number of classes
//! 28      4     reserved (0)
//! 32      8     index offset   (records end here)
//! 40      8     class list offset (JSON array of class names, right after the index)
//! 48      8     class list length in bytes
//! 56      8     total file length
//! 64      4     CRC-32 of index bytes followed by class list bytes
//! 68      56    reserved (0)
//! 124     4     CRC-32 of header bytes 0..124
//! 128     ...   record payloads (raw HWC pixels or JPEG), back to back
//! index   32*n  one entry per record, see [`IndexEntry`]
//! classes ...   class list
//! ```
//!
//! The header is written last, after everything else is on disk, into a temporary
//! file that is then renamed: a file with a valid header is complete.

use crate::error::{DataError, Result};
use std::path::Path;

/// First eight bytes of every dataset file.
pub const MAGIC: [u8; 8] = *b"TOPODSET";
/// Version of the layout described in this module.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the fixed header; records start right after it.
pub const HEADER_LEN: usize = 128;
/// Length of one index entry.
pub const INDEX_ENTRY_LEN: usize = 32;

/// How a record's payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Interleaved (HWC) 8-bit pixels, `width * height * channels` bytes.
    Raw,
    /// A baseline JPEG (RGB or greyscale, as the header's channel count says).
    Jpeg,
}

impl Encoding {
    fn code(self) -> u8 {
        match self {
            Encoding::Raw => 0,
            Encoding::Jpeg => 1,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::Jpeg),
            _ => None,
        }
    }
}

/// The fixed-size file header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Channels per pixel of every record (1 or 3).
    pub channels: u32,
    /// Number of records.
    pub num_records: u64,
    /// Number of classes.
    pub num_classes: u32,
    /// Byte offset of the index.
    pub index_offset: u64,
    /// Byte offset of the class list.
    pub classes_offset: u64,
    /// Length of the class list in bytes.
    pub classes_len: u64,
    /// Total file length.
    pub file_len: u64,
    /// CRC-32 of the index followed by the class list.
    pub index_checksum: u32,
}

impl Header {
    /// Serialises the header, including its own checksum.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.channels.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.num_records.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.num_classes.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.index_offset.to_le_bytes());
        bytes[40..48].copy_from_slice(&self.classes_offset.to_le_bytes());
        bytes[48..56].copy_from_slice(&self.classes_len.to_le_bytes());
        bytes[56..64].copy_from_slice(&self.file_len.to_le_bytes());
        bytes[64..68].copy_from_slice(&self.index_checksum.to_le_bytes());
        let header_checksum = crc32fast::hash(&bytes[..HEADER_LEN - 4]);
        bytes[HEADER_LEN - 4..].copy_from_slice(&header_checksum.to_le_bytes());
        bytes
    }

    /// Parses and checks a header: magic, version, header checksum, and that
    /// `actual_file_len` matches and the sections are in order.
    pub fn parse(bytes: &[u8], actual_file_len: u64, path: &Path) -> Result<Header> {
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(DataError::NotADataset {
                path: path.to_path_buf(),
                expected: String::from_utf8_lossy(&MAGIC).into_owned(),
            });
        }
        if bytes.len() < HEADER_LEN {
            return Err(DataError::SizeMismatch {
                path: path.to_path_buf(),
                expected: HEADER_LEN as u64,
                found: actual_file_len,
            });
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(DataError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let stored_checksum = u32_at(HEADER_LEN - 4);
        if crc32fast::hash(&bytes[..HEADER_LEN - 4]) != stored_checksum {
            return Err(corrupt(path, "header checksum mismatch"));
        }
        let header = Header {
            channels: u32_at(12),
            num_records: u64_at(16),
            num_classes: u32_at(24),
            index_offset: u64_at(32),
            classes_offset: u64_at(40),
            classes_len: u64_at(48),
            file_len: u64_at(56),
            index_checksum: u32_at(64),
        };
        if header.file_len != actual_file_len {
            return Err(DataError::SizeMismatch {
                path: path.to_path_buf(),
                expected: header.file_len,
                found: actual_file_len,
            });
        }
        if header.channels != 1 && header.channels != 3 {
            return Err(corrupt(
                path,
                &format!("{} channels, expected 1 or 3", header.channels),
            ));
        }
        let index_len = header
            .num_records
            .checked_mul(INDEX_ENTRY_LEN as u64)
            .ok_or_else(|| corrupt(path, "record count overflows"))?;
        let sections_in_order = header.index_offset >= HEADER_LEN as u64
            && header.index_offset.checked_add(index_len) == Some(header.classes_offset)
            && header.classes_offset.checked_add(header.classes_len) == Some(header.file_len);
        if !sections_in_order {
            return Err(corrupt(path, "section offsets are inconsistent"));
        }
        Ok(header)
    }
}

/// One index entry: where a record is and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Byte offset of the payload in the file.
    pub offset: u64,
    /// Payload length in bytes.
    pub len: u32,
    /// Class index.
    pub label: u32,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Payload encoding.
    pub encoding: Encoding,
    /// CRC-32 of the payload (files written before it existed have none).
    pub checksum: Option<u32>,
}

/// Index entry byte 25: 1 when bytes 28..32 hold the payload's CRC-32.
const HAS_CHECKSUM: u8 = 1;

impl IndexEntry {
    /// Serialises the entry (layout: offset u64, len u32, label u32, width u32,
    /// height u32, encoding u8, checksum flag u8, 2 reserved bytes, payload
    /// CRC-32 u32).
    pub fn to_bytes(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut bytes = [0u8; INDEX_ENTRY_LEN];
        bytes[0..8].copy_from_slice(&self.offset.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.len.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.label.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.width.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.height.to_le_bytes());
        bytes[24] = self.encoding.code();
        if let Some(checksum) = self.checksum {
            bytes[25] = HAS_CHECKSUM;
            bytes[28..32].copy_from_slice(&checksum.to_le_bytes());
        }
        bytes
    }

    /// Parses an entry; `None` if the encoding code is unknown.
    pub fn from_bytes(bytes: &[u8]) -> Option<IndexEntry> {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        Some(IndexEntry {
            offset: u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")),
            len: u32_at(8),
            label: u32_at(12),
            width: u32_at(16),
            height: u32_at(20),
            encoding: Encoding::from_code(bytes[24])?,
            checksum: (bytes[25] == HAS_CHECKSUM).then(|| u32_at(28)),
        })
    }
}

pub(crate) fn corrupt(path: &Path, what: &str) -> DataError {
    DataError::Corrupt {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_header() -> Header {
        Header {
            channels: 3,
            num_records: 2,
            num_classes: 5,
            index_offset: 1000,
            classes_offset: 1064,
            classes_len: 10,
            file_len: 1074,
            index_checksum: 0xdead_beef,
        }
    }

    #[test]
    fn header_round_trips() {
        let header = sample_header();
        let bytes = header.to_bytes();
        assert_eq!(Header::parse(&bytes, 1074, Path::new("x")).unwrap(), header);
    }

    #[test]
    fn header_rejects_flipped_bit() {
        let mut bytes = sample_header().to_bytes();
        bytes[17] ^= 1;
        let error = Header::parse(&bytes, 1074, Path::new("x")).unwrap_err();
        assert!(matches!(error, DataError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn header_rejects_wrong_length_and_version() {
        let bytes = sample_header().to_bytes();
        let error = Header::parse(&bytes, 1073, Path::new("x")).unwrap_err();
        assert!(matches!(
            error,
            DataError::SizeMismatch {
                expected: 1074,
                found: 1073,
                ..
            }
        ));
        let mut bytes = bytes;
        bytes[8] = 9;
        let error = Header::parse(&bytes, 1074, Path::new("x")).unwrap_err();
        assert!(matches!(
            error,
            DataError::UnsupportedVersion { found: 9, .. }
        ));
    }

    #[test]
    fn header_rejects_foreign_bytes() {
        let error = Header::parse(b"\x89PNG\r\n\x1a\nrest", 12, Path::new("x.png")).unwrap_err();
        assert!(matches!(error, DataError::NotADataset { .. }));
        assert!(error.to_string().contains("x.png"));
    }

    #[test]
    fn index_entry_round_trips_and_rejects_unknown_encoding() {
        let entry = IndexEntry {
            offset: 1 << 40,
            len: 77,
            label: 3,
            width: 500,
            height: 375,
            encoding: Encoding::Jpeg,
            checksum: Some(0x0123_4567),
        };
        let mut bytes = entry.to_bytes();
        assert_eq!(IndexEntry::from_bytes(&bytes), Some(entry));
        // Entries written before record checksums have none.
        let unchecked = IndexEntry {
            checksum: None,
            ..entry
        };
        assert_eq!(&unchecked.to_bytes()[25..], &[0u8; 7]);
        assert_eq!(
            IndexEntry::from_bytes(&unchecked.to_bytes()),
            Some(unchecked)
        );
        bytes[24] = 7;
        assert_eq!(IndexEntry::from_bytes(&bytes), None);
    }
}
