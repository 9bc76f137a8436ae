//! Converting sources into dataset files: parallel decode/resize/encode, progress
//! bar, per-split manifest of skipped files, and a summary whose counts add up.

use crate::codec::{decode_source, encode_jpeg, Pixels};
use crate::error::{DataError, Result};
use crate::format::{Encoding, FORMAT_VERSION};
use crate::loader::process_cpu_seconds;
use crate::resample::Resampler;
use crate::sources::{
    find_val_labels, read_idx_images, scan_flat_val, scan_image_folder, IdxImages, LabeledFiles,
    SkippedFile,
};
use crate::transform::SampleRng;
use crate::writer::{DatasetWriter, EncodedRecord};
use rayon::prelude::*;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How images are stored (ffcv's `write_mode`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Raw pixels: largest files, fastest loading, exact round trip.
    Raw,
    /// JPEG at [`PrepOptions::jpeg_quality`]: smallest files, slower loading.
    Jpeg,
    /// Each image is JPEG with probability `compress_probability`, else raw.
    Mixed {
        /// Probability of storing an image as JPEG.
        compress_probability: f64,
    },
}

/// Options of a prep run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PrepOptions {
    /// Longer side limit; larger images are downscaled (antialiased). `None` keeps sizes.
    pub max_side: Option<u32>,
    /// Raw, JPEG or a mix.
    pub storage: Storage,
    /// JPEG quality (1-100) of stored JPEGs.
    pub jpeg_quality: u8,
    /// Seed of the per-image compress draw in [`Storage::Mixed`].
    pub seed: u64,
    /// Source images of more pixels than this (read from their headers) are
    /// skipped as bad files instead of decoded.
    pub max_pixels: u64,
    /// Fail (writing no dataset file) if any file cannot be converted.
    pub strict: bool,
    /// Worker threads; `None` uses all cores.
    pub threads: Option<usize>,
    /// Show a progress bar on stderr.
    #[serde(skip)]
    pub progress: bool,
}

/// Default longer-side limit, chosen so that one loader thread exceeds its
/// throughput goal at resolution 176 (see BENCHMARKS.md).
pub const DEFAULT_MAX_SIDE: u32 = 256;
/// Default limit on a source image's pixels: 128 megapixels (384 MB as RGB),
/// four times the largest ImageNet photo, far below a decompression bomb's claim.
pub const DEFAULT_MAX_PIXELS: u64 = 128_000_000;
/// Default JPEG quality (ffcv's ImageNet recipe).
pub const DEFAULT_JPEG_QUALITY: u8 = 90;
/// Default fraction of images stored as JPEG (ffcv's ImageNet recipe uses 0.5).
pub const DEFAULT_COMPRESS_PROBABILITY: f64 = 0.5;

impl Default for PrepOptions {
    fn default() -> Self {
        PrepOptions {
            max_side: Some(DEFAULT_MAX_SIDE),
            storage: Storage::Mixed {
                compress_probability: DEFAULT_COMPRESS_PROBABILITY,
            },
            jpeg_quality: DEFAULT_JPEG_QUALITY,
            seed: 0,
            max_pixels: DEFAULT_MAX_PIXELS,
            strict: false,
            threads: None,
            progress: true,
        }
    }
}

