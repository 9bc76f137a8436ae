//! `topotrain bench topoloss`: forward + backward time of TopoLoss over all
//! Conv2d/Linear layers of a model, as training runs it (weights read from
//! the model, gradients added to the optimiser's gradients).

use std::time::Instant;

use anyhow::Result;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use models::topography::{TopoEngine, Topography, TopographyConfig};
use models::Architecture;

use crate::backend::{run_on, BackendJob, DeviceChoice};

#[derive(Args)]
pub struct BenchTopolossArgs {
    /// resnet18, resnet50 or vit_b_32.
    #[arg(long, default_value = "resnet18")]
    arch: String,
    /// cpu, cuda, cuda:N or wgpu.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// auto (host kernel on the CPU, tensor ops on a GPU), host or device.
    #[arg(long, default_value = "auto")]
    engine: TopoEngine,
    /// Blur factor (the paper: 3).
    #[arg(long, default_value_t = 3.0)]
    factor: f64,
    /// Timed repetitions after two warm-up runs.
    #[arg(long, default_value_t = 20)]
    repeats: usize,
    /// Print `{"ms": ...}` only.
    #[arg(long)]
    json: bool,
}

struct Job {
    args: BenchTopolossArgs,
}

impl BackendJob for Job {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device, choice: DeviceChoice) -> Result<()> {
        let args = self.args;
        let model = Architecture::from_name(&args.arch, 1000)?.init::<B>(&device)?;
        let config = TopographyConfig::uniform(&["**".to_string()], args.factor, 1.0);
        let topography = Topography::new(&model, &config)?;
        let engine = args.engine.resolve(!choice.is_cpu());
        let mut times = Vec::with_capacity(args.repeats);
        for run in 0..args.repeats.max(1) + 2 {
            let mut grads = GradientsParams::new();
            let start = Instant::now();
            // The report reads the losses back, which waits for the device.
            topography.add_to_gradients(&model, 0, engine, &mut grads)?;
            if run >= 2 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        if args.json {
            println!("{}", serde_json::json!({ "ms": median }));
        } else {
            println!(
                "TopoLoss forward+backward, {} layers of {} on {choice} ({engine:?} engine): median {median:.2} ms, best {:.2} ms over {} runs",
                topography.layers.len(),
                args.arch,
                times[0],
                times.len()
            );
        }
        Ok(())
    }
}

pub fn run(args: BenchTopolossArgs) -> Result<()> {
    run_on(args.device, Job { args })
}
