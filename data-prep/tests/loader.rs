//! The loader end to end: determinism, resuming, sharding, pipelines and
//! Fashion-MNIST at native resolution.

mod common;

use data_prep::{
    prep_fashion_mnist, prep_image_folder, Batch, Dataset, Loader, LoaderConfig, Pipeline,
    PrepOptions, Storage, ValCrop,
};
use std::path::Path;
use std::sync::Arc;

fn mixed_dataset(dir: &Path) -> Arc<Dataset> {
    common::write_png_folder(&dir.join("src"), &["a", "b", "c"], 9);
    let options = PrepOptions {
        max_side: Some(40),
        storage: Storage::Mixed {
            compress_probability: 0.5,
        },
        progress: false,
        ..PrepOptions::default()
    };
    let summary = prep_image_folder(&dir.join("src"), &dir.join("out"), "train", &options).unwrap();
    assert!(summary.splits[0].raw_records > 0 && summary.splits[0].jpeg_records > 0);
    Arc::new(Dataset::open(&summary.splits[0].output).unwrap())
}

fn collect(dataset: &Arc<Dataset>, config: LoaderConfig) -> Vec<Batch> {
    Loader::new(Arc::clone(dataset), config)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn batches_do_not_depend_on_thread_count_and_resume_mid_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = mixed_dataset(dir.path());
    let mut config = LoaderConfig::train(5, 24);
    config.seed = 11;
    config.epoch = 2;
    config.threads = 1;
    let one_thread = collect(&dataset, config.clone());
    assert_eq!(one_thread.len(), 27 / 5);
    config.threads = 3;
    config.prefetch = 1;
    assert_eq!(collect(&dataset, config.clone()), one_thread);
    config.start_batch = 3;
    let resumed = collect(&dataset, config.clone());
    assert_eq!(resumed, one_thread[3..]);
    assert_eq!(resumed[0].index, 3);
    config.start_batch = 0;
    config.epoch = 3;
    let next_epoch = collect(&dataset, config);
    assert_ne!(next_epoch[0].images, one_thread[0].images);
    for batch in &one_thread {
        assert_eq!((batch.len, batch.channels, batch.resolution), (5, 3, 24));
        assert_eq!(batch.images.len(), 5 * 3 * 24 * 24);
        assert!(batch.labels.iter().all(|&l| l < 3));
    }
}

#[test]
fn train_epoch_visits_every_image_once_and_ranks_split_it() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = mixed_dataset(dir.path());
    let mut config = LoaderConfig::train(4, 8);
    config.drop_last = false;
    let labels: Vec<u32> = collect(&dataset, config.clone())
        .into_iter()
        .flat_map(|b| b.labels)
        .collect();
    let mut counts = [0; 3];
    labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [9, 9, 9]);
    // Not in file order.
    assert_ne!(labels, (0..27).map(|i| i / 9).collect::<Vec<u32>>());
    // Two ranks: 14 samples each (one padded), together every label count once more.
    config.world_size = 2;
    let mut counts = [0; 3];
    for rank in 0..2 {
        config.rank = rank;
        let batches = collect(&dataset, config.clone());
        assert_eq!(batches.iter().map(|b| b.len).sum::<usize>(), 14);
        batches
            .iter()
            .flat_map(|b| &b.labels)
            .for_each(|&l| counts[l as usize] += 1);
    }
    assert_eq!(counts.iter().sum::<usize>(), 28);
}

#[test]
fn dct_scaled_decoding_is_close_to_full_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("smooth")).unwrap();
    for i in 0..4u32 {
        let image = image::RgbImage::from_fn(240, 180, |x, y| {
            image::Rgb([(x + i * 9) as u8, (y * 2) as u8, ((x + y) / 2) as u8])
        });
        image
            .save(src.join("smooth").join(format!("{i}.png")))
            .unwrap();
    }
    let options = PrepOptions {
        max_side: None,
        storage: Storage::Jpeg,
        progress: false,
        ..PrepOptions::default()
    };
    let summary = prep_image_folder(&src, &dir.path().join("out"), "train", &options).unwrap();
    let dataset = Arc::new(Dataset::open(&summary.splits[0].output).unwrap());
    // Val centre crop of 180 px to 40 px: shrink 4.5, decoded at 1/4 scale.
    let mut config = LoaderConfig::val(4, 40);
    config.dct_scaling = false;
    let full = collect(&dataset, config.clone());
    config.dct_scaling = true;
    let reduced = collect(&dataset, config.clone());
    assert_ne!(
        full[0].images, reduced[0].images,
        "the reduced path was not taken"
    );
    let mean_abs_diff = full[0]
        .images
        .iter()
        .zip(&reduced[0].images)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
        .sum::<f64>()
        / full[0].images.len() as f64;
    assert!(mean_abs_diff < 3.0, "{mean_abs_diff}");
    config.threads = 2;
    assert_eq!(collect(&dataset, config), reduced);
}

#[test]
fn val_pipeline_keeps_order_and_centre_crops() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = mixed_dataset(dir.path());
    let config = LoaderConfig::val(10, 16);
    let batches = collect(&dataset, config);
    assert_eq!(
        batches.iter().map(|b| b.len).collect::<Vec<_>>(),
        [10, 10, 7]
    );
    let labels: Vec<u32> = batches.iter().flat_map(|b| b.labels.clone()).collect();
    assert_eq!(labels, (0..27).map(|i| i / 9).collect::<Vec<u32>>());
}

#[test]
fn fashion_mnist_val_at_native_resolution_returns_exact_pixels() {
    let src = tempfile::tempdir().unwrap();
    let (train_n, test_n) = (7u32, 5u32);
    for (prefix, n) in [("train", train_n), ("t10k", test_n)] {
        let pixels: Vec<u8> = (0..n * 28 * 28).map(|i| (i * 31 % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        common::write_idx_gz(
            &src.path().join(format!("{prefix}-images-idx3-ubyte.gz")),
            0x803,
            &[n, 28, 28],
            &pixels,
        );
        common::write_idx_gz(
            &src.path().join(format!("{prefix}-labels-idx1-ubyte.gz")),
            0x801,
            &[n],
            &labels,
        );
    }
    let out = tempfile::tempdir().unwrap();
    let summary = prep_fashion_mnist(src.path(), out.path()).unwrap();
    assert_eq!(
        summary.splits.iter().map(|s| s.written).collect::<Vec<_>>(),
        [7, 5]
    );
    let val = Arc::new(Dataset::open(out.path().join("val.topo")).unwrap());
    assert_eq!((val.channels(), val.num_classes()), (1, 10));
    let mut config = LoaderConfig::val(4, 28);
    config.pipeline = Pipeline::Val(ValCrop {
        crop_ratio: 1.0,
        ..Default::default()
    });
    let images: Vec<u8> = collect(&val, config)
        .into_iter()
        .flat_map(|b| b.images)
        .collect();
    let expected: Vec<u8> = (0..test_n * 28 * 28)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    assert_eq!(images, expected);
}

#[test]
fn installed_fashion_mnist_converts() {
    let src = Path::new(data_prep::FASHION_MNIST_DEFAULT_DIR);
    test_support::require_package(src, "dataset-fashion-mnist");
    let out = tempfile::tempdir().unwrap();
    let summary = prep_fashion_mnist(src, out.path()).unwrap();
    assert_eq!(
        summary.splits.iter().map(|s| s.written).collect::<Vec<_>>(),
        [60_000, 10_000]
    );
    let train = Dataset::open(out.path().join("train.topo")).unwrap();
    let image = train.decode(0).unwrap();
    assert_eq!((image.width, image.height, image.channels), (28, 28, 1));
}