impl PrepOptions {
    fn validate(&self) -> Result<()> {
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(DataError::InvalidOption(format!(
                "JPEG quality must be 1-100, not {}",
                self.jpeg_quality
            )));
        }
        if self.max_pixels == 0 {
            return Err(DataError::InvalidOption(
                "max pixels must be at least 1".into(),
            ));
        }
        if self.max_side == Some(0) {
            return Err(DataError::InvalidOption(
                "max side must be at least 1 pixel".into(),
            ));
        }
        if let Storage::Mixed {
            compress_probability: p,
        } = self.storage
        {
            if !(0.0..=1.0).contains(&p) {
                return Err(DataError::InvalidOption(format!(
                    "compress probability must be in [0, 1], not {p}"
                )));
            }
        }
        if self.threads == Some(0) {
            return Err(DataError::InvalidOption(
                "threads must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What happened to one split.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SplitSummary {
    /// Split name (`train`, `val`, ...).
    pub split: String,
    /// The dataset file written.
    pub output: PathBuf,
    /// The manifest written next to it.
    pub manifest: PathBuf,
    /// Files found in the source.
    pub files_found: usize,
    /// Records written (`files_found - skipped.len()`).
    pub written: usize,
    /// Records stored raw.
    pub raw_records: usize,
    /// Records stored as JPEG.
    pub jpeg_records: usize,
    /// Files not converted, with reasons.
    pub skipped: Vec<SkippedFile>,
    /// Files converted despite oddities, with what was odd.
    pub warnings: Vec<SkippedFile>,
    /// Paths passed over because a symbolic link led to a file or folder
    /// already converted (not counted in `files_found`).
    pub repeats: Vec<SkippedFile>,
    /// Size of the dataset file.
    pub bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// CPU seconds used by the process meanwhile (all threads), where known.
    pub cpu_seconds: Option<f64>,
}

impl SplitSummary {
    /// Files converted or skipped per second.
    pub fn files_per_second(&self) -> f64 {
        self.files_found as f64 / self.seconds.max(1e-9)
    }

    /// Files per CPU-second: the per-core rate, unaffected by competing processes.
    pub fn files_per_cpu_second(&self) -> Option<f64> {
        self.cpu_seconds
            .filter(|&s| s > 0.0)
            .map(|s| self.files_found as f64 / s)
    }
}

/// What a prep run wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PrepSummary {
    /// `classes.txt`: one class name per line, line number = label.
    pub classes_file: PathBuf,
    /// One entry per split.
    pub splits: Vec<SplitSummary>,
}

#[derive(serde::Serialize)]
struct Manifest<'a> {
    format_version: u32,
    source: &'a Path,
    options: &'a PrepOptions,
    #[serde(flatten)]
    summary: &'a SplitSummary,
}

thread_local! {
    static RESAMPLER: RefCell<Resampler> = RefCell::new(Resampler::new());
}

/// Reads, decodes, downscales and encodes one file.
fn convert_file(
    path: &Path,
    position: usize,
    options: &PrepOptions,
) -> std::result::Result<(EncodedRecord, Option<String>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let decoded = decode_source(&bytes, options.max_pixels)?;
    let pixels = match options.max_side {
        Some(max_side) => {
            RESAMPLER.with(|r| decoded.pixels.fit_within(max_side, &mut r.borrow_mut()))
        }
        None => decoded.pixels,
    };
    Ok((encode_record(pixels, position, options)?, decoded.warning))
}

fn encode_record(
    pixels: Pixels,
    position: usize,
    options: &PrepOptions,
) -> std::result::Result<EncodedRecord, String> {
    let compress = match options.storage {
        Storage::Raw => false,
        Storage::Jpeg => true,
        Storage::Mixed {
            compress_probability,
        } => SampleRng::new(options.seed, u64::MAX, position as u64).chance(compress_probability),
    };
    let (bytes, encoding) = if compress {
        (encode_jpeg(&pixels, options.jpeg_quality)?, Encoding::Jpeg)
    } else {
        (pixels.data, Encoding::Raw)
    };
    Ok(EncodedRecord {
        bytes,
        width: pixels.width,
        height: pixels.height,
        encoding,
    })
}

fn progress_bar(len: usize, split: &str, visible: bool) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>6} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta}",
    )
    .expect("valid template");
    bar.set_style(style);
    bar.set_prefix(split.to_string());
    bar
}

fn thread_pool(options: &PrepOptions) -> Result<rayon::ThreadPool> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(threads) = options.threads {
        builder = builder.num_threads(threads);
    }
    builder
        .build()
        .map_err(|e| DataError::InvalidOption(format!("cannot start prep threads: {e}")))
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("summary serialises");
    write_atomically(path, text.as_bytes())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, bytes)
        .map_err(|e| DataError::io("cannot write", PathBuf::from(&partial), e))?;
    std::fs::rename(&partial, path).map_err(|e| DataError::io("cannot rename into place", path, e))
}

/// Tells stderr how many paths symbolic links led back to, and the first few.
fn report_repeats(split: &str, repeats: &[SkippedFile], manifest: &Path) {
    if repeats.is_empty() {
        return;
    }
    eprintln!(
        "{split}: {} path(s) reached again through symbolic links were skipped (each file is \
         stored once; all are listed in {}):",
        repeats.len(),
        manifest.display()
    );
    for repeat in repeats.iter().take(3) {
        eprintln!("  {}: {}", repeat.path.display(), repeat.reason);
    }
}

