//! Checkpoint IO: PyTorch `.pt`/`.pth` state dicts, safetensors state dicts,
//! and our own checkpoints.
//!
//! Our checkpoints are safetensors files in torchvision's layout (PyTorch
//! key names, Linear weights `[out, in]`, BatchNorm buffers included), so
//! one loader serves PyTorch exports and our own files, and PyTorch can read
//! ours with `model.load_state_dict(safetensors.torch.load_file(f))` (strict).
//! Burn does not count BatchNorm batches: `num_batches_tracked` is written
//! as 0 (PyTorch reads it only with `momentum=None`) and ignored on loading.
//! They also carry the architecture as JSON metadata
//! (`topotrain.architecture`), which matters for ViTs, whose head count no
//! tensor shape reveals.
//!
//! The architecture of a file without that metadata is inferred from its
//! tensor names and shapes, see [`infer_architecture`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::{ModuleMapper, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};
use burn_store::pytorch::PytorchReader;
use burn_store::{
    ApplyResult, BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, PathFilter,
    PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use regex::Regex;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::model::{Architecture, Model};
use crate::resnet::{ResNetConfig, STAGES};
use crate::vit::VitConfig;
use crate::ModelError;

/// Safetensors metadata key holding the architecture as JSON.
pub const ARCHITECTURE_METADATA_KEY: &str = "topotrain.architecture";

/// torchvision key fragments that Burn spells differently (regex, replacement).
/// Burn struct fields cannot be named `0`, and Burn's `Vec` indexes layers
/// by number where torchvision's `OrderedDict` uses `encoder_layer_N`.
const TORCH_TO_BURN: [(&str, &str); 5] = [
    (r"\.downsample\.0\.", ".downsample.conv."),
    (r"\.downsample\.1\.", ".downsample.bn."),
    (
        r"^encoder\.layers\.encoder_layer_(\d+)\.",
        "encoder.layers.${1}.",
    ),
    (r"\.mlp\.0\.", ".mlp.linear_1."),
    (r"\.mlp\.3\.", ".mlp.linear_2."),
];

/// The inverse of [`TORCH_TO_BURN`], for saving.
const BURN_TO_TORCH: [(&str, &str); 5] = [
    (r"\.downsample\.conv\.", ".downsample.0."),
    (r"\.downsample\.bn\.", ".downsample.1."),
    (
        r"^encoder\.layers\.(\d+)\.",
        "encoder.layers.encoder_layer_${1}.",
    ),
    (r"\.mlp\.linear_1\.", ".mlp.0."),
    (r"\.mlp\.linear_2\.", ".mlp.3."),
];

/// PyTorch buffers that have no counterpart in Burn and are safe to ignore.
pub(crate) const IGNORED_SUFFIXES: [&str; 1] = ["num_batches_tracked"];

/// Container formats we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// A pickled PyTorch state dict (`torch.save`).
    PyTorch,
    /// A safetensors state dict (ours or PyTorch's).
    Safetensors,
}

impl CheckpointFormat {
    /// `.safetensors` files are safetensors; everything else is tried as PyTorch.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Self::Safetensors,
            _ => Self::PyTorch,
        }
    }
}

/// What a checkpoint holds, without building a model.
#[derive(Debug, Clone)]
pub struct CheckpointInfo {
    pub path: PathBuf,
    pub format: CheckpointFormat,
    /// From metadata when present, else inferred from tensor names and shapes.
    pub architecture: Architecture,
    /// Prefix stripped from every key (e.g. `module.` from DataParallel), if any.
    pub key_prefix: String,
    /// Tensor name (prefix stripped) to shape.
    pub tensors: BTreeMap<String, Vec<usize>>,
}

