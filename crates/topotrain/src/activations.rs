//! `topotrain activations`: runs a checkpoint in eval mode on a batch of
//! images and saves the outputs of named modules (and the logits) to a
//! safetensors file, for analysis outside topotrain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::{Tensor, TensorData};
use clap::Args;
use models::{CpuBackend, HasWeightLayers};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// Name of the input tensor in `--input` and of the logits in `--out`.
const INPUT_NAME: &str = "input";
const LOGITS_NAME: &str = "logits";

#[derive(Args)]
pub struct ActivationsArgs {
    /// A checkpoint: PyTorch `.pt`/`.pth`, safetensors, or one of ours (a
    /// run directory or one of its checkpoints).
    #[arg(long)]
    checkpoint: PathBuf,
    /// A safetensors file whose `input` tensor is f32 `[N, C, H, W]`, already normalised.
    #[arg(long, required_unless_present = "list_layers")]
    input: Option<PathBuf>,
    /// PyTorch module names whose outputs to save, comma-separated (e.g. `layer4,fc`).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<String>,
    /// Output safetensors file: one tensor per module name, plus `logits`.
    #[arg(long, required_unless_present = "list_layers")]
    out: Option<PathBuf>,
    /// Images per forward pass (bounds memory; results do not depend on it).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Print the checkpoint's module names and exit (ignores --input, --layers, --out).
    #[arg(long)]
    list_layers: bool,
    #[command(flatten)]
    threads: crate::threads::ThreadsArg,
}

/// One output being assembled across batches.
struct Collected {
    shape: Vec<usize>,
    values: Vec<f32>,
}

pub fn run(args: ActivationsArgs) -> Result<()> {
    args.threads.apply();
    let device = Default::default();
    let model = trainer::eval::load_model::<CpuBackend>(&args.checkpoint, &device)?;
    if args.list_layers {
        for module in model.modules() {
            println!("{}\t{}", module.name, module.kind);
        }
        return Ok(());
    }
    let (Some(input_path), Some(out)) = (&args.input, &args.out) else {
        bail!("--input and --out are needed unless --list-layers is given");
    };
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.layers.iter().any(|name| name == LOGITS_NAME) {
        bail!("'{LOGITS_NAME}' is always saved; leave it out of --layers");
    }
    let input = read_input(input_path)?;
    let dims = input.dims();
    model
        .check_input(&dims)
        .with_context(|| format!("{}: tensor '{INPUT_NAME}'", input_path.display()))?;

    let mut outputs: BTreeMap<String, Collected> = BTreeMap::new();
    for start in (0..dims[0]).step_by(args.batch_size) {
        let len = args.batch_size.min(dims[0] - start);
        let batch = input.clone().narrow(0, start, len);
        let (logits, captured) = model.forward_with_taps(batch, &args.layers)?;
        let named = captured
            .into_iter()
            .map(|(name, activation)| (name, activation.into_data()))
            .chain([(LOGITS_NAME.to_string(), logits.into_data())]);
        for (name, data) in named {
            append(&mut outputs, name, data)?;
        }
    }
    write_outputs(out, &outputs)?;
    eprintln!(
        "wrote {} tensor(s) for {} image(s) to {}",
        outputs.len(),
        dims[0],
        out.display()
    );
    Ok(())
}

fn read_input(path: &Path) -> Result<Tensor<CpuBackend, 4>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e:?}", path.display()))?;
    let view = file.tensor(INPUT_NAME).map_err(|_| {
        let names: Vec<String> = file.names().into_iter().cloned().collect();
        anyhow::anyhow!(
            "{}: no tensor named '{INPUT_NAME}' (it has: {})",
            path.display(),
            names.join(", ")
        )
    })?;
    if view.dtype() != Dtype::F32 {
        bail!(
            "{}: '{INPUT_NAME}' is {:?}, expected F32",
            path.display(),
            view.dtype()
        );
    }
    if view.shape().len() != 4 {
        bail!(
            "{}: '{INPUT_NAME}' has shape {:?}, expected [N, C, H, W]",
            path.display(),
            view.shape()
        );
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let data = TensorData::new(values, view.shape().to_vec());
    Ok(Tensor::from_data(data, &Default::default()))
}

/// Appends one batch's output along the batch axis.
fn append(outputs: &mut BTreeMap<String, Collected>, name: String, data: TensorData) -> Result<()> {
    let shape = data.shape.to_vec();
    let values = data
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("output '{name}' is not f32: {e:?}"))?;
    match outputs.get_mut(&name) {
        Some(collected) => {
            collected.shape[0] += shape[0];
            collected.values.extend(values);
        }
        None => {
            outputs.insert(name, Collected { shape, values });
        }
    }
    Ok(())
}

fn write_outputs(path: &Path, outputs: &BTreeMap<String, Collected>) -> Result<()> {
    let bytes: Vec<(&String, &Collected, Vec<u8>)> = outputs
        .iter()
        .map(|(name, c)| {
            (
                name,
                c,
                c.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, c, raw)| {
            TensorView::new(Dtype::F32, c.shape.clone(), raw)
                .map(|view| (name.to_string(), view))
                .map_err(|e| anyhow::anyhow!("output '{name}': {e:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, &None, path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e:?}", path.display()))
}
