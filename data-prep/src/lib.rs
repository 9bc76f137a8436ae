//! `data-prep`: image datasets for topotrain in one memory-mapped file per split,
//! in the spirit of ffcv, and a fast deterministic batch loader; token
//! datasets for language models in [`text`].
//!
//! # Writing (`topotrain prep`)
//!
//! [`prep_imagenet`], [`prep_image_folder`] and [`prep_fashion_mnist`] convert a
//! source tree into `<out>/<split>.topo`, `<out>/<split>.manifest.json` (skipped
//! files with reasons, warnings, counts, options) and `<out>/classes.txt` (one
//! class per line; line number = label; ImageNet: sorted wnids as torchvision's
//! `ImageFolder`). Every source file is decoded whatever its content (CMYK and
//! greyscale JPEG, PNG named `.JPEG`), converted to RGB with EXIF orientation
//! applied, downscaled to [`PrepOptions::max_side`], and stored raw or as JPEG
//! ([`Storage`]). Files that cannot be decoded, or whose header claims more
//! than [`PrepOptions::max_pixels`], are listed, counted and skipped (or, with
//! [`PrepOptions::strict`], fail the run). Symbolic links are followed, but
//! each folder and file is converted once (by canonical path); the paths a
//! link led back to are listed as `repeats`. Writes go to
//! `<split>.topo.partial` and are renamed at the end, header last.
//!
//! # Reading
//!
//! ```no_run
//! use data_prep::{Dataset, Loader, LoaderConfig};
//! use std::sync::Arc;
//!
//! let dataset = Arc::new(Dataset::open("data/imagenet/train.topo")?);
//! println!("{} images, {} classes", dataset.len(), dataset.num_classes());
//! let first = dataset.decode(0)?; // interleaved pixels, exact for raw records
//!
//! let mut config = LoaderConfig::train(256, 176);
//! config.seed = 1;
//! config.epoch = 3;
//! config.rank = 0;
//! config.world_size = 1;
//! config.start_batch = 10; // resume mid-epoch
//! for batch in Loader::new(Arc::clone(&dataset), config)? {
//!     let batch = batch?; // NCHW u8 in batch.images, labels in batch.labels
//!     # let _ = batch;
//! }
//! # Ok::<(), data_prep::DataError>(())
//! ```
//!
//! A [`Loader`] yields `Result<`[`Batch`]`>`s for one epoch of one rank. The
//! order (a seeded O(1)-memory permutation for training, file order for
//! validation), each image's crop and flip depend only on `(seed, epoch,
//! position)`, so batches are identical whatever `threads` is, and batch `k` is
//! the same whether the epoch started at 0 or at `start_batch = k`. Images are
//! unnormalised `u8`; normalise on the device. Train pipeline: torchvision's
//! RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) + flip; val pipeline: ffcv's
//! centre crop (ratio 224/256) resized to the resolution. Crop and resize are
//! fused (antialiased bilinear, PIL-like) and write planar output directly.
//!
//! # File format
//!
//! See [`format`]: a 128-byte header (magic `TOPODSET`, version, channels,
//! counts, section offsets, total length, CRC-32 of the index and of the header),
//! the record payloads, a 32-byte index entry per record, and the class list as
//! JSON. [`Dataset::open`] refuses foreign, truncated or corrupted files with a
//! message naming the file and what to do.

pub mod codec;
pub mod dataset;
pub mod error;
pub mod format;
pub mod loader;
pub mod prep;
pub mod resample;
pub mod sources;
pub mod text;
pub mod transform;
pub mod writer;

pub use codec::Pixels;
pub use dataset::{Dataset, Record};
pub use error::{DataError, Result};
pub use format::Encoding;
pub use loader::{
    measure_loader_throughput, Batch, EpochPlan, Loader, LoaderConfig, Pipeline, Throughput,
    TrainAugment, ValCrop, ValTransform,
};
pub use prep::{
    prep_fashion_mnist, prep_image_folder, prep_imagenet, write_split, ImagenetVal, PrepOptions,
    PrepSummary, SplitSummary, Storage, FASHION_MNIST_DEFAULT_DIR,
};
pub use sources::SkippedFile;
pub use transform::RandomResizedCrop;