/// Reads names, shapes and metadata of a checkpoint and works out its architecture.
pub fn inspect_checkpoint(path: impl AsRef<Path>) -> Result<CheckpointInfo, ModelError> {
    let path = path.as_ref();
    let format = CheckpointFormat::from_path(path);
    let (raw, metadata) = read_shapes(path, format, ARCHITECTURE_METADATA_KEY)?;
    let key_prefix =
        find_key_prefix(&raw, &["conv1.weight", "conv_proj.weight"]).ok_or_else(|| {
            ModelError::UnknownArchitecture {
                path: path.to_path_buf(),
                reason: format!(
                    "no `conv1.weight` (ResNet) or `conv_proj.weight` (ViT) among its {} tensors{}",
                    raw.len(),
                    sample_keys(raw.keys())
                ),
            }
        })?;
    let tensors: BTreeMap<String, Vec<usize>> = raw
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(&key_prefix).map(|k| (k.to_string(), v)))
        .collect();
    let architecture = match metadata {
        Some(json) => serde_json::from_str(&json).map_err(|e| ModelError::Read {
            path: path.to_path_buf(),
            message: format!("metadata '{ARCHITECTURE_METADATA_KEY}' is not valid: {e}"),
        })?,
        None => infer_architecture(&tensors).map_err(|reason| ModelError::UnknownArchitecture {
            path: path.to_path_buf(),
            reason,
        })?,
    };
    Ok(CheckpointInfo {
        path: path.to_path_buf(),
        format,
        architecture,
        key_prefix,
        tensors,
    })
}

/// Builds the checkpoint's architecture and loads its weights.
pub fn load_checkpoint<B: Backend>(
    path: impl AsRef<Path>,
    device: &B::Device,
) -> Result<Model<B>, ModelError> {
    let info = inspect_checkpoint(path)?;
    let mut model = info.architecture.init(device)?;
    load_weights(&mut model, &info)?;
    Ok(model)
}

/// Loads the weights of an inspected checkpoint into `model`, which must
/// have the same architecture; every model tensor must be in the file and
/// every file tensor (but `num_batches_tracked`) must be used.
pub fn load_weights<B: Backend>(
    model: &mut Model<B>,
    info: &CheckpointInfo,
) -> Result<(), ModelError> {
    load_vision_weights(model, info, None)
}

/// The classification head that [`load_weights_new_head`] left at its
/// fresh initialisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHead {
    /// torchvision's name of the head (`fc`, `heads.head`).
    pub name: &'static str,
    pub checkpoint_classes: usize,
    pub model_classes: usize,
}

/// Loads an inspected checkpoint for fine-tuning: as [`load_weights`], but
/// when the checkpoint has another number of classes than `model`, every
/// tensor but the classification head's is loaded and the head keeps
/// `model`'s fresh initialisation (timm's `pretrained=True, num_classes=N`);
/// any other difference is still an error. Returns that head, or `None`
/// when the classes agree.
pub fn load_weights_new_head<B: Backend>(
    model: &mut Model<B>,
    info: &CheckpointInfo,
) -> Result<Option<NewHead>, ModelError> {
    let target = model.architecture();
    let model_classes = target.num_classes();
    let checkpoint_classes = info.architecture.num_classes();
    if checkpoint_classes == model_classes {
        return load_weights(model, info).map(|()| None);
    }
    load_vision_weights(
        model,
        info,
        Some(PathFilter::new().with_predicate(outside_the_head)),
    )?;
    Ok(Some(NewHead {
        name: target.head_name(),
        checkpoint_classes,
        model_classes,
    }))
}

/// Whether a Burn tensor path lies outside the classification head of a
/// ResNet (`fc`) or a ViT (`heads.head`); neither has the other's name.
fn outside_the_head(path: &str, _container: &str) -> bool {
    !(path.starts_with("fc.") || path.starts_with("heads.head."))
}

/// Loads the tensors of `info` that `only` keeps (all without a filter)
/// into a ResNet or ViT.
fn load_vision_weights<B: Backend>(
    model: &mut Model<B>,
    info: &CheckpointInfo,
    only: Option<PathFilter>,
) -> Result<(), ModelError> {
    let source = StateDictSource {
        path: &info.path,
        format: info.format,
        key_prefix: &info.key_prefix,
        top_level_key: None,
        to_burn: &TORCH_TO_BURN,
        to_torch: &BURN_TO_TORCH,
        ignored_suffixes: &IGNORED_SUFFIXES,
        description: info.architecture.describe(),
        only,
    };
    match model {
        Model::ResNet(m) => load_module(m, &source),
        Model::Vit(m) => load_module(m, &source),
    }
}