/// Converts one split's files into `<out>/<split>.topo` with a manifest
/// `<out>/<split>.manifest.json` listing skipped files and warnings.
pub fn write_split(
    split: &str,
    source: &Path,
    found: LabeledFiles,
    out: &Path,
    options: &PrepOptions,
) -> Result<SplitSummary> {
    options.validate()?;
    let started = Instant::now();
    let cpu_started = process_cpu_seconds();
    let output = out.join(format!("{split}.topo"));
    let manifest = out.join(format!("{split}.manifest.json"));
    let mut writer = DatasetWriter::create(&output, 3, found.classes.clone())?;
    let pool = thread_pool(options)?;
    report_repeats(split, &found.repeats, &manifest);
    let bar = progress_bar(found.files_found(), split, options.progress);
    bar.inc(found.unlabeled.len() as u64);
    let mut summary = SplitSummary {
        split: split.to_string(),
        output: output.clone(),
        manifest: manifest.clone(),
        files_found: found.files_found(),
        written: 0,
        raw_records: 0,
        jpeg_records: 0,
        skipped: found.unlabeled,
        warnings: Vec::new(),
        repeats: found.repeats,
        bytes: 0,
        seconds: 0.0,
        cpu_seconds: None,
    };
    // Chunks keep memory bounded and the output order equal to the file order.
    let chunk_len = pool.current_num_threads() * 8;
    for (chunk_index, chunk) in found.files.chunks(chunk_len).enumerate() {
        let converted: Vec<_> = pool.install(|| {
            chunk
                .par_iter()
                .enumerate()
                .map(|(k, (path, _))| convert_file(path, chunk_index * chunk_len + k, options))
                .collect()
        });
        for ((path, label), result) in chunk.iter().zip(converted) {
            match result {
                Ok((record, warning)) => {
                    writer.append(&record, *label)?;
                    summary.written += 1;
                    match record.encoding {
                        Encoding::Raw => summary.raw_records += 1,
                        Encoding::Jpeg => summary.jpeg_records += 1,
                    }
                    if let Some(reason) = warning {
                        summary.warnings.push(SkippedFile {
                            path: path.clone(),
                            reason,
                        });
                    }
                }
                Err(reason) => {
                    bar.suspend(|| eprintln!("skipping {}: {reason}", path.display()));
                    summary.skipped.push(SkippedFile {
                        path: path.clone(),
                        reason,
                    });
                }
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    debug_assert_eq!(summary.written + summary.skipped.len(), summary.files_found);
    let record_manifest = |summary: &mut SplitSummary| {
        summary.seconds = started.elapsed().as_secs_f64();
        summary.cpu_seconds = cpu_started
            .zip(process_cpu_seconds())
            .map(|(start, end)| end - start);
        write_json(
            &manifest,
            &Manifest {
                format_version: FORMAT_VERSION,
                source,
                options,
                summary,
            },
        )
    };
    if options.strict && !summary.skipped.is_empty() {
        drop(writer); // deletes the partial file
        summary.output = PathBuf::new();
        record_manifest(&mut summary)?;
        let first = &summary.skipped[0];
        return Err(DataError::StrictFailures {
            split: split.to_string(),
            count: summary.skipped.len(),
            first: format!("{}: {}", first.path.display(), first.reason),
            manifest,
        });
    }
    let (_, bytes) = writer.finish()?;
    summary.bytes = bytes;
    record_manifest(&mut summary)?;
    Ok(summary)
}

/// Writes `classes.txt`, refusing to overwrite a different class list.
fn write_class_list(out: &Path, classes: &[String]) -> Result<PathBuf> {
    let path = out.join("classes.txt");
    let text: String = classes.iter().map(|c| format!("{c}\n")).collect();
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if existing != text {
            return Err(DataError::BadSource {
                path,
                problem:
                    "exists with a different class list; use another --out folder for this dataset"
                        .into(),
            });
        }
    }
    write_atomically(&path, text.as_bytes())?;
    Ok(path)
}

fn create_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| DataError::io("cannot create output folder", out, e))
}

/// Where ImageNet's validation images and labels are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImagenetVal {
    /// Val folder; default `<src>/val`. Class sub-folders, or flat files.
    pub dir: Option<PathBuf>,
    /// Label file of a flat val folder; default: `LOC_val_solution.csv` or
    /// `ILSVRC2012_validation_ground_truth.txt` in, beside or above the folder.
    pub labels: Option<PathBuf>,
}

