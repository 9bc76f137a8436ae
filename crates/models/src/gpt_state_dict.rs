//! GPT checkpoint IO: NanoGPT's files and our own.
//!
//! - NanoGPT's `ckpt.pt` (a pickled dict whose `model` entry is the state
//!   dict, keys prefixed `_orig_mod.` after `torch.compile`, and whose
//!   `model_args` entry gives the shape) and bare NanoGPT state dicts
//!   (`torch.save(model.state_dict())`, `.pt` or `.safetensors`). Linear
//!   weights are `nn.Linear`'s `[out, in]`. The causal-mask buffers
//!   `attn.bias` of NanoGPT without flash attention are ignored; a tied
//!   `lm_head.weight` (NanoGPT saves the shared tensor under both names) is
//!   checked to equal `transformer.wte.weight` and then ignored.
//! - Hugging Face GPT-2 checkpoints are refused with an explanation: their
//!   `Conv1D` layers store `[in, out]` weights under the same names (a square
//!   `c_proj` cannot be told apart by shape) and they use the tanh GELU
//!   approximation. Convert them with NanoGPT's `GPT.from_pretrained`, which
//!   transposes the Conv1D weights, and save its `state_dict()`.
//! - Our checkpoints: safetensors in NanoGPT layout (so PyTorch reads them
//!   with `model.load_state_dict(load_file(f), strict=False)`; a tied model
//!   stores no `lm_head.weight`, as Hugging Face's files), with the
//!   [`GptConfig`] as JSON metadata under [`GPT_CONFIG_METADATA_KEY`].
//!   [`export_gpt`] also writes a tied model's `lm_head.weight`, for
//!   `strict=True` (NanoGPT with flash attention, whose blocks hold no
//!   `attn.bias` mask).
//!
//! Without metadata or `model_args`, the shape is inferred from tensor
//! shapes, taking GPT-2's 64-wide attention heads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn_store::pytorch::PytorchReader;
use safetensors::SafeTensors;
use serde::Deserialize;

use crate::gpt::{Gpt, GptConfig};
use crate::state_dict::{
    count_indexed, find_key_prefix, load_module, no_torch_only_tensors, rank_error, read_shapes,
    sample_keys, save_module, shape_of, CheckpointFormat, OwnedTensor, StateDictSource,
    TorchOnlyTensors,
};
use crate::ModelError;

/// Safetensors metadata key holding the [`GptConfig`] as JSON.
pub const GPT_CONFIG_METADATA_KEY: &str = "topotrain.gpt";

/// The key every GPT state dict has; its prefix is the file's key prefix.
const TOKEN_EMBEDDING: &str = "transformer.wte.weight";
/// GPT-2's attention head width, for files that do not state the head count.
const HEAD_DIM: usize = 64;
/// Ignored file tensors: NanoGPT's (non-flash) and Hugging Face's causal masks.
const IGNORED_SUFFIXES: [&str; 2] = [".attn.bias", ".attn.masked_bias"];

/// What a GPT checkpoint holds, without building a model.
#[derive(Debug, Clone)]
pub struct GptCheckpointInfo {
    pub path: PathBuf,
    pub format: CheckpointFormat,
    /// From metadata or `model_args` when present, else inferred.
    pub config: GptConfig,
    /// The entry of a pickled dict holding the state dict (`model`), if any.
    pub top_level_key: Option<String>,
    /// Prefix stripped from every key (`_orig_mod.`...), if any.
    pub key_prefix: String,
    /// Tensor name (prefix stripped) to shape.
    pub tensors: BTreeMap<String, Vec<usize>>,
}

/// NanoGPT's `model_args` entry of `ckpt.pt` (its `GPTConfig` fields).
#[derive(Debug, Deserialize)]
struct NanoGptArgs {
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    block_size: usize,
    vocab_size: usize,
    #[serde(default)]
    bias: bool,
    #[serde(default)]
    dropout: f64,
}