/// Where a state dict is and how its PyTorch names map to a Burn module's.
pub(crate) struct StateDictSource<'a> {
    pub path: &'a Path,
    pub format: CheckpointFormat,
    /// Stripped from every key (`module.`, `_orig_mod.`...).
    pub key_prefix: &'a str,
    /// The entry of a pickled dict that holds the state dict (`model` in
    /// NanoGPT's `ckpt.pt`), read alone so the rest is not "unexpected".
    pub top_level_key: Option<&'a str>,
    /// PyTorch-to-Burn key rewrites (regex, replacement) and their inverse,
    /// the latter for naming keys in messages.
    pub to_burn: &'a [(&'a str, &'a str)],
    pub to_torch: &'a [(&'a str, &'a str)],
    /// File tensors without a Burn counterpart that are safe to ignore.
    pub ignored_suffixes: &'a [&'a str],
    /// The model, for messages.
    pub description: String,
    /// Loads only the module tensors this keeps (all without one); the
    /// others keep their values, and the file's tensors of the same names
    /// count as used.
    pub only: Option<PathFilter>,
}

/// Loads a state dict into any module: every module tensor must be in the
/// file and every file tensor (but the ignored ones) must be used.
pub(crate) fn load_module<B: Backend, M: ModuleSnapshot<B>>(
    module: &mut M,
    source: &StateDictSource,
) -> Result<(), ModelError> {
    let path = source.path;
    let read_error = |message: String| ModelError::Read {
        path: path.to_path_buf(),
        message,
    };
    let mut rules: Vec<(String, String)> = Vec::new();
    if !source.key_prefix.is_empty() {
        rules.push((
            format!("^{}", regex::escape(source.key_prefix)),
            String::new(),
        ));
    }
    rules.extend(
        source
            .to_burn
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string())),
    );
    let remapper = KeyRemapper::from_patterns(rules).map_err(|e| read_error(e.to_string()))?;

    let result = match source.format {
        CheckpointFormat::PyTorch => {
            let mut store = PytorchStore::from_file(path);
            if let Some(key) = source.top_level_key {
                store = store.with_top_level_key(key);
            }
            if let Some(only) = source.only.clone() {
                store = store.filter(only);
            }
            let mut store = store
                .remap(remapper)
                .map_indices_contiguous(false)
                .skip_enum_variants(true)
                .allow_partial(true)
                .validate(false);
            module
                .load_from(&mut store)
                .map_err(|e| read_error(e.to_string()))?
        }
        CheckpointFormat::Safetensors => {
            let mut store = SafetensorsStore::from_file(path);
            if let Some(only) = source.only.clone() {
                store = store.filter(only);
            }
            let mut store = store
                .with_from_adapter(PyTorchToBurnAdapter)
                .remap(remapper)
                .skip_enum_variants(true)
                .allow_partial(true)
                .validate(false);
            module
                .load_from(&mut store)
                .map_err(|e| read_error(e.to_string()))?
        }
    };
    check_apply_result(&result, source)?;
    *module = module.clone().map(&mut UpcastToF32);
    Ok(())
}

/// Casts float parameters loaded in another precision (f16 or bf16 from a
/// `model.half()` export) to f32, the precision every model here keeps its
/// weights in: burn-store keeps the file's dtype, and the first op of the
/// forward pass then panicked on the mismatch. f32 parameters are untouched.
struct UpcastToF32;

impl<B: Backend> ModuleMapper<B> for UpcastToF32 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(FloatDType::F32), mapper)
    }
}

