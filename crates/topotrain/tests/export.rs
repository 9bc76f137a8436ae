//! `topotrain export` (any checkpoint to a PyTorch state dict in
//! safetensors) and fine-tuning from a checkpoint with another number of
//! classes (`model.init_weights`, the head re-initialised).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::util::{
    assert_success, export, fashion_config, golden, read_tensors, require_fashion_mnist, topotrain,
    topotrain_ok, with_init_weights,
};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// Names and shapes of a safetensors file's tensors.
fn shapes(path: &Path) -> BTreeMap<String, Vec<usize>> {
    read_tensors(path)
        .into_iter()
        .map(|(name, (shape, _))| (name, shape))
        .collect()
}

/// The raw bytes of the logits `topotrain activations` gives for `input`.
fn logits(checkpoint: &Path, input: &Path, out: &Path) -> Vec<u8> {
    topotrain_ok(&[
        "activations",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(out).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensor("logits").unwrap().data().to_vec()
}

/// The golden torchvision BlurPool ResNet-18 (`.pt`) exports to exactly its
/// own keys and shapes (BatchNorm counters included), and the export gives
/// the same logits as the original.
#[test]
fn golden_resnet_exports_to_its_torchvision_state_dict() {
    let dir = tempfile::tempdir().unwrap();
    let source = golden("resnet18_blurpool.pt");
    let out = dir.path().join("resnet18_blurpool.safetensors");
    export(&source, &out);
    let expected = models::inspect_checkpoint(&source).unwrap().tensors;
    assert_eq!(shapes(&out), expected);

    let input = golden("resnet18_blurpool_io.safetensors");
    let original = logits(&source, &input, &dir.path().join("original.safetensors"));
    let exported = logits(&out, &input, &dir.path().join("exported.safetensors"));
    assert!(original == exported, "the export changed the logits");
}

/// The error output of an export that must fail.
fn export_error(checkpoint: &Path, out: &Path) -> String {
    let output = topotrain(&[
        "export",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !output.status.success(),
        "the export of {checkpoint:?} succeeded"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn export_refuses_a_pt_out_and_a_missing_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let pt = dir.path().join("model.pt");
    let stderr = export_error(&golden("resnet18_blurpool.pt"), &pt);
    assert!(stderr.contains("safetensors only"), "{stderr}");
    assert!(!pt.exists());

    let missing = dir.path().join("no-such-run");
    let stderr = export_error(&missing, &dir.path().join("out.safetensors"));
    assert!(stderr.contains("no-such-run"), "{stderr}");
}

/// Two steps of a ResNet-18 with `classes` outputs on Fashion-MNIST, its
/// config edited by `edit` (width 8 as written); returns the run directory
/// and the output of `topotrain fit`.
fn tiny_run(
    dir: &Path,
    name: &str,
    classes: usize,
    edit: impl Fn(String) -> String,
) -> (PathBuf, std::process::Output) {
    let out = dir.join(name);
    let training = "epochs = 1
batch_size = 32
seed = 5
max_steps_per_epoch = 2
max_eval_batches = 1
checkpoint_every_steps = 2
threads = 1
";
    let text = fashion_config(&out, true, 1.0, 0.0, training)
        .replace("num_classes = 10", &format!("num_classes = {classes}"));
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, edit(text)).unwrap();
    let output = topotrain(&["fit", "--quiet", "--config", config.to_str().unwrap()]);
    (out, output)
}

/// A `[1, 1, 28, 28]` input for `topotrain activations`.
fn fashion_input(path: &Path) {
    let values: Vec<u8> = (0..28 * 28)
        .flat_map(|i| ((i % 17) as f32 / 8.0 - 1.0).to_le_bytes())
        .collect();
    let view = TensorView::new(Dtype::F32, vec![1, 1, 28, 28], &values).unwrap();
    safetensors::serialize_to_file([("input", view)], &None, path).unwrap();
}

/// A run directory, its checkpoint (folder and `model.mpk`) and its
/// `final.safetensors` all export to the same state dict, with the run's
/// logits; a 12-class export then starts a 10-class run with a new head
/// (trained alone, `train_only = ["fc"]`), while a wider network is still
/// refused.
#[test]
fn run_checkpoints_export_and_fine_tune_with_a_new_head() {
    require_fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    let (run, output) = tiny_run(dir.path(), "pretrain", 12, |text| text);
    assert_success(&output);
    let checkpoint = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("state.json").exists())
        .expect("a checkpoint folder");
    let sources = [
        run.clone(),
        checkpoint.clone(),
        checkpoint.join("model.mpk"),
        run.join("final.safetensors"),
    ];
    let input = dir.path().join("input.safetensors");
    fashion_input(&input);
    let expected = logits(&run, &input, &dir.path().join("run-logits.safetensors"));
    for (index, source) in sources.iter().enumerate() {
        let out = dir.path().join(format!("export-{index}.safetensors"));
        export(source, &out);
        let names = shapes(&out);
        assert_eq!(names["fc.weight"], [12, 64], "{}", source.display());
        assert_eq!(names["bn1.num_batches_tracked"], Vec::<usize>::new());
        let got = logits(
            &out,
            &input,
            &dir.path().join(format!("logits-{index}.safetensors")),
        );
        assert!(got == expected, "{}: other logits", source.display());
    }

    let pretrained = dir.path().join("export-0.safetensors");
    let from_pretrained = |text: String| with_init_weights(&text, &pretrained);
    let head_only = |text: String| {
        from_pretrained(text).replace("[model]\n", "[model]\ntrain_only = [\"fc\"]\n")
    };
    let (finetuned, output) = tiny_run(dir.path(), "finetune", 10, head_only);
    assert_success(&output);
    // Only the head trained: every other parameter is the pretrained one
    // (BatchNorm running statistics still follow the data).
    let (before, after) = (
        read_tensors(&pretrained),
        read_tensors(&finetuned.join("final.safetensors")),
    );
    let frozen = after
        .keys()
        .filter(|name| !name.starts_with("fc.") && !name.contains(".running_"));
    assert!(frozen.clone().count() > 60);
    for name in frozen {
        assert!(before[name] == after[name], "{name} changed");
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = format!(
        "init_weights: fc has 12 classes in {}, the config asks for 10: fc re-initialised",
        pretrained.display()
    );
    assert!(stderr.contains(&line), "{stderr}");

    let wider = |text: String| from_pretrained(text.replace("width = 8", "width = 16"));
    let (_, output) = tiny_run(dir.path(), "wider", 10, wider);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("conv1.weight")
            && stderr.contains("model.init_weights"),
        "{stderr}"
    );
}
