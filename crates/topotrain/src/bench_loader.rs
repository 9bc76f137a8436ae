//! `topotrain bench loader`: images per second of the data-prep loader's train
//! pipeline (RandomResizedCrop + flip to NCHW u8) on a prepped dataset.

use anyhow::Context;
use clap::Args;
use data_prep::{measure_loader_throughput, Dataset, LoaderConfig};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct BenchLoaderArgs {
    /// A prepped folder (its train.topo is used) or a .topo file.
    #[arg(long)]
    data: PathBuf,
    /// Output resolution.
    #[arg(long, default_value_t = 176)]
    res: usize,
    /// Decoding threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Images to time (after one warm-up batch); epochs repeat as needed.
    #[arg(long, default_value_t = 5000)]
    images: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchLoaderArgs) -> anyhow::Result<()> {
    let path = if args.data.is_dir() {
        args.data.join("train.topo")
    } else {
        args.data.clone()
    };
    let dataset = Arc::new(
        Dataset::open(&path).with_context(|| format!("bench loader on {}", path.display()))?,
    );
    let mut config = LoaderConfig::train(args.batch_size, args.res);
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    let threads = config.threads;
    let result = measure_loader_throughput(Arc::clone(&dataset), config, args.images)?;
    if args.json {
        let report = serde_json::json!({
            "img_per_s": result.img_per_s,
            "img_per_cpu_s": result.img_per_cpu_s,
            "images": result.images,
            "seconds": result.seconds,
            "threads": threads,
            "res": args.res,
            "batch_size": args.batch_size,
            "data": path,
        });
        println!("{report}");
    } else {
        println!(
            "{:.0} images/s ({} images in {:.2} s, {threads} threads, res {}) from {}",
            result.img_per_s,
            result.images,
            result.seconds,
            args.res,
            path.display()
        );
    }
    Ok(())
}