fn check_apply_result(result: &ApplyResult, source: &StateDictSource) -> Result<(), ModelError> {
    let to_torch = key_mapper(source.to_torch);
    if !result.missing.is_empty() {
        let keys: Vec<String> = result
            .missing
            .iter()
            .map(|(burn_path, _)| to_torch(&strip_enum_variants(burn_path)))
            .collect();
        return Err(ModelError::MissingTensors {
            path: source.path.to_path_buf(),
            architecture: source.description.clone(),
            count: keys.len(),
            keys,
        });
    }
    let mut details: Vec<String> = result
        .errors
        .iter()
        .map(|e| to_torch(&e.to_string()))
        .collect();
    // Norm layers' `weight`/`bias` are applied to Burn's `gamma`/`beta` under
    // the adapter's alternative name, yet burn-store still lists them unused.
    let applied: BTreeSet<String> = result
        .applied
        .iter()
        .map(|p| strip_enum_variants(p))
        .collect();
    let applied_as_norm = |key: &str| {
        [("weight", "gamma"), ("bias", "beta")]
            .iter()
            .any(|(torch, burn)| {
                key.strip_suffix(torch)
                    .is_some_and(|stem| applied.contains(&format!("{stem}{burn}")))
            })
    };
    let unused: Vec<String> = result
        .unused
        .iter()
        .filter(|k| !source.ignored_suffixes.iter().any(|s| k.ends_with(s)))
        .filter(|k| !applied_as_norm(k))
        .map(|k| to_torch(k))
        .collect();
    if !unused.is_empty() {
        details.push(format!("unexpected tensors: {}", unused.join(", ")));
    }
    if details.is_empty() {
        Ok(())
    } else {
        Err(ModelError::Mismatch {
            path: source.path.to_path_buf(),
            architecture: source.description.clone(),
            details,
        })
    }
}

/// Saves `model` as a safetensors file in torchvision layout, with its
/// architecture as metadata. Overwrites an existing file.
pub fn save_checkpoint<B: Backend>(
    model: &Model<B>,
    path: impl AsRef<Path>,
) -> Result<(), ModelError> {
    let path = path.as_ref();
    let architecture =
        serde_json::to_string(&model.architecture()).map_err(|e| ModelError::Write {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let metadata = (ARCHITECTURE_METADATA_KEY, architecture);
    let torch_only = batch_norm_counters;
    match model {
        Model::ResNet(m) => save_module(m, path, &BURN_TO_TORCH, metadata, torch_only),
        Model::Vit(m) => save_module(m, path, &BURN_TO_TORCH, metadata, torch_only),
    }
}

/// Every tensor of `model` under its torchvision name (`layer1.0.conv1.weight`,
/// `fc.bias`, BatchNorm buffers included), with its parameter id.
pub fn torch_parameter_names<B: Backend>(model: &Model<B>) -> Vec<(String, ParamId)> {
    let snapshots = match model {
        Model::ResNet(m) => m.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true),
        Model::Vit(m) => m.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true),
    };
    let to_torch = key_mapper(&BURN_TO_TORCH);
    snapshots
        .into_iter()
        .filter_map(|s| Some((to_torch(&s.full_path()), s.tensor_id?)))
        .collect()
}

/// A tensor written beside a module's own.
pub(crate) struct OwnedTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Given a module's tensors in PyTorch layout, the tensors PyTorch's
/// counterpart also has in its state dict (so it loads with `strict=True`).
pub(crate) type TorchOnlyTensors = fn(&SafeTensors) -> Vec<(String, OwnedTensor)>;

/// `num_batches_tracked` (int64 0) beside each BatchNorm's `running_var`.
fn batch_norm_counters(tensors: &SafeTensors) -> Vec<(String, OwnedTensor)> {
    tensors
        .names()
        .into_iter()
        .filter_map(|name| name.strip_suffix(".running_var"))
        .map(|stem| {
            let counter = OwnedTensor {
                dtype: Dtype::I64,
                shape: vec![],
                data: 0i64.to_le_bytes().to_vec(),
            };
            (format!("{stem}.num_batches_tracked"), counter)
        })
        .collect()
}

