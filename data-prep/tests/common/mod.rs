//! Shared test helpers: synthetic image trees and the shared ImageNet-mini fixture.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The shared ImageNet-mini tree (a missing one fails the test).
pub fn imagenet_mini() -> PathBuf {
    test_support::shared("imagenet-mini")
}

/// Deterministic pseudo-random RGB pixels.
pub fn noise_pixels(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..width * height * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

/// Writes `per_class` PNG images of varied sizes into `root/<class>/`, returning
/// `(path, label, pixels, width, height)` in sorted order.
pub fn write_png_folder(
    root: &Path,
    classes: &[&str],
    per_class: u32,
) -> Vec<(PathBuf, u32, Vec<u8>, u32, u32)> {
    let mut written = Vec::new();
    let mut sorted: Vec<&str> = classes.to_vec();
    sorted.sort();
    for (label, class) in sorted.iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..per_class {
            let (width, height) = (20 + 7 * i + label as u32, 15 + 3 * i);
            let pixels = noise_pixels(width, height, label as u32 * 100 + i);
            let path = root.join(class).join(format!("img_{i:03}.png"));
            image::RgbImage::from_raw(width, height, pixels.clone())
                .unwrap()
                .save(&path)
                .unwrap();
            written.push((path, label as u32, pixels, width, height));
        }
    }
    written
}

/// Every regular file under `dir`, recursively.
pub fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { count_files(&p) } else { 1 })
        .sum()
}

/// Writes an IDX file, gzipped.
pub fn write_idx_gz(path: &Path, magic: u32, dims: &[u32], data: &[u8]) {
    use std::io::Write;
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    encoder.write_all(&bytes).unwrap();
    encoder.finish().unwrap();
}
