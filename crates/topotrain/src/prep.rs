//! `topotrain prep ...`: dataset conversion (implemented in the `data-prep` crate).

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use data_prep::{text, ImagenetVal, PrepOptions, PrepSummary, Storage};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum PrepCommand {
    /// ILSVRC2012: <SRC>/train/<wnid>/*.JPEG and <SRC>/val (class folders, or flat
    /// with LOC_val_solution.csv or the devkit ground truth). Writes train.topo,
    /// val.topo, their manifests and classes.txt into --out.
    Imagenet {
        /// Folder holding train/ and val/ (or Kaggle's ILSVRC/Data/CLS-LOC/).
        #[arg(long)]
        src: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Validation folder, if not <SRC>/val.
        #[arg(long)]
        val_dir: Option<PathBuf>,
        /// Labels of a flat validation folder: LOC_val_solution.csv, or
        /// ILSVRC2012_validation_ground_truth.txt with map_clsloc.txt beside it.
        /// Default: looked for in, beside and above the folder.
        #[arg(long)]
        val_labels: Option<PathBuf>,
        #[command(flatten)]
        options: PrepArgs,
    },
    /// Any ImageFolder tree (<SRC>/<class>/**/<image>) into <OUT>/<SPLIT>.topo.
    Folder {
        /// Folder with one sub-folder per class.
        #[arg(long)]
        src: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Name of the split written.
        #[arg(long, default_value = "train")]
        split: String,
        #[command(flatten)]
        options: PrepArgs,
    },
    /// Fashion-MNIST IDX files (plain or .gz) into train.topo and val.topo
    /// (28x28 greyscale, stored raw).
    FashionMnist {
        /// Folder with the IDX files (Debian package dataset-fashion-mnist).
        #[arg(long, default_value = data_prep::FASHION_MNIST_DEFAULT_DIR)]
        src: PathBuf,
        /// Output folder.
        #[arg(long, default_value = "data/fashion-mnist")]
        out: PathBuf,
    },
    /// A UTF-8 text file into GPT-2 tokens: <OUT>/train.bin, val.bin (u16, NanoGPT's
    /// format) and meta.json; the last --val-fraction of the text is validation.
    Text {
        /// The text file ("-" reads standard input).
        #[arg(long)]
        src: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        split: TextSplitArgs,
        /// Remove Bible verse references ("Ge1:1 ") at line starts.
        #[arg(long)]
        strip_verse_references: bool,
    },
    /// The King James Bible from Debian's bible-kjv package (`bible -f RANGE`,
    /// verse references stripped), tokenised as `prep text` does.
    Kjv {
        /// Output folder.
        #[arg(long, default_value = "data/kjv")]
        out: PathBuf,
        /// Verses to take: the whole Bible (gen1:1-rev22:21), the Old Testament
        /// (gen1:1-mal4:6), the New (mat1:1-rev22:21), or any `bible` range.
        #[arg(long, default_value = text::KJV_WHOLE)]
        range: String,
        #[command(flatten)]
        split: TextSplitArgs,
    },
}

#[derive(Args)]
pub struct TextSplitArgs {
    /// Fraction of the text (its end, cut at a line) kept for validation.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StorageArg {
    /// Raw pixels: fastest to load, largest.
    Raw,
    /// JPEG at --jpeg-quality: smallest, slowest to load.
    Jpeg,
    /// JPEG with probability --compress-probability, else raw (ffcv's recipe).
    Mixed,
}

/// ffcv-imagenet's ImageNet files (its README, "Dataset setup"): mixed
/// storage at JPEG quality 90, as its `write_imagenet.sh 500 0.50 90`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// ResNet-18's: 400 px longest side, 10% of images JPEG.
    Rn18,
    /// ResNet-50's: 500 px longest side, 50% of images JPEG.
    Rn50,
}

impl Preset {
    fn max_side(self) -> u32 {
        match self {
            Preset::Rn18 => 400,
            Preset::Rn50 => 500,
        }
    }