/// Saves any module as a safetensors state dict in PyTorch layout (Burn
/// keys rewritten by `to_torch`) plus the tensors `torch_only` adds, with
/// one metadata entry. Overwrites an existing file.
pub(crate) fn save_module<B: Backend, M: ModuleSnapshot<B>>(
    module: &M,
    path: &Path,
    to_torch: &[(&str, &str)],
    (metadata_key, metadata): (&str, String),
    torch_only: TorchOnlyTensors,
) -> Result<(), ModelError> {
    let write_error = |message: String| ModelError::Write {
        path: path.to_path_buf(),
        message,
    };
    let remapper =
        KeyRemapper::from_patterns(to_torch.to_vec()).map_err(|e| write_error(e.to_string()))?;
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .remap(remapper)
        .skip_enum_variants(true)
        .metadata(metadata_key, metadata);
    module
        .save_into(&mut store)
        .map_err(|e| write_error(e.to_string()))?;
    let bytes = store.get_bytes().map_err(|e| write_error(e.to_string()))?;
    let module_tensors =
        SafeTensors::deserialize(&bytes).map_err(|e| write_error(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| write_error(e.to_string()))?;
    let extra = torch_only(&module_tensors);
    let extra_views = extra
        .iter()
        .map(|(name, t)| {
            Ok((
                name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.data)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| write_error(e.to_string()))?;
    safetensors::serialize_to_file(
        module_tensors.tensors().into_iter().chain(extra_views),
        header.metadata(),
        path,
    )
    .map_err(|e| write_error(e.to_string()))
}

/// For modules whose state dict is the module's tensors alone.
pub(crate) fn no_torch_only_tensors(_: &SafeTensors) -> Vec<(String, OwnedTensor)> {
    Vec::new()
}

/// Tensor names to shapes, plus our architecture metadata if present.
pub(crate) type ShapesAndMetadata = (BTreeMap<String, Vec<usize>>, Option<String>);

/// Names and shapes of a file's tensors, and its metadata entry `metadata_key`
/// (safetensors only).
pub(crate) fn read_shapes(
    path: &Path,
    format: CheckpointFormat,
    metadata_key: &str,
) -> Result<ShapesAndMetadata, ModelError> {
    let read_error = |message: String| ModelError::Read {
        path: path.to_path_buf(),
        message,
    };
    match format {
        CheckpointFormat::PyTorch => {
            let reader = PytorchReader::new(path).map_err(|e| read_error(e.to_string()))?;
            let shapes = reader
                .tensors()
                .iter()
                .map(|(name, snapshot)| (name.clone(), snapshot.shape.to_vec()))
                .collect();
            Ok((shapes, None))
        }
        CheckpointFormat::Safetensors => {
            let bytes = std::fs::read(path).map_err(|e| read_error(e.to_string()))?;
            let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
                .map_err(|e| read_error(format!("not a safetensors file: {e:?}")))?;
            let shapes = metadata
                .tensors()
                .into_iter()
                .map(|(name, info)| (name, info.shape.clone()))
                .collect();
            let architecture = metadata
                .metadata()
                .as_ref()
                .and_then(|m| m.get(metadata_key).cloned());
            Ok((shapes, architecture))
        }
    }
}

/// The prefix before PyTorch's names (`""`, `module.`, `state_dict.`...),
/// found from the key of one of `stems` (the first layer's weight).
pub(crate) fn find_key_prefix(
    tensors: &BTreeMap<String, Vec<usize>>,
    stems: &[&str],
) -> Option<String> {
    stems
        .iter()
        .flat_map(|stem| {
            tensors.keys().filter_map(move |key| {
                let prefix = key.strip_suffix(stem)?;
                (prefix.is_empty() || prefix.ends_with('.')).then(|| prefix.to_string())
            })
        })
        .min_by_key(|prefix| prefix.len())
}

/// Works out the architecture from torchvision tensor names and shapes.
///
/// ResNet: depth from the block indices and `conv3` presence, BlurPool from
/// `blur_filter` buffers, small stem from a 3x3 `conv1`, width and input
/// channels from `conv1`, classes from `fc`. ViT: patch, width and channels
/// from `conv_proj`, image size from `encoder.pos_embedding`, depth from the
/// `encoder_layer_N` indices, MLP width and classes from their weights; the
/// head count is torchvision's for its widths (768: 12, 1024: 16, 1280: 16)
/// and `width / 64` otherwise.
pub fn infer_architecture(tensors: &BTreeMap<String, Vec<usize>>) -> Result<Architecture, String> {
    if tensors.contains_key("conv_proj.weight") {
        infer_vit(tensors).map(Architecture::Vit)
    } else if tensors.contains_key("conv1.weight") {
        infer_resnet(tensors).map(Architecture::ResNet)
    } else {
        Err(format!(
            "no `conv1.weight` (ResNet) or `conv_proj.weight` (ViT){}",
            sample_keys(tensors.keys())
        ))
    }
}

pub(crate) fn shape_of<'a>(
    tensors: &'a BTreeMap<String, Vec<usize>>,
    key: &str,
) -> Result<&'a [usize], String> {
    tensors
        .get(key)
        .map(Vec::as_slice)
        .ok_or_else(|| format!("tensor `{key}` is missing"))
}

pub(crate) fn rank_error(key: &str, shape: &[usize], expected: &str) -> String {
    format!("`{key}` has shape {shape:?}, expected {expected}")
}

/// Distinct `N` in keys `<prefix>N.*`; errors unless they are `0..count`.
pub(crate) fn count_indexed(
    tensors: &BTreeMap<String, Vec<usize>>,
    prefix: &str,
) -> Result<usize, String> {
    let indices: BTreeSet<usize> = tensors
        .keys()
        .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse().ok())
        .collect();
    let count = indices.len();
    if indices.iter().copied().eq(0..count) {
        Ok(count)
    } else {
        Err(format!(
            "`{prefix}N` indices are not contiguous from 0: {indices:?}"
        ))
    }
}

