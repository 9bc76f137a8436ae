//! `topotrain`: train, inspect and analyse topographic vision models (TopoNets).
//!
//! Each subcommand lives in its own module; `main` only parses arguments and
//! turns errors into a readable message and a non-zero exit code.

use clap::{Parser, Subcommand};

mod activations;
mod analyze;
mod backend;
mod bench;
mod bench_topoloss;
mod bench_train;
mod eval;
mod export;
mod finetune;
mod fit;
mod inspect;
mod plot;
mod prep;
mod signals;
mod sweep;
mod threads;

/// `--version`: the version and the GPU backends built in.
fn version() -> &'static str {
    let backends = [
        ("cpu", true),
        ("cuda (autotuned)", cfg!(feature = "cuda")),
        (
            "cuda (untuned)",
            cfg!(all(feature = "cuda-untuned", not(feature = "cuda"))),
        ),
        ("wgpu", cfg!(feature = "wgpu")),
    ];
    let built: Vec<&str> = backends.iter().filter(|b| b.1).map(|b| b.0).collect();
    let text = format!(
        "{} (backends: {})",
        env!("CARGO_PKG_VERSION"),
        built.join(", ")
    );
    // Built once, when the command line is parsed.
    Box::leak(text.into_boxed_str())
}

#[derive(Parser)]
#[command(
    name = "topotrain",
    version = version(),
    about = "Train and analyse topographic (TopoNets) vision models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a dataset (ImageNet, an image folder, Fashion-MNIST) into topotrain's memory-mapped format.
    #[command(subcommand)]
    Prep(prep::PrepCommand),
    /// Micro-benchmarks printing JSON (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Train a run from its TOML config (resumable).
    Fit(fit::FitArgs),
    /// Top-1/top-5 of a checkpoint (ours or PyTorch) on a validation set.
    Eval(eval::EvalArgs),
    /// One run per tau from a base config, then a results table.
    Sweep(sweep::SweepArgs),
    /// Each topographic layer's sheet and TopoLoss (tau = 1) in a checkpoint.
    Inspect(inspect::InspectArgs),
    /// Write any checkpoint as a PyTorch state dict (safetensors, torchvision or NanoGPT names).
    Export(export::ExportArgs),
    /// Save the outputs of named modules of a checkpoint on an input batch (eval mode).
    Activations(activations::ActivationsArgs),
    /// LoRA fine-tuning of a GPT checkpoint (base weights frozen).
    Finetune(finetune::FinetuneArgs),
    /// A run's training curves (loss, accuracy, TopoLoss, learning rate) as PNG and SVG.
    Plot(plot::PlotArgs),
    /// Analyses of a checkpoint: sheets, smoothness, dimensionality, selectivity, pruning, sweep report.
    Analyze(analyze::AnalyzeArgs),
}

// mimalloc keeps freed memory for reuse: with glibc's allocator, the CPU
// backend's large per-step buffers came back from the kernel as fresh
// zero-filled pages every step (page faults were ~10% of a CPU step).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the value in its C enum, v2 and v3
/// alike; libmimalloc-sys names only some options).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    die_quietly_on_a_closed_stdout();
    keep_freed_memory();
    let cli = Cli::parse();
    let old_variable = std::env::var("TOPOTRAIN_CONV_KERNELS").ok();
    let result = backend::refuse_old_kernel_variable(old_variable.as_deref()).and_then(|()| {
        match cli.command {
            Command::Prep(cmd) => prep::run(cmd),
            Command::Bench(cmd) => bench::run(cmd),
            Command::Fit(args) => fit::run(args),
            Command::Eval(args) => eval::run(args),
            Command::Sweep(args) => sweep::run(args),
            Command::Inspect(args) => inspect::run(args),
            Command::Export(args) => export::run(args),
            Command::Activations(args) => activations::run(args),
            Command::Finetune(args) => finetune::run(args),
            Command::Analyze(cmd) => analyze::run(cmd),
            Command::Plot(args) => plot::run(args),
        }
    });
    if let Err(error) = result {
        if let Some(stopped) = error.downcast_ref::<trainer::engine::Interrupted>() {
            eprintln!("{stopped}");
            std::process::exit(signals::exit_code(stopped.reason));
        }
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// Stops mimalloc from giving freed memory back to the system. By default
/// it does so a second after a free; a training step frees and allocates the
/// same large buffers (weight gradients, activations) step after step, and
/// each one given back came back as fresh pages the kernel had to zero
/// (5-15% of a ResNet-18 CPU step at batch 8, 64 px, in BENCHMARKS.md).
/// The process keeps its peak, which training reaches every step anyway.
fn keep_freed_memory() {
    // SAFETY: sets one of mimalloc's integer options to one of its
    // documented values (-1: never purge).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// `topotrain ... | head` ends topotrain when `head` has read enough, as
/// it ends other command-line tools, instead of panicking in `println!`
/// (Rust starts programs with SIGPIPE ignored). Sockets are unaffected:
/// the standard library sends with MSG_NOSIGNAL.
fn die_quietly_on_a_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: runs first in main, before any other thread exists, and only
    // restores the signal's default disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_lists_the_backends_built_in() {
        let text = version();
        assert!(text.starts_with(env!("CARGO_PKG_VERSION")), "{text}");
        assert!(text.contains("backends: cpu"), "{text}");
        assert_eq!(text.contains("wgpu"), cfg!(feature = "wgpu"), "{text}");
        assert_eq!(
            text.contains("cuda"),
            cfg!(feature = "cuda-untuned"),
            "{text}"
        );
    }

    /// The option set is the purge delay: its default (1000 ms in mimalloc
    /// v3) until set, then -1. Another option at 15 would not start there.
    #[test]
    fn the_purge_delay_is_the_option_set() {
        // SAFETY: reads and sets mimalloc's integer options.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(before, 1000);
        }
        keep_freed_memory();
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            -1
        );
    }
}
