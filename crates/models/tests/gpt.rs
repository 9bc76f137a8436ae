//! GPT checkpoints: a NanoGPT `ckpt.pt` made by scripts/make_tiny_nanogpt.py
//! (logits from an independent NumPy forward), and our own save/load.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::util::{max_abs_diff, scratch_dir};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use models::{
    export_gpt, inspect_gpt_checkpoint, load_gpt, save_gpt, CpuBackend, Gpt, GptConfig, ModelError,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tokens(values: &[i64]) -> Tensor<CpuBackend, 2, Int> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [1, values.len()]),
        &Default::default(),
    )
}

#[test]
fn nanogpt_ckpt_loads_and_matches_the_numpy_forward() {
    let path = fixture("tiny_nanogpt_ckpt.pt");
    let info = inspect_gpt_checkpoint(&path).unwrap();
    // model_args supplies the head count no shape reveals (16 dims, 2 heads).
    assert_eq!(
        info.config,
        GptConfig::new()
            .with_block_size(8)
            .with_vocab_size(32)
            .with_n_layer(2)
            .with_n_head(2)
            .with_n_embd(16)
    );
    assert_eq!(info.top_level_key.as_deref(), Some("model"));
    assert_eq!(info.key_prefix, "_orig_mod.");
    let model: Gpt<CpuBackend> = load_gpt(&path, &Default::default()).unwrap();

    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny_nanogpt_logits.json")).unwrap(),
    )
    .unwrap();
    let ids: Vec<i64> = serde_json::from_value(expected["tokens"].clone()).unwrap();
    let rows: Vec<Vec<f32>> = serde_json::from_value(expected["logits"].clone()).unwrap();
    let want = Tensor::<CpuBackend, 2>::from_data(
        TensorData::new(rows.concat(), [rows.len(), rows[0].len()]),
        &Default::default(),
    );
    let got = model.forward(tokens(&ids)).squeeze_dim::<2>(0);
    let diff = max_abs_diff(got, want);
    assert!(diff < 1e-4, "logits differ from NanoGPT's by {diff}");
}

#[test]
fn our_checkpoint_round_trips_exactly() {
    let dir = scratch_dir("gpt-roundtrip");
    for (tag, config) in [
        ("tied", GptConfig::new()),
        (
            "untied",
            GptConfig::new().with_bias(true).with_tie_weights(false),
        ),
    ] {
        let config = config
            .with_block_size(12)
            .with_vocab_size(40)
            .with_n_layer(2)
            .with_n_head(4)
            .with_n_embd(8);
        let model: Gpt<CpuBackend> = config.init(&Default::default()).unwrap();
        let path = dir.join(format!("{tag}.safetensors"));
        save_gpt(&model, &path).unwrap();
        let loaded: Gpt<CpuBackend> = load_gpt(&path, &Default::default()).unwrap();
        assert_eq!(loaded.config(), config);
        let idx = Tensor::<CpuBackend, 2>::random(
            [2, 12],
            Distribution::Uniform(0.0, 40.0),
            &Default::default(),
        )
        .int();
        let diff = max_abs_diff(model.forward(idx.clone()), loaded.forward(idx));
        assert_eq!(diff, 0.0, "{tag}: outputs differ after the round trip");
    }
}

#[test]
fn export_has_nanogpts_keys_and_shapes_and_loads_back() {
    let source = fixture("tiny_nanogpt_ckpt.pt");
    let model: Gpt<CpuBackend> = load_gpt(&source, &Default::default()).unwrap();
    assert!(model.config().tie_weights);
    let path = scratch_dir("gpt-export").join("exported.safetensors");
    export_gpt(&model, &path).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let exported: BTreeMap<String, Vec<usize>> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    // The fixture's NanoGPT ran without flash attention: its causal masks
    // `attn.bias` are buffers that flash-attention NanoGPT does not have.
    let nanogpt: BTreeMap<String, Vec<usize>> = inspect_gpt_checkpoint(&source)
        .unwrap()
        .tensors
        .into_iter()
        .filter(|(name, _)| !name.ends_with(".attn.bias"))
        .collect();
    assert_eq!(exported, nanogpt);
    assert_eq!(
        file.tensor("lm_head.weight").unwrap().data(),
        file.tensor("transformer.wte.weight").unwrap().data()
    );

    let reloaded: Gpt<CpuBackend> = load_gpt(&path, &Default::default()).unwrap();
    let ids = tokens(&[3, 1, 4, 1, 5, 9, 2, 6]);
    let diff = max_abs_diff(model.forward(ids.clone()), reloaded.forward(ids));
    assert_eq!(diff, 0.0, "outputs differ after the export");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn a_vision_checkpoint_is_not_a_gpt() {
    let path = crate::util::golden("resnet18_blurpool.pt");
    let err = inspect_gpt_checkpoint(&path).err().unwrap();
    assert!(matches!(err, ModelError::UnknownArchitecture { .. }));
    assert!(err.to_string().contains("transformer.wte.weight"), "{err}");
}