fn infer_resnet(tensors: &BTreeMap<String, Vec<usize>>) -> Result<ResNetConfig, String> {
    let stem = shape_of(tensors, "conv1.weight")?;
    let [width, in_channels, kernel, _] = *stem else {
        return Err(rank_error("conv1.weight", stem, "[out, in, k, k]"));
    };
    let small_stem = match kernel {
        7 => false,
        3 => true,
        other => {
            return Err(format!(
                "stem conv1 is {other}x{other}; expected 7x7 or 3x3"
            ))
        }
    };
    let fc = shape_of(tensors, "fc.weight")?;
    let [num_classes, _] = *fc else {
        return Err(rank_error("fc.weight", fc, "[classes, features]"));
    };
    let mut blocks = [0; 4];
    for (count, stage) in blocks.iter_mut().zip(STAGES) {
        *count = count_indexed(tensors, &format!("{stage}."))?;
        if *count == 0 {
            return Err(format!("no blocks in `{stage}`"));
        }
    }
    let bottleneck = tensors.keys().any(|k| k.starts_with("layer1.0.conv3."));
    let blurpool = tensors.keys().any(|k| k.ends_with(".blur_filter"));
    Ok(ResNetConfig {
        blocks,
        bottleneck,
        num_classes,
        in_channels,
        width,
        blurpool,
        small_stem,
    })
}

fn infer_vit(tensors: &BTreeMap<String, Vec<usize>>) -> Result<VitConfig, String> {
    let proj = shape_of(tensors, "conv_proj.weight")?;
    let [hidden_dim, in_channels, patch_size, _] = *proj else {
        return Err(rank_error(
            "conv_proj.weight",
            proj,
            "[dim, in, patch, patch]",
        ));
    };
    let pos = shape_of(tensors, "encoder.pos_embedding")?;
    let [1, seq_length, _] = *pos else {
        return Err(rank_error("encoder.pos_embedding", pos, "[1, tokens, dim]"));
    };
    let grid = (seq_length.saturating_sub(1) as f64).sqrt().round() as usize;
    if grid * grid + 1 != seq_length {
        return Err(format!(
            "encoder.pos_embedding has {seq_length} tokens, not a square grid plus a class token"
        ));
    }
    let num_layers = count_indexed(tensors, "encoder.layers.encoder_layer_")?;
    let first = "encoder.layers.encoder_layer_0.mlp";
    let mlp = shape_of(tensors, &format!("{first}.0.weight"))
        .or_else(|_| shape_of(tensors, &format!("{first}.linear_1.weight")))?;
    let head = shape_of(tensors, "heads.head.weight")?;
    let num_heads = match hidden_dim {
        768 => 12,
        1024 | 1280 => 16,
        d if d % 64 == 0 => d / 64,
        d => {
            return Err(format!(
                "cannot tell the attention head count of a {d}-wide ViT"
            ))
        }
    };
    Ok(VitConfig {
        image_size: grid * patch_size,
        patch_size,
        in_channels,
        hidden_dim,
        num_layers,
        num_heads,
        mlp_dim: mlp[0],
        num_classes: head[0],
    })
}

