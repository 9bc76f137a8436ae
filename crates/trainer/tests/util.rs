//! Shared by the language tests: a tiny GPT config and reading
//! safetensors files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// Burn's random generator is one per process and training seeds it: a
/// test that trains holds this, so another test's draws cannot interleave
/// with its own and change its initial weights.
pub fn burn_rng() -> MutexGuard<'static, ()> {
    static RNG: Mutex<()> = Mutex::new(());
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A one-layer GPT with TopoLoss on `c_fc`, trained on `data`, written to `out`.
pub fn config_text(data: &Path, out: &Path) -> String {
    format!(
        r#"
[gpt]
n_layer = 1
n_head = 2
n_embd = 32
block_size = 32
vocab_size = 50257

[data]
dir = "{}"

[topography]
tau = 1.0
layers = [{{ patterns = ["transformer.h.*.mlp.c_fc"] }}]

[optimizer]
lr = 1e-2
min_lr = 1e-3
warmup_steps = 2

[training]
steps = 12
batch_size = 8
grad_accum = 2
eval_every = 6
eval_batches = 4
log_every = 3

[output]
dir = "{}"
"#,
        data.display(),
        out.display()
    )
}

/// Every tensor of a safetensors file, as raw bytes by name.
pub fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    test_support::read_tensors(path)
        .into_iter()
        .map(|(name, (_, bytes))| (name, bytes))
        .collect()
}