/// Reads names, shapes and metadata of a GPT checkpoint and works out its shape.
pub fn inspect_gpt_checkpoint(path: impl AsRef<Path>) -> Result<GptCheckpointInfo, ModelError> {
    let path = path.as_ref();
    let unknown = |reason: String| ModelError::UnknownArchitecture {
        path: path.to_path_buf(),
        reason,
    };
    let format = CheckpointFormat::from_path(path);
    let (raw, metadata) = read_shapes(path, format, GPT_CONFIG_METADATA_KEY)?;
    let full_prefix = find_key_prefix(&raw, &[TOKEN_EMBEDDING]).ok_or_else(|| {
        unknown(format!(
            "no `{TOKEN_EMBEDDING}` (GPT) among its {} tensors{}",
            raw.len(),
            sample_keys(raw.keys())
        ))
    })?;
    let tensors: BTreeMap<String, Vec<usize>> = raw
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&full_prefix)
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect();
    // NanoGPT's ckpt.pt also holds the optimiser state: read only the
    // dict entry the model is in.
    let (top_level_key, key_prefix) = match full_prefix.split_once('.') {
        Some((top, rest))
            if format == CheckpointFormat::PyTorch
                && raw.keys().any(|k| !k.starts_with(&full_prefix)) =>
        {
            (Some(top.to_string()), rest.to_string())
        }
        _ => (None, full_prefix.clone()),
    };
    let model_args = match (&metadata, format) {
        (None, CheckpointFormat::PyTorch) => read_model_args(path),
        _ => None,
    };
    let mut config: GptConfig = match metadata {
        Some(json) => serde_json::from_str(&json).map_err(|e| ModelError::Read {
            path: path.to_path_buf(),
            message: format!("metadata '{GPT_CONFIG_METADATA_KEY}' is not valid: {e}"),
        })?,
        None => infer_gpt(&tensors, model_args.as_ref().map(|a| a.n_head)).map_err(unknown)?,
    };
    if let Some(args) = model_args {
        config.dropout = args.dropout;
        let stated = (
            args.n_layer,
            args.n_embd,
            args.block_size,
            args.vocab_size,
            args.bias,
        );
        let found = (
            config.n_layer,
            config.n_embd,
            config.block_size,
            config.vocab_size,
            config.bias,
        );
        if stated != found {
            return Err(unknown(format!(
                "model_args (n_layer, n_embd, block_size, vocab_size, bias) = {stated:?} \
                 but the tensors say {found:?}"
            )));
        }
    }
    if format == CheckpointFormat::PyTorch {
        let lm_head = format!("{full_prefix}lm_head.weight");
        if raw.contains_key(&lm_head) {
            config.tie_weights =
                tensors_equal(path, &lm_head, &format!("{full_prefix}{TOKEN_EMBEDDING}"))?;
        }
    }
    Ok(GptCheckpointInfo {
        path: path.to_path_buf(),
        format,
        config,
        top_level_key,
        key_prefix,
        tensors,
    })
}

/// `model_args` of a NanoGPT `ckpt.pt`, if the file has one.
fn read_model_args(path: &Path) -> Option<NanoGptArgs> {
    PytorchReader::load_config(path, Some("model_args")).ok()
}

/// Whether two tensors of a PyTorch file hold the same values.
fn tensors_equal(path: &Path, a: &str, b: &str) -> Result<bool, ModelError> {
    let read_error = |message: String| ModelError::Read {
        path: path.to_path_buf(),
        message,
    };
    let reader = PytorchReader::new(path).map_err(|e| read_error(e.to_string()))?;
    let values = |key: &str| -> Result<Vec<f32>, ModelError> {
        let snapshot = reader
            .get(key)
            .ok_or_else(|| read_error(format!("tensor `{key}` vanished")))?;
        let data = snapshot
            .to_data()
            .map_err(|e| read_error(format!("`{key}`: {e:?}")))?;
        data.convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| read_error(format!("`{key}`: {e:?}")))
    };
    Ok(values(a)? == values(b)?)
}

/// Works out a GPT's shape from NanoGPT tensor names and shapes; the head
/// count is `n_head` when known, else GPT-2's (64-wide heads).
pub fn infer_gpt(
    tensors: &BTreeMap<String, Vec<usize>>,
    n_head: Option<usize>,
) -> Result<GptConfig, String> {
    let wte = shape_of(tensors, TOKEN_EMBEDDING)?;
    let [vocab_size, n_embd] = *wte else {
        return Err(rank_error(TOKEN_EMBEDDING, wte, "[vocab, n_embd]"));
    };
    let wpe = shape_of(tensors, "transformer.wpe.weight")?;
    let [block_size, _] = *wpe else {
        return Err(rank_error(
            "transformer.wpe.weight",
            wpe,
            "[block_size, n_embd]",
        ));
    };
    let n_layer = count_indexed(tensors, "transformer.h.")?;
    if n_layer == 0 {
        return Err("no blocks `transformer.h.N`".to_string());
    }
    let c_attn_key = "transformer.h.0.attn.c_attn.weight";
    let c_attn = shape_of(tensors, c_attn_key)?;
    if c_attn == [n_embd, 3 * n_embd] {
        return Err(format!(
            "`{c_attn_key}` is [{n_embd}, {}]: a Hugging Face GPT-2 file (Conv1D layers, \
             [in, out] weights), which is not supported; load it with NanoGPT's \
             GPT.from_pretrained and save that model's state_dict()",
            3 * n_embd
        ));
    }
    if c_attn != [3 * n_embd, n_embd] {
        return Err(rank_error(
            c_attn_key,
            c_attn,
            &format!("[{}, {n_embd}]", 3 * n_embd),
        ));
    }
    let n_head = match n_head {
        Some(n) => n,
        None if n_embd.is_multiple_of(HEAD_DIM) => n_embd / HEAD_DIM,
        None => return Err(format!(
            "cannot tell the attention head count of a {n_embd}-wide GPT (not a multiple of {HEAD_DIM}) \
             from its tensors; save it with its config"
        )),
    };
    Ok(GptConfig {
        block_size,
        vocab_size,
        n_layer,
        n_head,
        n_embd,
        bias: tensors.contains_key("transformer.ln_f.bias"),
        dropout: 0.0,
        tie_weights: !tensors.contains_key("lm_head.weight"),
    })
}

