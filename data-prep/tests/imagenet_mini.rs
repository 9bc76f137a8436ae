//! End-to-end prep of the shared ImageNet-mini tree, including its broken files.

mod common;

use data_prep::{prep_imagenet, DataError, Dataset, ImagenetVal, PrepOptions, Storage};
use std::collections::BTreeSet;
use std::path::Path;

fn options(storage: Storage, max_side: Option<u32>) -> PrepOptions {
    PrepOptions {
        max_side,
        storage,
        progress: false,
        threads: Some(2),
        ..PrepOptions::default()
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn prep_converts_train_and_val_with_sorted_wnids() {
    let src = common::imagenet_mini();
    let out = tempfile::tempdir().unwrap();
    let summary = prep_imagenet(
        &src,
        out.path(),
        &ImagenetVal::default(),
        &PrepOptions {
            progress: false,
            ..PrepOptions::default()
        },
    )
    .unwrap();
    assert_eq!(summary.splits.len(), 2);
    let mut wnids: Vec<String> = std::fs::read_dir(src.join("train"))
        .unwrap()
        .map(|e| file_name(&e.unwrap().path()))
        .collect();
    wnids.sort();
    let classes_txt = std::fs::read_to_string(&summary.classes_file).unwrap();
    assert_eq!(classes_txt.lines().collect::<Vec<_>>(), wnids);
    for (split, dir) in [("train", "train"), ("val", "val")] {
        let s = summary.splits.iter().find(|s| s.split == split).unwrap();
        assert_eq!(
            s.files_found,
            common::count_files(&src.join(dir)),
            "{split}"
        );
        assert_eq!(s.written + s.skipped.len(), s.files_found);
        assert_eq!(s.raw_records + s.jpeg_records, s.written);
        let dataset = Dataset::open(&s.output).unwrap();
        assert_eq!(dataset.len(), s.written);
        assert_eq!(dataset.class_names(), wnids.as_slice());
        assert_eq!(dataset.channels(), 3);
        for i in 0..dataset.len() {
            let image = dataset.decode(i).unwrap();
            assert!(image.width.max(image.height) <= data_prep::prep::DEFAULT_MAX_SIDE);
        }
    }
    // The default mixes raw and JPEG records.
    let train = &summary.splits[0];
    assert!(train.raw_records > 0 && train.jpeg_records > 0);
}

#[test]
fn broken_files_are_listed_skipped_and_counted() {
    let src = common::imagenet_mini();
    let broken = src.join("broken");
    let out = tempfile::tempdir().unwrap();
    let summary = prep_imagenet(
        &broken,
        out.path(),
        &ImagenetVal::default(),
        &options(Storage::Raw, None),
    )
    .unwrap();
    let train = &summary.splits[0];
    assert_eq!(
        train.files_found,
        common::count_files(&broken.join("train"))
    );
    assert_eq!(train.written + train.skipped.len(), train.files_found);
    let skipped: BTreeSet<String> = train.skipped.iter().map(|s| file_name(&s.path)).collect();
    let expected: BTreeSet<String> = [
        "README.txt",
        "n02102040_empty.JPEG",
        "n02102040_noise.JPEG",
        "n02102040_truncated.JPEG",
    ]
    .map(String::from)
    .into();
    assert_eq!(skipped, expected);
    for s in &train.skipped {
        assert!(!s.reason.is_empty());
    }
    let reason_of = |name: &str| {
        &train
            .skipped
            .iter()
            .find(|s| file_name(&s.path) == name)
            .unwrap()
            .reason
    };
    assert!(reason_of("n02102040_truncated.JPEG").contains("truncated"));
    assert!(reason_of("n02102040_empty.JPEG").contains("empty"));

    // The manifest records the same.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&train.manifest).unwrap()).unwrap();
    assert_eq!(manifest["files_found"], train.files_found);
    assert_eq!(manifest["skipped"].as_array().unwrap().len(), 4);

    // Records follow the sorted file order minus the skipped files.
    let mut files = Vec::new();
    for class in ["n01440764", "n02102040", "n02979186", "n03000684"] {
        let mut names: Vec<String> = std::fs::read_dir(broken.join("train").join(class))
            .unwrap()
            .map(|e| file_name(&e.unwrap().path()))
            .collect();
        names.sort();
        files.extend(names.into_iter().filter(|n| !expected.contains(n)));
    }
    let dataset = Dataset::open(&train.output).unwrap();
    assert_eq!(dataset.len(), files.len());
    let record_of = |name: &str| files.iter().position(|f| f == name).unwrap();

    // EXIF orientation 6 (rotate 90) turns the 300x200 file into 200x300.
    let exif = dataset.decode(record_of("n01440764_exif.JPEG")).unwrap();
    assert_eq!((exif.width, exif.height), (200, 300));
    // Greyscale comes out as RGB with equal channels.
    let grey = dataset.decode(record_of("n01440764_grey.JPEG")).unwrap();
    assert_eq!(grey.channels, 3);
    assert!(grey.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    // CMYK comes out as RGB, not as inverted or 4-channel data: it matches the
    // same file decoded by `image` (which converts through zune-jpeg's CMYK path)
    // and has colour.
    let cmyk = dataset.decode(record_of("n01440764_cmyk.JPEG")).unwrap();
    let reference = image::open(broken.join("train/n01440764/n01440764_cmyk.JPEG"))
        .unwrap()
        .into_rgb8();
    assert_eq!((cmyk.width, cmyk.height), reference.dimensions());
    assert_eq!(cmyk.data, reference.into_raw());
    // The PNG named .JPEG and the tiny and huge files are kept at their size.
    let png = dataset.decode(record_of("n01440764_png.JPEG")).unwrap();
    assert_eq!((png.width, png.height), (400, 536));
    let tiny = dataset.decode(record_of("n01440764_tiny.JPEG")).unwrap();
    assert_eq!((tiny.width, tiny.height), (8, 6));
    let large = dataset.decode(record_of("n01440764_large.JPEG")).unwrap();
    assert_eq!((large.width, large.height), (3000, 2200));
}

#[test]
fn large_images_are_downscaled_to_max_side() {
    let src = common::imagenet_mini();
    let out = tempfile::tempdir().unwrap();
    let summary = prep_imagenet(
        &src.join("broken"),
        out.path(),
        &ImagenetVal::default(),
        &options(Storage::Jpeg, Some(200)),
    )
    .unwrap();
    let dataset = Dataset::open(&summary.splits[0].output).unwrap();
    let sizes: Vec<(u32, u32)> = (0..dataset.len())
        .map(|i| dataset.decode(i).map(|p| (p.width, p.height)).unwrap())
        .collect();
    assert!(sizes.iter().all(|&(w, h)| w.max(h) <= 200));
    // 3000x2200 becomes 200x147; the 8x6 file is untouched.
    assert!(sizes.contains(&(200, 147)));
    assert!(sizes.contains(&(8, 6)));
    assert_eq!(summary.splits[0].jpeg_records, dataset.len());
}

#[test]
fn strict_mode_fails_and_leaves_no_dataset_file() {
    let src = common::imagenet_mini();
    let out = tempfile::tempdir().unwrap();
    let strict = PrepOptions {
        strict: true,
        ..options(Storage::Raw, Some(64))
    };
    let error = prep_imagenet(
        &src.join("broken"),
        out.path(),
        &ImagenetVal::default(),
        &strict,
    )
    .unwrap_err();
    match &error {
        DataError::StrictFailures {
            count, manifest, ..
        } => {
            assert_eq!(*count, 4);
            assert!(manifest.is_file());
        }
        other => panic!("expected StrictFailures, got {other}"),
    }
    assert!(error.to_string().contains("--strict"));
    let left: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| file_name(&e.unwrap().path()))
        .collect();
    assert!(
        left.iter()
            .all(|name| !name.ends_with(".topo") && !name.ends_with(".partial")),
        "{left:?}"
    );
}

#[test]
fn flat_val_with_loc_solution_gets_the_class_folder_labels() {
    let src = common::imagenet_mini();
    let classes: Vec<String> = data_prep::sources::scan_image_folder(&src.join("train"), None)
        .unwrap()
        .classes;
    let folders = data_prep::sources::scan_image_folder(&src.join("val"), Some(&classes)).unwrap();
    let labels_file = data_prep::sources::find_val_labels(&src.join("val_flat"), &src).unwrap();
    assert_eq!(file_name(&labels_file), "LOC_val_solution.csv");
    let flat =
        data_prep::sources::scan_flat_val(&src.join("val_flat"), &labels_file, &classes).unwrap();
    let by_name = |files: &[(std::path::PathBuf, u32)]| {
        files
            .iter()
            .map(|(p, l)| (file_name(p), *l))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(by_name(&flat.files), by_name(&folders.files));
    assert!(flat.unlabeled.is_empty());

    let out = tempfile::tempdir().unwrap();
    let val = ImagenetVal {
        dir: Some(src.join("val_flat")),
        labels: None,
    };
    let summary = prep_imagenet(&src, out.path(), &val, &options(Storage::Jpeg, Some(64))).unwrap();
    let val_split = summary.splits.iter().find(|s| s.split == "val").unwrap();
    assert_eq!(val_split.written, flat.files.len());
}
