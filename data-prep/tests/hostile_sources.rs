//! Source trees built to hurt prep: decompression bombs (tiny files whose
//! headers claim gigapixels) and symbolic-link loops. Each must be
//! reported, and never cost the run, the machine's memory or duplicates.

mod common;

use data_prep::codec::{encode_jpeg, Pixels};
use data_prep::{prep_image_folder, DataError, PrepOptions, Storage};
use std::path::Path;

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn options() -> PrepOptions {
    PrepOptions {
        max_side: Some(32),
        storage: Storage::Raw,
        progress: false,
        threads: Some(2),
        ..PrepOptions::default()
    }
}

/// A valid 16x16 baseline JPEG whose frame header (SOF0) then claims
/// `width` x `height`: a few hundred bytes that ask a decoder for gigabytes.
fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let pixels = Pixels {
        width: 16,
        height: 16,
        channels: 3,
        data: common::noise_pixels(16, 16, 1),
    };
    let mut bytes = encode_jpeg(&pixels, 90).unwrap();
    // SOF0: FF C0, length (2 bytes), precision (1), height (2), width (2).
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

/// A valid 1x1 PNG whose IHDR chunk then claims `width` x `height` (CRC
/// recomputed, so the header is well formed).
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::from_raw(1, 1, vec![10, 20, 30])
        .unwrap()
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    // Signature (8), IHDR length (4), "IHDR" at 12, width at 16, height at
    // 20, 5 more bytes, then the CRC of type and data at 29.
    assert_eq!(&bytes[12..16], b"IHDR");
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// Two good PNGs in class `a`, and in class `b` a JPEG claiming
/// 60000x60000 and a PNG claiming 20000x20000.
fn tree_with_bombs(src: &Path) {
    common::write_png_folder(src, &["a"], 2);
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("b/bomb.jpg"), jpeg_claiming(60000, 60000)).unwrap();
    std::fs::write(src.join("b/bomb.png"), png_claiming(20000, 20000)).unwrap();
}

#[test]
fn decompression_bombs_are_skipped_from_their_headers() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    tree_with_bombs(&src);
    let summary = prep_image_folder(&src, &dir.path().join("out"), "train", &options()).unwrap();
    let split = &summary.splits[0];
    assert_eq!((split.files_found, split.written), (4, 2));
    let reasons: Vec<(String, &str)> = split
        .skipped
        .iter()
        .map(|s| (file_name(&s.path), s.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    for ((name, reason), claim) in reasons.iter().zip(["60000x60000", "20000x20000"]) {
        assert!(name.starts_with("bomb"), "{reasons:?}");
        assert!(
            reason.contains(claim)
                && reason.contains("over the limit of 128.0 megapixels")
                && reason.contains("--max-pixels"),
            "{name}: {reason}"
        );
    }

    let strict = PrepOptions {
        strict: true,
        ..options()
    };
    let error = prep_image_folder(&src, &dir.path().join("strict"), "train", &strict).unwrap_err();
    assert!(
        matches!(error, DataError::StrictFailures { count: 2, .. }),
        "{error}"
    );
}

#[test]
fn max_pixels_sets_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // Images of 20x15 and 27x18 pixels (300 and 486).
    common::write_png_folder(&src, &["a"], 2);
    let limited = PrepOptions {
        max_pixels: 400,
        ..options()
    };
    let summary = prep_image_folder(&src, &dir.path().join("out"), "train", &limited).unwrap();
    let split = &summary.splits[0];
    assert_eq!((split.written, split.skipped.len()), (1, 1));
    assert!(
        split.skipped[0].reason.contains("27x18 pixels"),
        "{:?}",
        split.skipped
    );
}

#[cfg(unix)]
#[test]
fn symbolic_link_loops_store_each_file_once() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    common::write_png_folder(&src, &["a", "b"], 2);
    // A loop back to its own folder, a second loop two levels up, a link
    // to a sibling class folder, and a link to one file.
    symlink("../a", src.join("a/self")).unwrap();
    std::fs::create_dir(src.join("b/deep")).unwrap();
    symlink("../..", src.join("b/deep/up")).unwrap();
    symlink("../a", src.join("b/alias")).unwrap();
    symlink("img_000.png", src.join("b/same.png")).unwrap();
    let summary = prep_image_folder(&src, &dir.path().join("out"), "train", &options()).unwrap();
    let split = &summary.splits[0];
    assert_eq!(
        (split.files_found, split.written, split.skipped.len()),
        (4, 4, 0)
    );
    let mut repeats: Vec<String> = split
        .repeats
        .iter()
        .map(|r| {
            let path = r.path.strip_prefix(&src).unwrap().display();
            format!("{path}: {}", r.reason)
        })
        .collect();
    repeats.sort();
    assert_eq!(repeats.len(), 4, "{repeats:#?}");
    for (repeat, (path, why)) in repeats.iter().zip([
        ("a/self", "already scanned"),
        ("b/alias", "already scanned"),
        ("b/deep/up", "already scanned"),
        ("b/same.png", "the same file as"),
    ]) {
        assert!(repeat.starts_with(path) && repeat.contains(why), "{repeat}");
    }
    // The manifest lists them too.
    let manifest = std::fs::read_to_string(&split.manifest).unwrap();
    assert!(manifest.contains("b/alias"), "{manifest}");
}
