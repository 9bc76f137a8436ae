//! `python/topo_reader.py`, run by Debian's python3 with numpy, reads the
//! datasets `topotrain prep` writes exactly as topotrain's own reader
//! (data-prep's `Dataset`) does.

use crate::util::{require_fashion_mnist, topotrain_ok, FASHION_MNIST};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PYTHON: &str = "/usr/bin/python3";

/// Opens the file with the reader and writes the pixels of the records
/// listed to a file; prints what else it read as JSON.
const READ_SAMPLES: &str = r#"
import json
dataset = TopoDataset(sys.argv[2])
samples = []
with open(sys.argv[3], "wb") as pixels:
    for index in [int(i) for i in sys.argv[4].split(",")]:
        image, label = dataset[index]
        assert image.dtype.name == "uint8", image.dtype
        pixels.write(image.tobytes())
        samples.append({"shape": list(image.shape), "label": label})
print(json.dumps({"len": len(dataset), "channels": dataset.channels,
                  "class_names": dataset.class_names,
                  "labels": dataset.labels.tolist(), "samples": samples}))
"#;

fn reader_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../python")
}

/// Runs `code` with `TopoDataset` imported and `sys.argv` = [_, the
/// reader's folder, `topo`, `args`...] in Debian's python3 with numpy; fails
/// (never skips) without them.
fn python(code: &str, topo: &Path, args: &[&str]) -> Output {
    let numpy = Command::new(PYTHON).args(["-c", "import numpy"]).output();
    assert!(
        numpy.is_ok_and(|o| o.status.success()),
        "{PYTHON} with numpy is needed to test python/topo_reader.py: run scripts/setup.sh (it installs python3-numpy)"
    );
    let script = format!(
        "import sys\nsys.path.insert(0, sys.argv[1])\nfrom topo_reader import TopoDataset\n{code}"
    );
    // Imports leave no __pycache__ in the source tree.
    Command::new(PYTHON)
        .args(["-c", &script])
        .arg(reader_dir())
        .arg(topo)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap()
}

