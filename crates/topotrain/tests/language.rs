//! The language-model commands end to end through the binary: `prep kjv`,
//! `fit` on a language config, `finetune` at LoRA ranks 2/4/8 and
//! `analyze prune|sheets|smoothness|dimensionality` on the GPT checkpoint. Needs Debian's bible-kjv
//! (scripts/setup.sh installs it).

use std::path::Path;

use crate::util::{export, read_tensors, topotrain, topotrain_ok};

/// Panics unless Debian's bible-kjv is installed.
fn require_bible() {
    test_support::require_package(Path::new("/usr/bin/bible"), "bible-kjv");
}

/// A one-block GPT; `head` is the section that says what to train (a `[gpt]`
/// section, or `base = ...` with `[lora]`).
fn config(head: &str, data: &Path, out: &Path, steps: usize) -> String {
    format!(
        r#"
{head}

[data]
dir = "{data}"

[optimizer]
lr = 1e-2
min_lr = 1e-3
warmup_steps = 1

[training]
steps = {steps}
batch_size = 4
grad_accum = 1
eval_every = {steps}
eval_batches = 2
log_every = 1

[output]
dir = "{out}"
"#,
        data = data.display(),
        out = out.display()
    )
}

/// `topotrain export` of each run directory (its last checkpoint, LoRA
/// merged) gives the tensors of its `final.safetensors` under NanoGPT's
/// names, plus the tied `lm_head.weight`.
fn export_runs_as_their_final_weights(dir: &Path, runs: &[&Path]) {
    for (index, run) in runs.iter().enumerate() {
        let out = dir.join(format!("export-{index}.safetensors"));
        export(run, &out);
        let mut exported = read_tensors(&out);
        let lm_head = exported.remove("lm_head.weight").expect("lm_head.weight");
        assert!(lm_head == exported["transformer.wte.weight"]);
        let fin = read_tensors(&run.join("final.safetensors"));
        assert!(
            exported == fin,
            "{}: the export differs from final.safetensors",
            run.display()
        );
    }
}

fn json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).expect("the command prints JSON")
}

#[test]
fn prep_fit_finetune_and_prune_through_the_binary() {
    require_bible();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("genesis");
    let data_arg = data.to_str().unwrap();
    topotrain_ok(&[
        "prep",
        "kjv",
        "--range",
        "gen1:1-gen4:26",
        "--out",
        data_arg,
    ]);
    assert!(data.join("train.bin").exists() && data.join("val.bin").exists());

    let run = dir.path().join("base");
    let base_config = dir.path().join("base.toml");
    let gpt =
        "[gpt]\nn_layer = 1\nn_head = 2\nn_embd = 32\nblock_size = 16\nvocab_size = 50257\n\n\
               [topography]\ntau = 1.0\nlayers = [{ patterns = [\"transformer.h.*.mlp.c_fc\"] }]";
    std::fs::write(&base_config, config(gpt, &data, &run, 3)).unwrap();
    // Language runs count steps, not epochs: --epochs is refused, not ignored.
    let refused = topotrain(&[
        "fit",
        "--config",
        base_config.to_str().unwrap(),
        "--epochs",
        "2",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--epochs"));
    // Data parallel over two (CPU) replicas, as for vision runs.
    let parallel = dir.path().join("parallel");
    let output = topotrain_ok(&[
        "fit",
        "--config",
        base_config.to_str().unwrap(),
        "--devices",
        "2",
        "--out",
        parallel.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("data parallel over 2 devices"));
    assert!(parallel.join("final.safetensors").exists());
    let summary = json(&topotrain_ok(&[
        "fit",
        "--config",
        base_config.to_str().unwrap(),
    ]));
    let base = run.join("final.safetensors");
    assert!(base.exists(), "fit wrote {}", base.display());
    assert!(summary["topo_layers"]["transformer.h.0.mlp.c_fc"].is_number());

    // LoRA on c_fc (32 -> 128): rank r adds r * (32 + 128) trainable weights.
    let lora_config = dir.path().join("lora.toml");
    let lora = format!(
        "base = \"{}\"\n\n[lora]\nrank = 4\nalpha = 8.0\ntargets = [\"mlp.c_fc\"]",
        base.display()
    );
    std::fs::write(&lora_config, config(&lora, &data, &run, 1)).unwrap();
    for rank in [2, 4, 8] {
        let out = dir.path().join(format!("lora_r{rank}"));
        let tuned = json(&topotrain_ok(&[
            "finetune",
            "--config",
            lora_config.to_str().unwrap(),
            "--rank",
            &rank.to_string(),
            "--out",
            out.to_str().unwrap(),
        ]));
        assert_eq!(tuned["lora_rank"], rank);
        assert_eq!(tuned["trainable_parameters"], rank * (32 + 128));
    }
    export_runs_as_their_final_weights(dir.path(), &[&run, &dir.path().join("lora_r4")]);

    // analyze prune recognises the GPT checkpoint and scores its val loss.
    let figures = dir.path().join("figures");
    let report = json(&topotrain_ok(&[
        "analyze",
        "prune",
        "--checkpoint",
        base.to_str().unwrap(),
        "--data",
        data_arg,
        "--sparsity",
        "0,0.5",
        "--batch",
        "4",
        "--eval-batches",
        "2",
        "--json",
        "--out",
        figures.to_str().unwrap(),
    ]));
    let variants = report["variants"].as_array().expect("variants");
    let l1: Vec<&serde_json::Value> = variants.iter().filter(|v| v["method"] == "l1").collect();
    assert_eq!(l1.len(), 2);
    let pruned = |v: &serde_json::Value| {
        v["params_total"].as_u64().unwrap() - v["params_kept"].as_u64().unwrap()
    };
    assert_eq!(pruned(l1[0]), 0);
    assert_eq!(pruned(l1[1]), 32 * 128 / 2);
    assert!(l1[0]["loss"].as_f64().unwrap().is_finite());
    assert!(
        l1[0].get("top1").is_none(),
        "a GPT has no accuracy: {}",
        l1[0]
    );
    // The default factors down-sample c_fc's 8 x 16 sheet too.
    assert_eq!(variants.len(), 4);
    assert!(figures.join("prune.json").exists());

    // Sheets and smoothness of c_fc (128 units: an 8 x 16 sheet), and the
    // effective dimensionality of its responses over token positions.
    let checkpoint = base.to_str().unwrap();
    let sheets = json(&topotrain_ok(&[
        "analyze",
        "sheets",
        "--checkpoint",
        checkpoint,
        "--json",
    ]));
    assert_eq!(sheets["layers"][0]["layer"], "transformer.h.0.mlp.c_fc");
    assert_eq!(sheets["layers"][0]["sheet_h"], 8);
    assert_eq!(sheets["layers"][0]["sheet_w"], 16);
    let smoothness = json(&topotrain_ok(&[
        "analyze",
        "smoothness",
        "--checkpoint",
        checkpoint,
        "--json",
    ]));
    assert!(smoothness["mean_score"].as_f64().unwrap().is_finite());
    let ed = json(&topotrain_ok(&[
        "analyze",
        "dimensionality",
        "--checkpoint",
        checkpoint,
        "--data",
        data_arg,
        "--max-images",
        "6",
        "--batch",
        "4",
        "--json",
    ]));
    assert_eq!(ed["timing"]["images"], 6 * 16, "6 windows of 16 tokens");
    assert_eq!(ed["layers"][0]["features"], 128);
    let value = ed["layers"][0]["effective_dimensionality"]
        .as_f64()
        .unwrap();
    assert!((1.0..=128.0).contains(&value), "ED {value}");
}