/// A closure applying regex rewrites in order to a key (or a message).
pub(crate) fn key_mapper(rules: &[(&str, &str)]) -> impl Fn(&str) -> String {
    // The patterns are constants of this module, covered by tests.
    let compiled: Vec<(Regex, String)> = rules
        .iter()
        .filter_map(|(from, to)| Some((Regex::new(from).ok()?, to.to_string())))
        .collect();
    move |key: &str| {
        compiled.iter().fold(key.to_string(), |acc, (re, to)| {
            re.replace_all(&acc, to.as_str()).into_owned()
        })
    }
}

/// Drops Burn enum variant segments (`conv1.Blurred.conv.weight` -> `conv1.conv.weight`).
fn strip_enum_variants(path: &str) -> String {
    path.split('.')
        .filter(|s| !matches!(*s, "Plain" | "Blurred"))
        .collect::<Vec<_>>()
        .join(".")
}

pub(crate) fn sample_keys<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let sample: Vec<&str> = keys.take(5).map(String::as_str).collect();
    if sample.is_empty() {
        String::new()
    } else {
        format!(" (first keys: {})", sample.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_maps_are_inverse() {
        let to_burn = key_mapper(&TORCH_TO_BURN);
        let to_torch = key_mapper(&BURN_TO_TORCH);
        for key in [
            "layer2.0.downsample.0.conv.weight",
            "layer2.0.downsample.1.running_mean",
            "encoder.layers.encoder_layer_11.mlp.3.bias",
            "encoder.layers.encoder_layer_0.mlp.0.weight",
            "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
            "fc.weight",
        ] {
            assert_eq!(to_torch(&to_burn(key)), key);
        }
        assert_eq!(
            to_burn("encoder.layers.encoder_layer_3.mlp.0.weight"),
            "encoder.layers.3.mlp.linear_1.weight"
        );
        assert!(KeyRemapper::from_patterns(TORCH_TO_BURN.to_vec()).is_ok());
        assert!(KeyRemapper::from_patterns(BURN_TO_TORCH.to_vec()).is_ok());
    }

    #[test]
    fn data_parallel_prefix_is_found() {
        let tensors: BTreeMap<String, Vec<usize>> = [
            ("module.conv1.weight".to_string(), vec![64, 3, 7, 7]),
            (
                "module.layer1.0.conv1.weight".to_string(),
                vec![64, 64, 3, 3],
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            find_key_prefix(&tensors, &["conv1.weight"]).as_deref(),
            Some("module.")
        );
    }

    #[test]
    fn non_contiguous_blocks_are_rejected() {
        let tensors: BTreeMap<String, Vec<usize>> = [
            ("layer1.0.conv1.weight".to_string(), vec![1]),
            ("layer1.2.conv1.weight".to_string(), vec![1]),
        ]
        .into_iter()
        .collect();
        let err = count_indexed(&tensors, "layer1.").err().unwrap();
        assert!(err.contains("not contiguous"), "{err}");
    }

    #[test]
    fn variants_are_stripped_from_messages() {
        assert_eq!(
            strip_enum_variants("layer2.0.conv1.Blurred.blur_filter"),
            "layer2.0.conv1.blur_filter"
        );
    }
}
