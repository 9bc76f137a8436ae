//! `topotrain export --checkpoint CKPT --out FILE.safetensors`: any checkpoint as
//! a PyTorch state dict, torchvision's names for ResNets and ViTs and
//! NanoGPT's for GPTs, which loads with `load_state_dict(strict=True)`.
//!
//! Safetensors only: burn-store 0.21 reads PyTorch pickles but cannot write
//! them (its `PytorchStore` refuses to save), and PyTorch reads safetensors
//! with `safetensors.torch.load_file`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use trainer::eval::{load_network, Network};

#[derive(Args)]
pub struct ExportArgs {
    /// A run directory (its latest checkpoint), one of its checkpoints (the
    /// folder or its model.mpk), a .safetensors or a PyTorch .pt.
    #[arg(long, required_unless_present = "checkpoint_path")]
    pub checkpoint: Option<PathBuf>,
    /// The checkpoint, given without --checkpoint.
    #[arg(hide = true, conflicts_with = "checkpoint")]
    pub checkpoint_path: Option<PathBuf>,
    /// The state dict to write, a .safetensors file (overwritten if present).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let Some(checkpoint) = args.checkpoint.or(args.checkpoint_path) else {
        bail!("name the checkpoint to export with --checkpoint");
    };
    check_out(&checkpoint, &args.out)?;
    let network = load_network::<trainer::Cpu>(&checkpoint, &Default::default())?;
    let (description, names) = match &network {
        Network::Vision(model) => {
            models::save_checkpoint(model, &args.out)?;
            (model.architecture().describe(), "torchvision")
        }
        Network::Language(gpt) => {
            models::export_gpt(gpt, &args.out)?;
            (gpt.config().describe(), "NanoGPT")
        }
    };
    eprintln!(
        "{}: {description} with {names}'s names; in PyTorch: \
         model.load_state_dict(safetensors.torch.load_file({:?}))",
        args.out.display(),
        args.out.display().to_string()
    );
    Ok(())
}

/// `--out` must be a new `.safetensors` path, not the checkpoint itself.
fn check_out(checkpoint: &Path, out: &Path) -> Result<()> {
    if out.extension().is_none_or(|e| e != "safetensors") {
        bail!(
            "--out {}: export writes safetensors only (burn-store cannot write PyTorch \
             pickles); name the file .safetensors and read it in PyTorch with \
             safetensors.torch.load_file",
            out.display()
        );
    }
    let same_file = match (checkpoint.canonicalize(), out.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same_file {
        bail!(
            "--out {} is the checkpoint being exported; choose another file",
            out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_must_be_another_safetensors_file() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("final.safetensors");
        std::fs::write(&checkpoint, b"").unwrap();
        let pt = check_out(&checkpoint, &dir.path().join("model.pt")).unwrap_err();
        assert!(pt.to_string().contains("safetensors only"), "{pt}");
        let same = check_out(&checkpoint, &checkpoint).unwrap_err();
        assert!(same.to_string().contains("is the checkpoint"), "{same}");
        check_out(&checkpoint, &dir.path().join("exported.safetensors")).unwrap();
    }
}
