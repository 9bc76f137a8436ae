//! A tiny topographic GPT trains on a slice of the embedded corpus (the KJV
//! from Debian's bible-kjv, installed by scripts/setup.sh), then LoRA
//! fine-tuning changes nothing but the adapted layers.

use data_prep::text::{kjv_text, prep_text};
use trainer::language::{fit_language, LanguageConfig};
use trainer::FitOptions;

use crate::util::{burn_rng, config_text, tensors};

#[test]
fn tiny_gpt_trains_then_lora_changes_only_the_adapted_layers() {
    let _rng = burn_rng();
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
}