    fn compress_probability(self) -> f64 {
        match self {
            Preset::Rn18 => 0.1,
            Preset::Rn50 => 0.5,
        }
    }
}

#[derive(Args)]
pub struct PrepArgs {
    /// ffcv-imagenet's settings for a ResNet-18 (400 px, 10% JPEG) or a
    /// ResNet-50 (500 px, 50% JPEG), JPEG quality 90; replaces --max-side,
    /// --storage, --compress-probability and --jpeg-quality.
    #[arg(long, value_enum,
          conflicts_with_all = ["max_side", "storage", "compress_probability", "jpeg_quality"])]
    preset: Option<Preset>,
    /// Images whose longer side exceeds this are downscaled to it (0: keep sizes).
    #[arg(long, default_value_t = data_prep::prep::DEFAULT_MAX_SIDE)]
    max_side: u32,
    /// How images are stored.
    #[arg(long, value_enum, default_value_t = StorageArg::Mixed)]
    storage: StorageArg,
    /// Fraction of images stored as JPEG with --storage mixed.
    #[arg(long, default_value_t = data_prep::prep::DEFAULT_COMPRESS_PROBABILITY)]
    compress_probability: f64,
    /// Quality (1-100) of stored JPEGs.
    #[arg(long, default_value_t = data_prep::prep::DEFAULT_JPEG_QUALITY)]
    jpeg_quality: u8,
    /// Seed of the per-image compress draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images whose header claims more pixels than this are skipped as bad
    /// files (as a corrupt one is), never decoded: a decompression bomb of a
    /// few hundred bytes can claim gigabytes.
    #[arg(long, default_value_t = data_prep::prep::DEFAULT_MAX_PIXELS,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_pixels: u64,
    /// Fail (writing no dataset file) if any file cannot be converted.
    #[arg(long)]
    strict: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl PrepArgs {
    fn options(&self) -> PrepOptions {
        let (max_side, storage, jpeg_quality) = match self.preset {
            Some(preset) => (
                Some(preset.max_side()),
                Storage::Mixed {
                    compress_probability: preset.compress_probability(),
                },
                90,
            ),
            None => (
                (self.max_side > 0).then_some(self.max_side),
                match self.storage {
                    StorageArg::Raw => Storage::Raw,
                    StorageArg::Jpeg => Storage::Jpeg,
                    StorageArg::Mixed => Storage::Mixed {
                        compress_probability: self.compress_probability,
                    },
                },
                self.jpeg_quality,
            ),
        };
        PrepOptions {
            max_side,
            storage,
            jpeg_quality,
            seed: self.seed,
            max_pixels: self.max_pixels,
            strict: self.strict,
            threads: self.threads,
            progress: !self.json,
        }
    }
}

