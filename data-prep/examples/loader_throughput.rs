//! Preps an ImageNet-layout tree with several storage settings and measures the
//! loader (train pipeline) and prep throughput on one thread each, without the
//! Burn-based `topotrain` binary:
//!
//! `cargo run --release -p data-prep --example loader_throughput -- SRC [RES]`

use data_prep::{
    measure_loader_throughput, prep_imagenet, Dataset, ImagenetVal, LoaderConfig, PrepOptions,
    Storage,
};
use std::path::PathBuf;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let src = PathBuf::from(args.next().ok_or("usage: loader_throughput SRC [RES]")?);
    let resolution: usize = args.next().map_or(Ok(176), |r| r.parse())?;
    let mixed = Storage::Mixed {
        compress_probability: 0.5,
    };
    // (max side, storage name, storage, DCT-domain reduced decoding)
    let settings = [
        (256, "raw", Storage::Raw, true),
        (256, "mixed-0.5", mixed, true),
        (256, "jpeg", Storage::Jpeg, true),
        (512, "jpeg", Storage::Jpeg, true),
        (512, "jpeg", Storage::Jpeg, false),
    ];
    for (max_side, name, storage, dct_scaling) in settings {
        let out = tempdir()?;
        let options = PrepOptions {
            max_side: Some(max_side),
            storage,
            threads: Some(1),
            progress: false,
            ..PrepOptions::default()
        };
        let summary = prep_imagenet(&src, &out, &ImagenetVal::default(), &options)?;
        let train = &summary.splits[0];
        let dataset = Arc::new(Dataset::open(out.join("train.topo"))?);
        let mut config = LoaderConfig::train(64, resolution);
        config.threads = 1;
        config.dct_scaling = dct_scaling;
        let throughput = measure_loader_throughput(dataset, config, 3000)?;
        println!(
            "max_side {max_side} {name:>9} dct_scaling {dct_scaling:5}: prep {:.0} img/s ({:.0} per CPU-s), {:.1} KB/img, loader {:.0} img/s ({:.0} per CPU-s)",
            train.files_per_second(),
            train.files_per_cpu_second().unwrap_or(f64::NAN),
            train.bytes as f64 / train.written as f64 / 1000.0,
            throughput.img_per_s,
            throughput.img_per_cpu_s.unwrap_or(f64::NAN),
        );
        std::fs::remove_dir_all(&out)?;
    }
    Ok(())
}

fn tempdir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("loader-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
