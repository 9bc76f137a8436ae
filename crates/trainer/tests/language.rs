//! A tiny topographic GPT trains on a slice of the embedded corpus (the KJV
//! from Debian's bible-kjv, installed by scripts/setup.sh), then LoRA
//! fine-tuning changes nothing but the adapted layers, and pruning runs.

use std::collections::BTreeMap;
use std::path::Path;

use data_prep::text::{kjv_text, prep_text};
use trainer::language::{fit_language, open_tokens, prune_curve, LanguageConfig};
use trainer::FitOptions;

fn config_text(data: &Path, out: &Path) -> String {
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

fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect()
}

#[test]
fn tiny_gpt_trains_then_lora_changes_only_the_adapted_layers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("genesis");
    let text = kjv_text("gen1:1-gen12:20").unwrap();
    assert!(text.starts_with("In the beginning God created"));
    prep_text(&text, "Genesis 1-12", &data, 0.2).unwrap();

    // Training: validation loss falls, metrics carry perplexity and TopoLoss.
    let run = dir.path().join("pre");
    let config = LanguageConfig::parse(&config_text(&data, &run)).unwrap();
    let summary =
        fit_language::<trainer::CpuTrain>(&config, Default::default(), &FitOptions::default())
            .unwrap();
    assert!(
        summary.val_loss < summary.initial_val_loss - 1.0,
        "val loss {} -> {}",
        summary.initial_val_loss,
        summary.val_loss
    );
    assert_eq!(summary.topo_layers.len(), 1);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let evals: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["val_loss"].is_number())
        .collect();
    let steps: Vec<u64> = evals.iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(
        steps,
        [0, 6, 12],
        "evaluations before training and after each epoch"
    );
    let (loss, ppl) = (&evals[2]["val_loss"], &evals[2]["val_perplexity"]);
    assert!((loss.as_f64().unwrap().exp() - ppl.as_f64().unwrap()).abs() < 1e-6);
    assert!(metrics.contains("\"topo_layers\":{\"transformer.h.0.mlp.c_fc\""));

    // LoRA on c_fc: the merged result differs from the base in c_fc only.
    let base = summary.final_weights.clone();
    let tuned = dir.path().join("lora");
    let lora_config = config_text(&data, &tuned)
        .replace(
            "[gpt]\nn_layer = 1\nn_head = 2\nn_embd = 32\nblock_size = 32\nvocab_size = 50257\n",
            &format!(
                "base = \"{}\"\n[lora]\nrank = 2\nalpha = 4.0\ntargets = [\"mlp.c_fc\"]\n",
                base.display()
            ),
        )
        .replace(
            "[topography]\ntau = 1.0\nlayers = [{ patterns = [\"transformer.h.*.mlp.c_fc\"] }]\n",
            "",
        )
        .replace("steps = 12", "steps = 4");
    let config = LanguageConfig::parse(&lora_config).unwrap();
    let tuned_summary =
        fit_language::<trainer::CpuTrain>(&config, Default::default(), &FitOptions::default())
            .unwrap();
    assert_eq!(tuned_summary.trainable_parameters, 2 * (32 + 128));
    assert_eq!(tuned_summary.lora_rank, Some(2));
    let (before, after) = (tensors(&base), tensors(&tuned_summary.final_weights));
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    let changed: Vec<&String> = before
        .keys()
        .filter(|name| before[*name] != after[*name])
        .collect();
    assert_eq!(changed, ["transformer.h.0.mlp.c_fc.weight"]);

    // Pruning: 0% is the unpruned model; 80% removes 80% of c_fc.
    let model: models::Gpt<trainer::Cpu> = models::load_gpt(&base, &Default::default()).unwrap();
    let (_, val) = open_tokens(&data, 50257).unwrap();
    let rows = prune_curve(
        &model,
        &["transformer.h.*.mlp.c_fc"],
        &[0.0, 0.8],
        &val,
        32,
        8,
        4,
    )
    .unwrap();
    assert_eq!(rows[0].pruned_weights, 0);
    assert_eq!(
        rows[1].pruned_weights,
        (0.8f64 * 32.0 * 128.0).round() as usize
    );
    assert!(rows[1].val_loss != rows[0].val_loss);
}

#[test]
fn a_halted_language_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("genesis");
    prep_text(
        &kjv_text("gen1:1-gen3:24").unwrap(),
        "Genesis 1-3",
        &data,
        0.2,
    )
    .unwrap();
    let config = |run: &Path| {
        let text = config_text(&data, run)
            .replace("steps = 12", "steps = 8")
            .replace(
                "eval_every = 6",
                "eval_every = 4\ncheckpoint_every_steps = 2",
            );
        LanguageConfig::parse(&text).unwrap()
    };
    let fit = |run: &Path, options: FitOptions| {
        fit_language::<trainer::CpuTrain>(&config(run), Default::default(), &options)
    };
    let straight = dir.path().join("straight");
    let straight = fit(&straight, FitOptions::default()).unwrap();

    // Halted after step 3, as a kill would leave it: step 2's checkpoint.
    let resumed = dir.path().join("resumed");
    let halt = FitOptions {
        halt_after_steps: Some(3),
        ..FitOptions::default()
    };
    assert!(fit(&resumed, halt).is_err());
    assert!(
        fit(&resumed, FitOptions::default()).is_err(),
        "needs --resume"
    );
    let resume = FitOptions {
        resume: true,
        ..FitOptions::default()
    };
    let resumed = fit(&resumed, resume).unwrap();
    assert_eq!(resumed.initial_val_loss, straight.initial_val_loss);
    assert_eq!(resumed.val_loss, straight.val_loss);
    assert_eq!(
        tensors(&resumed.final_weights),
        tensors(&straight.final_weights)
    );
}
