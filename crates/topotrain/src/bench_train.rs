//! `topotrain bench train`: seconds per training step on random data.

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use models::topography::{TopoEngine, TopographyConfig};
use trainer::bench::{BenchSetup, BenchTopography, TrainBench};

use crate::backend::{run_on, BackendJob, DeviceChoice};

#[derive(Args)]
pub struct BenchTrainArgs {
    /// resnet18, resnet50 or vit_b_32.
    #[arg(long, default_value = "resnet18")]
    pub arch: String,
    #[arg(long = "batch-size", alias = "batch", default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub res: usize,
    #[arg(long, default_value_t = 1000)]
    pub num_classes: usize,
    /// ResNet base width (torchvision: 64).
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub small_stem: bool,
    #[arg(long)]
    pub blurpool: bool,
    #[arg(long, default_value_t = 3)]
    pub in_channels: usize,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// f32, or bf16 convolutions, linear layers and matrix products over
    /// f32 weights (autocast-style mixed precision).
    #[arg(long, default_value = "f32")]
    pub precision: models::Precision,
    /// Convolution kernels: direct, implicit-gemm (tensor cores on CUDA;
    /// experimental) or burn (Burn's own, for comparison).
    #[arg(long, default_value = "direct")]
    pub conv_kernels: models::ConvChoice,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Add TopoLoss at this tau to every Conv2d/Linear layer matched by
    /// --topo-layers (as training does); leave out for a plain step.
    #[arg(long)]
    pub topo_tau: Option<f64>,
    /// Layer patterns for --topo-tau (default: every convolution of a ResNet).
    #[arg(long, value_delimiter = ',', default_value = "conv1,layer*.**")]
    pub topo_layers: Vec<String>,
    /// Blur factor for --topo-tau.
    #[arg(long, default_value_t = 3.0)]
    pub topo_factor: f64,
    /// Where TopoLoss runs: host (CPU kernel), device (tensor ops on the
    /// model's device) or auto (host on the CPU, device on a GPU).
    #[arg(long, default_value = "auto")]
    pub topo_engine: TopoEngine,
    /// Print only `{"sec_per_step": ...}` and the other fields as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchTrainArgs) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    trainer::config::check_resolution("--res", args.res)?;
    trainer::device::set_cpu_threads(args.threads);
    let mut architecture = models::Architecture::from_name(&args.arch, args.num_classes)?;
    match &mut architecture {
        models::Architecture::ResNet(c) => {
            c.blurpool = args.blurpool;
            c.small_stem = args.small_stem;
            c.in_channels = args.in_channels;
            if let Some(w) = args.width {
                c.width = w;
            }
        }
        models::Architecture::Vit(c) => {
            c.in_channels = args.in_channels;
            c.image_size = args.res;
        }
    }
    let topography = args.topo_tau.map(|tau| BenchTopography {
        config: TopographyConfig::uniform(&args.topo_layers, args.topo_factor, tau),
        engine: args.topo_engine.resolve(!args.device.is_cpu()),
    });
    let result = run_on(
        args.device,
        TrainStep {
            architecture: &architecture,
            args: &args,
            topography: topography.as_ref(),
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{} ({}): batch {} at {} px, {} TopoLoss layers, {} threads: first step {:.2} s, {:.4} s/step best, {:.4} median ({:.1} img/s)",
            result.arch,
            result.precision,
            result.batch,
            result.res,
            result.topo_layers,
            result.threads,
            result.first_step_s,
            result.sec_per_step,
            result.median_sec_per_step,
            result.images_per_sec
        );
    }
    Ok(())
}

struct TrainStep<'a> {
    architecture: &'a models::Architecture,
    args: &'a BenchTrainArgs,
    topography: Option<&'a BenchTopography>,
}

impl BackendJob for TrainStep<'_> {
    type Output = TrainBench;
    fn run<B: AutodiffBackend>(self, device: B::Device, _: DeviceChoice) -> Result<Self::Output> {
        let a = self.args;
        let setup = BenchSetup {
            architecture: self.architecture,
            batch: a.batch,
            res: a.res,
            warmup: a.warmup,
            steps: a.steps,
            compute: models::Compute {
                precision: a.precision,
                conv_kernels: a.conv_kernels,
            },
            topography: self.topography,
        };
        trainer::bench::time_train_step::<B>(&setup, &device)
    }
}