pub fn run(command: PrepCommand) -> anyhow::Result<()> {
    let (summary, json) = match command {
        PrepCommand::Text {
            src,
            out,
            split,
            strip_verse_references,
        } => {
            let text = read_text(&src)?;
            let text = if strip_verse_references {
                text::strip_verse_references(&text)
            } else {
                text
            };
            let source = format!(
                "{}{}",
                src.display(),
                if strip_verse_references {
                    ", verse references stripped"
                } else {
                    ""
                }
            );
            return prep_tokens(&text, &source, &out, split.val_fraction);
        }
        PrepCommand::Kjv { out, range, split } => {
            let text = text::kjv_text(&range)?;
            let source = text::kjv_provenance(&range);
            return prep_tokens(&text, &source, &out, split.val_fraction);
        }
        PrepCommand::Imagenet {
            src,
            out,
            val_dir,
            val_labels,
            options,
        } => {
            let val = ImagenetVal {
                dir: val_dir,
                labels: val_labels,
            };
            let summary = data_prep::prep_imagenet(&src, &out, &val, &options.options())
                .with_context(|| format!("prep imagenet from {}", src.display()))?;
            if summary.splits.len() == 1 {
                eprintln!(
                    "note: no val/ folder in {}; wrote the train split only",
                    src.display()
                );
            }
            (summary, options.json)
        }
        PrepCommand::Folder {
            src,
            out,
            split,
            options,
        } => {
            let summary = data_prep::prep_image_folder(&src, &out, &split, &options.options())
                .with_context(|| format!("prep folder {}", src.display()))?;
            (summary, options.json)
        }
        PrepCommand::FashionMnist { src, out } => {
            let summary = data_prep::prep_fashion_mnist(&src, &out)
                .with_context(|| format!("prep fashion-mnist from {}", src.display()))?;
            (summary, false)
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn read_text(src: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    if src == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input as UTF-8 text")?;
    } else {
        text = std::fs::read_to_string(src)
            .with_context(|| format!("cannot read {} as UTF-8 text", src.display()))?;
    }
    Ok(text)
}

fn prep_tokens(text: &str, source: &str, out: &Path, val_fraction: f64) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let meta = text::prep_text(text, source, out, val_fraction)
        .with_context(|| format!("prep text into {}", out.display()))?;
    println!(
        "{}: {} bytes -> {} train + {} val tokens ({}) in {:.1} s\n  -> {}",
        meta.source,
        meta.text_bytes,
        meta.train_tokens,
        meta.val_tokens,
        meta.tokenizer,
        start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

fn print_summary(summary: &PrepSummary) {
    for split in &summary.splits {
        for skipped in &split.skipped {
            println!("  skipped {}: {}", skipped.path.display(), skipped.reason);
        }
        for warning in &split.warnings {
            println!("  warning {}: {}", warning.path.display(), warning.reason);
        }
        for repeat in &split.repeats {
            println!("  repeat {}: {}", repeat.path.display(), repeat.reason);
        }
        let per_cpu = split
            .files_per_cpu_second()
            .map(|rate| format!(", {rate:.0}/CPU-s"))
            .unwrap_or_default();
        println!(
            "{}: {} files found = {} written ({} raw, {} JPEG) + {} skipped; {} warnings; \
             {} repeats through symbolic links skipped; {:.1} MB in {:.1} s ({:.0} images/s{per_cpu})\n  -> {}\n  manifest {}",
            split.split,
            split.files_found,
            split.written,
            split.raw_records,
            split.jpeg_records,
            split.skipped.len(),
            split.warnings.len(),
            split.repeats.len(),
            split.bytes as f64 / 1e6,
            split.seconds,
            split.files_per_second(),
            split.output.display(),
            split.manifest.display(),
        );
    }
    println!("classes: {}", summary.classes_file.display());
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        prep: PrepArgs,
    }

    fn options(args: &[&str]) -> Result<PrepOptions, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("prep").chain(args.iter().copied()))?;
        Ok(cli.prep.options())
    }

    #[test]
    fn presets_are_ffcvs_data_settings() {
        let mixed = |p| Storage::Mixed {
            compress_probability: p,
        };
        let rn18 = options(&["--preset", "rn18"]).unwrap();
        assert_eq!(
            (rn18.max_side, rn18.storage, rn18.jpeg_quality),
            (Some(400), mixed(0.1), 90)
        );
        let rn50 = options(&["--preset", "rn50", "--seed", "3"]).unwrap();
        assert_eq!(
            (rn50.max_side, rn50.storage, rn50.jpeg_quality, rn50.seed),
            (Some(500), mixed(0.5), 90, 3)
        );
        // Without a preset, the flags (and their defaults) apply.
        let plain = options(&["--max-side", "320", "--jpeg-quality", "80"]).unwrap();
        assert_eq!((plain.max_side, plain.jpeg_quality), (Some(320), 80));
    }

    #[test]
    fn a_preset_refuses_the_flags_it_sets() {
        for flag in [
            ["--max-side", "256"],
            ["--jpeg-quality", "95"],
            ["--storage", "raw"],
            ["--compress-probability", "0.2"],
        ] {
            let args = [&["--preset", "rn18"][..], &flag[..]].concat();
            let error = options(&args).expect_err("a conflict").to_string();
            assert!(
                error.contains("--preset") && error.contains(flag[0]),
                "{error}"
            );
        }
    }
}