/// Builds the checkpoint's GPT and loads its weights.
pub fn load_gpt<B: Backend>(
    path: impl AsRef<Path>,
    device: &B::Device,
) -> Result<Gpt<B>, ModelError> {
    let info = inspect_gpt_checkpoint(path)?;
    let mut model = info.config.init(device)?;
    load_gpt_weights(&mut model, &info)?;
    Ok(model)
}

/// Loads an inspected checkpoint's weights into `model` (same shape);
/// every model tensor must be in the file and every file tensor used.
pub fn load_gpt_weights<B: Backend>(
    model: &mut Gpt<B>,
    info: &GptCheckpointInfo,
) -> Result<(), ModelError> {
    // A tied model has no lm_head; the file's copy was checked equal to wte.
    let mut ignored: Vec<&str> = IGNORED_SUFFIXES.to_vec();
    if model.lm_head.is_none() {
        ignored.push("lm_head.weight");
    }
    let source = StateDictSource {
        path: &info.path,
        format: info.format,
        key_prefix: &info.key_prefix,
        top_level_key: info.top_level_key.as_deref(),
        to_burn: &[],
        to_torch: &[],
        ignored_suffixes: &ignored,
        description: info.config.describe(),
        only: None,
    };
    load_module(model, &source)
}

/// Saves `model` as a safetensors file in NanoGPT layout with its config
/// as metadata. Overwrites an existing file.
pub fn save_gpt<B: Backend>(model: &Gpt<B>, path: impl AsRef<Path>) -> Result<(), ModelError> {
    write_gpt(model, path.as_ref(), no_torch_only_tensors)
}

/// Saves `model` as [`save_gpt`] does, plus the `lm_head.weight` of a tied
/// model (a copy of `transformer.wte.weight`), which NanoGPT's
/// `state_dict()` holds: the file loads into NanoGPT's `GPT` with
/// `load_state_dict(strict=True)`.
pub fn export_gpt<B: Backend>(model: &Gpt<B>, path: impl AsRef<Path>) -> Result<(), ModelError> {
    write_gpt(model, path.as_ref(), tied_head)
}

/// `lm_head.weight` as a copy of `transformer.wte.weight`, when the model
/// has no head of its own.
fn tied_head(tensors: &SafeTensors) -> Vec<(String, OwnedTensor)> {
    const HEAD: &str = "lm_head.weight";
    match tensors.tensor(TOKEN_EMBEDDING) {
        Ok(wte) if tensors.tensor(HEAD).is_err() => vec![(
            HEAD.to_string(),
            OwnedTensor {
                dtype: wte.dtype(),
                shape: wte.shape().to_vec(),
                data: wte.data().to_vec(),
            },
        )],
        _ => Vec::new(),
    }
}

fn write_gpt<B: Backend>(
    model: &Gpt<B>,
    path: &Path,
    torch_only: TorchOnlyTensors,
) -> Result<(), ModelError> {
    if model.lora_parameters() > 0 {
        return Err(ModelError::Write {
            path: path.to_path_buf(),
            message: "the model has LoRA adapters; merge them (Gpt::merge_lora) before saving"
                .to_string(),
        });
    }
    let config = serde_json::to_string(&model.config()).map_err(|e| ModelError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    save_module(
        model,
        path,
        &[],
        (GPT_CONFIG_METADATA_KEY, config),
        torch_only,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(entries: &[(&str, &[usize])]) -> BTreeMap<String, Vec<usize>> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    #[test]
    fn nanogpt_shapes_give_the_config() {
        let tensors = shapes(&[
            ("transformer.wte.weight", &[50304, 128]),
            ("transformer.wpe.weight", &[256, 128]),
            ("transformer.h.0.attn.c_attn.weight", &[384, 128]),
            ("transformer.h.1.attn.c_attn.weight", &[384, 128]),
            ("transformer.ln_f.weight", &[128]),
        ]);
        let config = infer_gpt(&tensors, None).unwrap();
        assert_eq!(
            config,
            GptConfig::new()
                .with_block_size(256)
                .with_n_layer(2)
                .with_n_head(2)
                .with_n_embd(128)
        );
    }

    #[test]
    fn hugging_face_conv1d_layout_is_refused_with_the_reason() {
        let tensors = shapes(&[
            ("transformer.wte.weight", &[50257, 128]),
            ("transformer.wpe.weight", &[256, 128]),
            ("transformer.h.0.attn.c_attn.weight", &[128, 384]),
        ]);
        let err = infer_gpt(&tensors, None).err().unwrap();
        assert!(
            err.contains("Conv1D") && err.contains("from_pretrained"),
            "{err}"
        );
    }
}
