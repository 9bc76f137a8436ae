//! Header and integrity checks of dataset files, crash safety of the writer, and
//! exact round trips of raw storage.

mod common;

use data_prep::writer::{DatasetWriter, EncodedRecord};
use data_prep::{prep_image_folder, DataError, Dataset, Encoding, PrepOptions, Storage};
use std::path::{Path, PathBuf};

fn raw_options() -> PrepOptions {
    PrepOptions {
        max_side: None,
        storage: Storage::Raw,
        progress: false,
        ..PrepOptions::default()
    }
}

/// A small valid dataset file; returns its path.
fn small_dataset(dir: &Path) -> PathBuf {
    common::write_png_folder(&dir.join("src"), &["cat", "dog"], 3);
    let summary =
        prep_image_folder(&dir.join("src"), &dir.join("out"), "train", &raw_options()).unwrap();
    summary.splits[0].output.clone()
}

#[test]
fn raw_storage_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let written = common::write_png_folder(&dir.path().join("src"), &["zebra", "ant", "mole"], 4);
    let summary = prep_image_folder(
        &dir.path().join("src"),
        &dir.path().join("out"),
        "train",
        &raw_options(),
    )
    .unwrap();
    let dataset = Dataset::open(&summary.splits[0].output).unwrap();
    assert_eq!(dataset.class_names(), ["ant", "mole", "zebra"]);
    assert_eq!(dataset.len(), written.len());
    for (i, (_, label, pixels, width, height)) in written.iter().enumerate() {
        let record = dataset.record(i);
        assert_eq!(record.encoding, Encoding::Raw);
        assert_eq!(dataset.label(i), *label);
        let decoded = dataset.decode(i).unwrap();
        assert_eq!((decoded.width, decoded.height), (*width, *height));
        assert_eq!(&decoded.data, pixels, "record {i}");
    }
}

#[test]
fn truncated_file_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_dataset(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 100, 0] {
        let truncated = dir.path().join("truncated.topo");
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        let error = Dataset::open(&truncated).unwrap_err();
        assert!(
            matches!(error, DataError::SizeMismatch { .. }),
            "cut {cut}: {error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("truncated.topo") && message.contains("topotrain prep"),
            "{message}"
        );
    }
}

#[test]
fn foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let written = common::write_png_folder(dir.path(), &["x"], 1);
    let error = Dataset::open(&written[0].0).unwrap_err();
    assert!(matches!(error, DataError::NotADataset { .. }), "{error}");
    assert!(error.to_string().contains("img_000.png"));
}

#[test]
fn other_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_dataset(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = bytes[8].wrapping_add(1);
    std::fs::write(&path, &bytes).unwrap();
    let error = Dataset::open(&path).unwrap_err();
    assert!(
        matches!(
            error,
            DataError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn corrupted_index_or_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_dataset(dir.path());
    let original = std::fs::read(&path).unwrap();
    let index_offset = u64::from_le_bytes(original[32..40].try_into().unwrap()) as usize;
    for (at, what) in [
        (index_offset + 12, "index checksum"),
        (20, "header checksum"),
        (original.len() - 2, "index checksum"),
    ] {
        let mut bytes = original.clone();
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let error = Dataset::open(&path).unwrap_err();
        assert!(error.to_string().contains(what), "byte {at}: {error}");
    }
    // Record payloads are not checksummed, but a valid file opens.
    std::fs::write(&path, &original).unwrap();
    assert!(Dataset::open(&path).is_ok());
}

#[test]
fn interrupted_writer_leaves_nothing_that_looks_complete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.topo");
    let record = EncodedRecord {
        bytes: vec![7; 12],
        width: 2,
        height: 2,
        encoding: Encoding::Raw,
    };
    {
        let mut writer = DatasetWriter::create(&path, 3, vec!["a".into()]).unwrap();
        writer.append(&record, 0).unwrap();
        // While writing, only the .partial file exists; its header is written last,
        // so it is refused (empty while buffered, or without magic once flushed).
        let partial = dir.path().join("train.topo.partial");
        assert!(partial.is_file() && !path.exists());
        let error = Dataset::open(&partial).unwrap_err();
        assert!(
            matches!(
                error,
                DataError::NotADataset { .. } | DataError::SizeMismatch { .. }
            ),
            "{error}"
        );
        // Dropped without finish (an error or panic mid-prep): the partial file goes.
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let mut writer = DatasetWriter::create(&path, 3, vec!["a".into()]).unwrap();
    writer.append(&record, 0).unwrap();
    assert!(writer.append(&record, 1).is_err(), "label out of range");
    let (final_path, len) = writer.finish().unwrap();
    assert_eq!(std::fs::metadata(&final_path).unwrap().len(), len);
    assert_eq!(
        Dataset::open(&final_path).unwrap().decode(0).unwrap().data,
        vec![7; 12]
    );
}

/// A payload byte changed after writing is caught when the record is read
/// (the index and header checksums do not cover payloads), naming the file
/// and the record; the other records still read.
#[test]
fn a_damaged_record_is_named_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_dataset(dir.path());
    let first_payload = Dataset::open(&path).unwrap().record(1).bytes.len();
    let mut bytes = std::fs::read(&path).unwrap();
    // Record 0 starts right after the 128-byte header; flip a byte of record 1.
    let record_0_len = Dataset::open(&path).unwrap().record(0).bytes.len();
    bytes[128 + record_0_len + first_payload / 2] ^= 0x40;
    let damaged = dir.path().join("damaged.topo");
    std::fs::write(&damaged, &bytes).unwrap();
    let dataset = Dataset::open(&damaged).unwrap();
    assert!(dataset.decode(0).is_ok());
    let message = dataset.decode(1).unwrap_err().to_string();
    assert!(
        message.contains("damaged.topo")
            && message.contains("record 1")
            && message.contains("CRC-32"),
        "{message}"
    );
}

/// A file truncated or rewritten while open is reported, naming it, before
/// the memory map is read past its new end (which would be a SIGBUS).
#[test]
fn a_file_changed_while_open_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_dataset(dir.path());
    let dataset = Dataset::open(&path).unwrap();
    dataset.check_unchanged().unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(200).unwrap();
    let message = dataset.check_unchanged().unwrap_err().to_string();
    assert!(
        message.contains(path.file_name().unwrap().to_str().unwrap())
            && message.contains("changed while in use"),
        "{message}"
    );
}