/// Converts an ILSVRC2012 tree: `<src>/train/<wnid>/*.JPEG` (or Kaggle's
/// `<src>/ILSVRC/Data/CLS-LOC/train`) and, if present, the val split. Labels are
/// sorted wnids. Writes `train.topo`, `val.topo`, manifests and `classes.txt`.
pub fn prep_imagenet(
    src: &Path,
    out: &Path,
    val: &ImagenetVal,
    options: &PrepOptions,
) -> Result<PrepSummary> {
    options.validate()?;
    let kaggle_root = src.join("ILSVRC/Data/CLS-LOC");
    let root = if !src.join("train").is_dir() && kaggle_root.join("train").is_dir() {
        kaggle_root
    } else {
        src.to_path_buf()
    };
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        return Err(DataError::BadSource {
            path: src.to_path_buf(),
            problem: "has no train/ folder; expected the ILSVRC2012 layout train/<wnid>/*.JPEG"
                .into(),
        });
    }
    let train = scan_image_folder(&train_dir, None)?;
    let classes = train.classes.clone();
    create_out_dir(out)?;
    let classes_file = write_class_list(out, &classes)?;
    let mut splits = vec![write_split("train", &train_dir, train, out, options)?];
    let val_dir = val.dir.clone().unwrap_or_else(|| root.join("val"));
    if val_dir.is_dir() {
        let has_class_folders = std::fs::read_dir(&val_dir)
            .map_err(|e| DataError::io("cannot list", &val_dir, e))?
            .any(|entry| entry.is_ok_and(|e| e.path().is_dir()));
        let found = if has_class_folders && val.labels.is_none() {
            scan_image_folder(&val_dir, Some(&classes))?
        } else {
            let labels = val
                .labels
                .clone()
                .or_else(|| find_val_labels(&val_dir, src))
                .ok_or_else(|| DataError::BadSource {
                    path: val_dir.clone(),
                    problem: "is a flat folder but no LOC_val_solution.csv or \
                          ILSVRC2012_validation_ground_truth.txt was found; pass --val-labels"
                        .into(),
                })?;
            scan_flat_val(&val_dir, &labels, &classes)?
        };
        splits.push(write_split("val", &val_dir, found, out, options)?);
    } else if val.dir.is_some() {
        return Err(DataError::BadSource {
            path: val_dir,
            problem: "is not a directory".into(),
        });
    }
    Ok(PrepSummary {
        classes_file,
        splits,
    })
}

/// Converts any ImageFolder tree (`<src>/<class>/**/<image>`) into `<out>/<split>.topo`.
pub fn prep_image_folder(
    src: &Path,
    out: &Path,
    split: &str,
    options: &PrepOptions,
) -> Result<PrepSummary> {
    options.validate()?;
    let found = scan_image_folder(src, None)?;
    create_out_dir(out)?;
    let classes_file = write_class_list(out, &found.classes)?;
    let summary = write_split(split, src, found, out, options)?;
    Ok(PrepSummary {
        classes_file,
        splits: vec![summary],
    })
}

/// Where Debian's `dataset-fashion-mnist` package installs the IDX files.
pub const FASHION_MNIST_DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's ten classes in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Converts Fashion-MNIST's IDX files (plain or `.gz`) into `train.topo` (60k) and
/// `val.topo` (the 10k test set): 28x28 greyscale, one channel, stored raw.
pub fn prep_fashion_mnist(src: &Path, out: &Path) -> Result<PrepSummary> {
    create_out_dir(out)?;
    let classes: Vec<String> = FASHION_MNIST_CLASSES
        .iter()
        .map(|c| c.to_string())
        .collect();
    let classes_file = write_class_list(out, &classes)?;
    let mut splits = Vec::new();
    for (split, prefix) in [("train", "train"), ("val", "t10k")] {
        let started = Instant::now();
        let IdxImages {
            pixels,
            labels,
            height,
            width,
        } = read_idx_images(src, prefix)?;
        let output = out.join(format!("{split}.topo"));
        let mut writer = DatasetWriter::create(&output, 1, classes.clone())?;
        for (image, &label) in pixels.chunks_exact(width * height).zip(&labels) {
            let record = EncodedRecord {
                bytes: image.to_vec(),
                width: width as u32,
                height: height as u32,
                encoding: Encoding::Raw,
            };
            writer
                .append(&record, u32::from(label))
                .map_err(|e| DataError::BadSource {
                    path: src.to_path_buf(),
                    problem: format!("{prefix}: {e}"),
                })?;
        }
        let (_, bytes) = writer.finish()?;
        let manifest = out.join(format!("{split}.manifest.json"));
        let summary = SplitSummary {
            split: split.to_string(),
            output,
            manifest: manifest.clone(),
            files_found: labels.len(),
            written: labels.len(),
            raw_records: labels.len(),
            jpeg_records: 0,
            skipped: Vec::new(),
            warnings: Vec::new(),
            repeats: Vec::new(),
            bytes,
            seconds: started.elapsed().as_secs_f64(),
            cpu_seconds: None,
        };
        let options = PrepOptions {
            max_side: None,
            storage: Storage::Raw,
            ..PrepOptions::default()
        };
        write_json(
            &manifest,
            &Manifest {
                format_version: FORMAT_VERSION,
                source: src,
                options: &options,
                summary: &summary,
            },
        )?;
        splits.push(summary);
    }
    Ok(PrepSummary {
        classes_file,
        splits,
    })
}