fn python_ok(code: &str, topo: &Path, args: &[&str]) -> String {
    let output = python(code, topo, args);
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Reads `indices` of `topo` with the Python reader and checks everything
/// against data-prep's reader: count, channels, class names, every label,
/// and the shape and pixels of each record read (equal, or within a mean
/// absolute difference of `decoder_tolerance` where JPEG decoders differ).
fn assert_python_reads_as_topotrain(topo: &Path, indices: &[usize], decoder_tolerance: f64) {
    let pixels_path = topo.with_extension("pixels");
    let list: Vec<String> = indices.iter().map(usize::to_string).collect();
    let json = python_ok(
        READ_SAMPLES,
        topo,
        &[pixels_path.to_str().unwrap(), &list.join(",")],
    );
    let read: serde_json::Value = serde_json::from_str(&json).unwrap();
    let dataset = data_prep::Dataset::open(topo).unwrap();
    assert_eq!(read["len"], dataset.len());
    assert_eq!(read["channels"], dataset.channels());
    assert_eq!(
        read["class_names"],
        serde_json::json!(dataset.class_names())
    );
    let labels: Vec<u32> = (0..dataset.len()).map(|i| dataset.label(i)).collect();
    assert_eq!(read["labels"], serde_json::json!(labels));

    let pixels = std::fs::read(&pixels_path).unwrap();
    let mut at = 0;
    for (sample, &index) in read["samples"].as_array().unwrap().iter().zip(indices) {
        let expected = dataset.decode(index).unwrap();
        let shape = [expected.height, expected.width, expected.channels];
        assert_eq!(sample["shape"], serde_json::json!(shape), "record {index}");
        assert_eq!(sample["label"], dataset.label(index), "record {index}");
        let bytes = &pixels[at..at + expected.data.len()];
        let difference = bytes
            .iter()
            .zip(&expected.data)
            .map(|(&a, &b)| f64::from(a.abs_diff(b)))
            .sum::<f64>()
            / bytes.len() as f64;
        eprintln!("record {index}: mean absolute difference {difference}");
        assert!(
            difference <= decoder_tolerance,
            "record {index}: pixels differ by {difference} on average"
        );
        at += expected.data.len();
    }
    assert_eq!(
        at,
        pixels.len(),
        "the reader returned more pixels than expected"
    );
}

/// An image folder of two classes, images of different sizes with varied
/// pixels, prepared with `storage` ("raw" or "jpeg").
fn prepared_folder(root: &Path, storage: &str) -> PathBuf {
    let src = root.join("src");
    for (class, class_name) in ["cat", "dog"].iter().enumerate() {
        std::fs::create_dir_all(src.join(class_name)).unwrap();
        for image in 0..3u32 {
            let (width, height) = (5 + image, 9 - 2 * image);
            let pixel = |x: u32, y: u32| {
                let seed = (x * 31 + y * 17 + image * 7 + class as u32 * 101) % 256;
                image::Rgb([seed as u8, (seed * 3 % 256) as u8, (255 - seed) as u8])
            };
            image::RgbImage::from_fn(width, height, pixel)
                .save(src.join(class_name).join(format!("{image}.png")))
                .unwrap();
        }
    }
    let out = root.join(storage);
    topotrain_ok(&[
        "prep",
        "folder",
        "--src",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--storage",
        storage,
        "--max-side",
        "0",
    ]);
    out.join("train.topo")
}

#[test]
fn reads_a_raw_image_folder_as_topotrain_does() {
    let dir = tempfile::tempdir().unwrap();
    let topo = prepared_folder(dir.path(), "raw");
    assert_python_reads_as_topotrain(&topo, &[0, 2, 3, 5], 0.0);
    // Negative indices count from the end; past the end is an IndexError.
    let last = python_ok(
        "d = TopoDataset(sys.argv[2]); print(d[-1][0].shape, d[-1][1])\n\
         try: d[len(d)]\nexcept IndexError as e: print('IndexError', e)",
        &topo,
        &[],
    );
    assert_eq!(
        last,
        "(5, 7, 3) 1\nIndexError record 6 of a dataset with 6 records\n"
    );
}

#[test]
fn reads_fashion_mnist_greyscale_as_topotrain_does() {
    require_fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    topotrain_ok(&[
        "prep",
        "fashion-mnist",
        "--src",
        FASHION_MNIST,
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_python_reads_as_topotrain(&dir.path().join("val.topo"), &[0, 1, 4321, 9999], 0.0);
}

/// JPEG records need Pillow: with it they decode to the right shapes,
/// without it the error says what to do.
#[test]
fn jpeg_records_decode_with_pillow_or_say_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let topo = prepared_folder(dir.path(), "jpeg");
    let output = python(
        "image, label = TopoDataset(sys.argv[2])[4]; print(image.shape, image.dtype, label)",
        &topo,
        &[],
    );
    let has_pillow = Command::new(PYTHON)
        .args(["-c", "import PIL"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_pillow {
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "(7, 6, 3) uint8 1\n"
        );
        assert_python_reads_as_topotrain(&topo, &[0, 1, 2, 3, 4, 5], 4.0);
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains("record 4")
                && stderr.contains("Pillow")
                && stderr.contains("--storage raw"),
            "{stderr}"
        );
    }
}

/// A truncated or altered file is refused with a message naming it.
#[test]
fn damaged_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let topo = prepared_folder(dir.path(), "raw");
    let bytes = std::fs::read(&topo).unwrap();
    let open = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let output = python("TopoDataset(sys.argv[2])", &path, &[]);
        assert!(!output.status.success(), "{name} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let truncated = open("truncated.topo", &bytes[..bytes.len() - 1]);
    assert!(
        truncated.contains("TopoFormatError") && truncated.contains("truncated"),
        "{truncated}"
    );
    let mut altered = bytes.clone();
    // The label of the index's first entry (header: index offset at byte 32).
    let index_offset = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
    altered[index_offset + 12] ^= 1;
    let error = open("altered.topo", &altered);
    assert!(error.contains("index checksum mismatch"), "{error}");
    let error = open("foreign.topo", b"PK\x03\x04 not a dataset");
    assert!(error.contains("not a topotrain dataset"), "{error}");
    // A payload byte of record 0 (right after the 128-byte header): caught
    // by the record's CRC-32 when read.
    let mut damaged = bytes.clone();
    damaged[128] ^= 1;
    let path = dir.path().join("payload.topo");
    std::fs::write(&path, &damaged).unwrap();
    let output = python("TopoDataset(sys.argv[2])[0]", &path, &[]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && error.contains("record 0") && error.contains("CRC-32"),
        "{error}"
    );
}
