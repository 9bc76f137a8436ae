//! End-to-end tests of `topotrain fit`, `eval` and `sweep` on Fashion-MNIST
//! (read from its IDX files; `apt-get install dataset-fashion-mnist`).
//! Runs are tiny: a width-8 ResNet-18, a few steps per epoch.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::util::{
    assert_success, fashion_config, require_fashion_mnist, topotrain, with_init_weights,
    FASHION_MNIST,
};

/// Two epochs of 6 steps, a checkpoint every 2 steps; `extra_training`
/// adds lines to `[training]`.
fn config(out: &Path, tau: f64, extra_training: &str) -> String {
    let training = format!(
        "epochs = 2
batch_size = 32
seed = 7
max_steps_per_epoch = 6
max_eval_batches = 4
eval_batch_size = 64
checkpoint_every_steps = 2
log_every_steps = 1
threads = 1
{extra_training}
"
    );
    fashion_config(out, true, tau, 1.0, &training)
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn fit(config: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["fit", "--quiet", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    topotrain(&args)
}

fn summary(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).unwrap()
}

/// The metrics log without wall-clock fields.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("images_per_sec");
            v
        })
        .collect()
}

fn assert_same_results(a: &Path, b: &Path) {
    let (sa, sb) = (summary(a), summary(b));
    for key in [
        "val_top1",
        "val_top5",
        "val_loss",
        "train_loss",
        "train_acc",
        "mean_topo_loss",
        "topo_layers",
        "steps",
    ] {
        assert_eq!(
            sa[key], sb[key],
            "{key} differs: {} vs {}",
            sa[key], sb[key]
        );
    }
    assert_eq!(metrics(a), metrics(b));
    assert_same_weights(&a.join("final.safetensors"), &b.join("final.safetensors"));
}

/// Every tensor bit for bit, and the same metadata. The files themselves
/// may differ: burn-store keeps the header's metadata in a `HashMap`, so its
/// order in the file changes from one process to the next.
fn assert_same_weights(a: &Path, b: &Path) {
    assert_same_tensors(a, b, |_| false);
}

/// [`assert_same_weights`] for the tensors `skip` does not name; returns
/// how many were compared.
fn assert_same_tensors(a: &Path, b: &Path, skip: impl Fn(&str) -> bool) -> usize {
    use safetensors::SafeTensors;
    let (bytes_a, bytes_b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let metadata = |bytes: &[u8]| {
        let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
        header.metadata().clone().unwrap_or_default()
    };
    assert_eq!(metadata(&bytes_a), metadata(&bytes_b), "metadata differs");
    let (ta, tb) = (
        SafeTensors::deserialize(&bytes_a).unwrap(),
        SafeTensors::deserialize(&bytes_b).unwrap(),
    );
    let mut names = ta.names();
    names.sort();
    let mut names_b = tb.names();
    names_b.sort();
    assert_eq!(names, names_b, "tensor names differ");
    assert!(!names.is_empty());
    let mut compared = 0;
    for name in names.into_iter().filter(|name| !skip(name)) {
        let (x, y) = (ta.tensor(name).unwrap(), tb.tensor(name).unwrap());
        assert_eq!(x.dtype(), y.dtype(), "{name}: dtype differs");
        assert_eq!(x.shape(), y.shape(), "{name}: shape differs");
        assert!(x.data() == y.data(), "final weights differ in {name}");
        compared += 1;
    }
    compared
}

#[test]
fn halt_mid_epoch_and_resume_matches_an_uninterrupted_run() {
    require_fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let resumed = dir.path().join("resumed");
    let a = write_config(dir.path(), "a.toml", &config(&straight, 1.0, ""));
    let b = write_config(dir.path(), "b.toml", &config(&resumed, 1.0, ""));
    assert_success(&fit(&a, &[]));

    // Step 9 is mid-epoch 2, one step after the step-8 checkpoint.
    let killed = fit(&b, &["--halt-after-steps", "9"]);
    assert!(!killed.status.success(), "the run should have halted");
    assert!(!resumed.join("summary.json").exists());
    let again = fit(&b, &[]);
    assert!(
        !again.status.success(),
        "restarting without --resume must refuse"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    // A truncated optimiser record is named by its checksum, with the
    // checkpoint before it to resume from.
    let checkpoints = resumed.join("checkpoints");
    let latest = std::fs::read_to_string(checkpoints.join("latest")).unwrap();
    let optim = checkpoints.join(latest.trim()).join("optim.mpk");
    let intact = std::fs::read(&optim).unwrap();
    std::fs::write(&optim, &intact[..intact.len() / 2]).unwrap();
    let damaged = fit(&b, &["--resume"]);
    assert!(!damaged.status.success());
    let stderr = String::from_utf8_lossy(&damaged.stderr);
    assert!(
        stderr.contains("optim.mpk is damaged")
            && stderr.contains("step-0000000006")
            && !stderr.contains("0.14"),
        "{stderr}"
    );
    std::fs::write(&optim, &intact).unwrap();
    assert_success(&fit(&b, &["--resume"]));
    assert_same_results(&straight, &resumed);
}

#[test]
fn sigkill_and_resume_matches_an_uninterrupted_run() {
    require_fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let killed = dir.path().join("killed");
    let a = write_config(dir.path(), "a.toml", &config(&straight, 2.0, ""));
    let b = write_config(dir.path(), "b.toml", &config(&killed, 2.0, ""));
    assert_success(&fit(&a, &[]));

    let mut child = Command::new(env!("CARGO_BIN_EXE_topotrain"))
        .args(["fit", "--quiet", "--config", b.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let latest = killed.join("checkpoints").join("latest");
    let start = Instant::now();
    while !latest.exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(latest.exists(), "no checkpoint within 2 minutes");
    assert_success(&fit(&b, &["--resume"]));
    assert_same_results(&straight, &killed);
}

/// Data parallelism as `training.devices` drives it, on two CPU replicas
/// (the CPU backend's one device, twice): each step's batch is split, the
/// shards' gradients summed. Its exactness against one device is the
/// trainer's unit test; here the whole run goes through it and resumes
/// exactly.
#[test]
fn two_replicas_train_and_resume_exactly() {
    require_fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let resumed = dir.path().join("resumed");
    let a = write_config(dir.path(), "a.toml", &config(&straight, 1.0, "devices = 2"));
    let b = write_config(dir.path(), "b.toml", &config(&resumed, 1.0, ""));
    let output = fit(&a, &[]);
    assert_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("data parallel over 2 devices"), "{stderr}");
    let steps = metrics(&straight)
        .iter()
        .filter(|line| line["kind"] == "train")
        .count();
    assert_eq!(steps, 12);
    assert!(summary(&straight)["train_loss"]
        .as_f64()
        .unwrap()
        .is_finite());
    // --devices overrides the config; halt mid-epoch 2 and resume.
    assert!(!fit(&b, &["--devices", "2", "--halt-after-steps", "9"])
        .status
        .success());
    assert_success(&fit(&b, &["--devices", "2", "--resume"]));
    assert_same_results(&straight, &resumed);
}

/// SIGTERM (what SLURM sends at a time limit) mid-run: the step finishes,
/// a checkpoint is written and named, the exit code is 143; resuming from
/// it gives the uninterrupted run.
#[test]
fn sigterm_checkpoints_and_resume_matches_an_uninterrupted_run() {
    require_fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let stopped = dir.path().join("stopped");
    let a = write_config(dir.path(), "a.toml", &config(&straight, 1.0, ""));
    let b = write_config(dir.path(), "b.toml", &config(&stopped, 1.0, ""));
    assert_success(&fit(&a, &["--epochs", "4"]));

    let child = Command::new(env!("CARGO_BIN_EXE_topotrain"))
        .args([
            "fit",
            "--quiet",
            "--epochs",
            "4",
            "--config",
            b.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Signal once the first step is logged.
    let metrics = stopped.join("metrics.jsonl");
    let start = Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|text| text.contains("\"train\"")) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no step was logged"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopped after step"), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    assert!(!stopped.join("summary.json").exists());
    assert_success(&fit(&b, &["--epochs", "4", "--resume"]));
    assert_same_results(&straight, &stopped);
}

/// Two processes train one run (`--nodes 2`), each on half of every batch,
/// gradients averaged between them each step: both log the same (averaged)
/// losses and end with the same weights; rank 1 writes `node1/`.
#[test]
fn two_nodes_train_one_run() {
    require_fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let path = write_config(dir.path(), "nodes.toml", &config(&run, 1.0, ""));
    // A port the system just handed out and took back (free unless another
    // program takes it in the moment before rank 0 binds it).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let spawn = |rank: &str| {
        Command::new(env!("CARGO_BIN_EXE_topotrain"))
            .args(["fit", "--quiet", "--config", path.to_str().unwrap()])
            .args(["--nodes", "2", "--node-rank", rank])
            .args(["--cluster-address", &address, "--cluster-timeout", "120"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (rank0, rank1) = (spawn("0"), spawn("1"));
    assert_success(&rank0.wait_with_output().unwrap());
    assert_success(&rank1.wait_with_output().unwrap());
    let node1 = run.join("node1");
    let train_losses = |dir: &Path| -> Vec<f64> {
        metrics(dir)
            .iter()
            .filter(|line| line["kind"] == "train")
            .map(|line| line["task_loss"].as_f64().unwrap())
            .collect()
    };
    let losses = train_losses(&run);
    assert_eq!(losses.len(), 12);
    assert_eq!(losses, train_losses(&node1));
    assert!(losses.iter().all(|l| l.is_finite()));
    // Same parameters bit for bit; BatchNorm's running statistics are each
    // node's own (as with PyTorch's DDP).
    let compared = assert_same_tensors(
        &run.join("final.safetensors"),
        &node1.join("final.safetensors"),
        |name| name.contains("running_") || name.contains("num_batches"),
    );
    assert!(compared > 40, "{compared} tensors compared");
}

/// Runs a fit of two epochs of `steps` steps with `extra_training` on
/// `device` in `dir` and checks that the loss of its last steps is below
/// that of its first; returns the run.
fn assert_loss_falls(dir: &Path, extra_training: &str, steps: usize, device: &str) -> PathBuf {
    let run = dir.join("run");
    let text = config(&run, 1.0, extra_training).replace(
        "max_steps_per_epoch = 6",
        &format!("max_steps_per_epoch = {steps}"),
    );
    let path = write_config(dir, "run.toml", &text);
    assert_success(&fit(&path, &["--device", device]));
    let losses: Vec<f64> = metrics(&run)
        .iter()
        .filter(|line| line["kind"] == "train")
        .map(|line| line["task_loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 2 * steps);
    let (first, last) = (
        losses[..3].iter().sum::<f64>(),
        losses[losses.len() - 3..].iter().sum::<f64>(),
    );
    assert!(last < first, "the loss does not fall: {losses:?}");
    run
}

/// bf16 convolutions over f32 weights train (on the CPU backend here; the
/// point of it is GPU speed).
#[test]
fn bf16_compute_trains() {
    require_fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    // With torchvision's init, 6 steps per epoch leave the model near chance.
    let run = assert_loss_falls(dir.path(), "precision = \"bf16\"", 20, "cpu");
    assert!(summary(&run)["val_top1"].as_f64().unwrap() > 0.2);
}

/// The GPU code paths of a whole run (Burn's fusion, conv-kernels' Conv2d
/// kernels, the device TopoLoss engine) on Burn's wgpu backend: on Mesa's
/// lavapipe where there is no GPU (scripts/setup.sh installs it). The loss
/// falls; the run's model evaluates on wgpu as on the CPU; and two more
/// training steps from its weights move every tensor on wgpu as they do on
/// the CPU. (With Burn's own convolutions, `training.conv_kernels = "burn"`,
/// whose strided input gradient is zero, that last part fails.)
#[cfg(feature = "wgpu")]
#[test]
fn a_run_on_wgpu_trains_and_evaluates_as_on_the_cpu() {
    require_fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    let run = assert_loss_falls(dir.path(), "", 6, "wgpu");
    let start = run.join("final.safetensors");
    let two_steps_on = |device: &str| -> PathBuf {
        let out = dir.path().join(format!("steps-{device}"));
        let training = "epochs = 1
batch_size = 32
seed = 11
max_steps_per_epoch = 2
max_eval_batches = 1
threads = 1
";
        let text = with_init_weights(&fashion_config(&out, true, 1.0, 0.0, training), &start);
        let path = write_config(dir.path(), &format!("steps-{device}.toml"), &text);
        assert_success(&fit(&path, &["--device", device]));
        out.join("final.safetensors")
    };
    assert_same_updates(&start, &two_steps_on("cpu"), &two_steps_on("wgpu"));
    let eval_on = |device: &str| -> serde_json::Value {
        let output = topotrain(&[
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            FASHION_MNIST,
            "--batch-size",
            "64",
            "--max-batches",
            "4",
            "--device",
            device,
        ]);
        assert_success(&output);
        let stdout = String::from_utf8_lossy(&output.stdout);
        serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
    };
    let (cpu, wgpu) = (eval_on("cpu"), eval_on("wgpu"));
    assert_eq!(cpu["top1"], wgpu["top1"]);
    let (cpu_loss, wgpu_loss) = (
        cpu["loss"].as_f64().unwrap(),
        wgpu["loss"].as_f64().unwrap(),
    );
    assert!((cpu_loss - wgpu_loss).abs() < 1e-4, "{cpu} vs {wgpu}");
}

/// Every tensor of `reference` and `other` moved from `start`, and `other`
/// differs from `reference` by at most 1% of the largest change in that
/// tensor (floating-point sums in another order, not a missing gradient).
#[cfg(feature = "wgpu")]
fn assert_same_updates(start: &Path, reference: &Path, other: &Path) {
    use safetensors::{Dtype, SafeTensors};
    let read = |path: &Path| -> std::collections::BTreeMap<String, Vec<f32>> {
        let bytes = std::fs::read(path).unwrap();
        let tensors = SafeTensors::deserialize(&bytes).unwrap();
        tensors
            .tensors()
            .into_iter()
            .filter(|(_, t)| t.dtype() == Dtype::F32)
            .map(|(name, t)| {
                let values = t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                (name, values)
            })
            .collect()
    };
    let (start, reference, other) = (read(start), read(reference), read(other));
    assert!(start.len() > 60, "too few tensors: {}", start.len());
    let largest_difference = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    for (name, initial) in &start {
        let (r, o) = (&reference[name], &other[name]);
        let change = largest_difference(initial, r);
        assert!(change > 0.0, "{name} did not change on the CPU");
        let difference = largest_difference(r, o);
        assert!(
            difference <= 0.01 * change,
            "{name}: the two runs differ by {difference:e}, the CPU run changed it by at most {change:e}"
        );
    }
}

#[test]
fn divergence_stops_with_the_step() {
    require_fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let text = config(&run, 1.0, "").replace("peak = 0.1", "peak = 1e30");
    let path = write_config(dir.path(), "c.toml", &text);
    let output = fit(&path, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("diverged at step"), "{stderr}");
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        config(&dir.path().join("run"), 1.0, "").replace("batch_size = 32", "batch_size = 0");
    let path = write_config(dir.path(), "bad.toml", &text);
    let output = fit(&path, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("training.batch_size"),
        "{stderr}"
    );
    let text = config(&dir.path().join("run"), 1.0, "devices = 64");
    let path = write_config(dir.path(), "devices.toml", &text);
    let output = fit(&path, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("training.devices = 64"),
        "{stderr}"
    );
    let text = config(&dir.path().join("run"), 1.0, "").replace("seed = 7", "sede = 7");
    let path = write_config(dir.path(), "typo.toml", &text);
    let output = fit(&path, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("sede"),
        "{stderr}"
    );
}

/// A missing file, and weights that do not fit the model, are errors naming
/// `model.init_weights` and the file.
#[test]
fn init_weights_errors_name_the_file() {
    require_fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    let not_a_resnet = dir.path().join("not_a_resnet.safetensors");
    let weights = vec![0u8; 4 * 8];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![8], &weights).unwrap();
    safetensors::serialize_to_file([("conv1.weight", view)], &None, &not_a_resnet).unwrap();
    for (name, file) in [
        ("missing", dir.path().join("missing.safetensors")),
        ("mismatch", not_a_resnet),
    ] {
        let text = with_init_weights(&config(&dir.path().join(name), 1.0, ""), &file);
        let path = write_config(dir.path(), &format!("{name}.toml"), &text);
        let output = fit(&path, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success()
                && stderr.contains("model.init_weights")
                && stderr.contains(file.file_name().unwrap().to_str().unwrap()),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn sweep_runs_each_tau_once_then_eval_reads_the_runs() {
    require_fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("sweep");
    let path = write_config(
        dir.path(),
        "base.toml",
        &config(&base, 1.0, "").replace("epochs = 2", "epochs = 1"),
    );
    let args = [
        "sweep",
        "--quiet",
        "--config",
        path.to_str().unwrap(),
        "--tau",
        "0,5",
    ];
    let first = topotrain(&args);
    assert_success(&first);
    let table = std::fs::read_to_string(base.join("sweep.md")).unwrap();
    assert!(
        table.contains("| 0 |") && table.contains("| 5 |"),
        "{table}"
    );
    let rows: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("sweep.json")).unwrap()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    // Finished runs are not trained again.
    let second = topotrain(&args);
    assert_success(&second);
    assert!(String::from_utf8_lossy(&second.stderr).contains("finished earlier"));

    // eval on the run directory and on the exported safetensors agree.
    let run = base.join("tau_5");
    let eval = |checkpoint: &Path, extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["eval", "--checkpoint", checkpoint.to_str().unwrap()];
        args.extend_from_slice(&[
            "--data",
            FASHION_MNIST,
            "--max-batches",
            "4",
            "--batch-size",
            "64",
        ]);
        args.extend_from_slice(extra);
        let output = topotrain(&args);
        assert_success(&output);
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let x = eval(&run, &[]);
    let y = eval(
        &run.join("final.safetensors"),
        &[
            "--mean",
            "72.94",
            "--std",
            "90.02",
            "--res",
            "28",
            "--crop-ratio",
            "1.0",
        ],
    );
    assert_eq!(x["top1"], y["top1"]);
    assert_eq!(x["top1"], summary(&run)["val_top1"]);
    // The run's config has no data.val_tta, so neither has its eval;
    // `--tta flip` adds each image's mirror, and says so.
    assert_eq!(x["tta"], "none");
    assert_eq!(summary(&run)["val_tta"], "none");
    // A full disk is named with the file that could not be written.
    let full = topotrain(&[
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--data",
        FASHION_MNIST,
        "--max-batches",
        "1",
        "--json",
        "/dev/full",
    ]);
    let message = String::from_utf8_lossy(&full.stderr);
    assert!(
        !full.status.success()
            && message.contains("/dev/full")
            && message.contains("No space left"),
        "{message}"
    );
    let flipped = eval(&run, &["--tta", "flip"]);
    assert_eq!(flipped["tta"], "flip");
    assert_eq!(flipped["images"], x["images"]);
    assert_ne!(flipped["loss"], x["loss"]);
}

/// Outside a terminal (a batch job, a pipe) `fit` prints a plain line per
/// `log_every_steps` steps; TopoLoss is named the same way in the lines,
/// the metrics and the summary; TensorBoard gets the metrics too; the
/// summary says how many validation images its accuracies rest on; `plot`
/// draws the curves; and `inspect` reads the run directory.
#[test]
fn a_batch_job_logs_lines_events_and_plots_and_inspect_reads_the_run() {
    require_fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let path = write_config(dir.path(), "a.toml", &config(&run, 2.0, ""));
    let output = topotrain(&["fit", "--config", path.to_str().unwrap(), "--epochs", "1"]);
    assert_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(lines.len(), 6, "{stderr}");
    assert!(
        lines[5].starts_with("step 6/6 epoch 1/1 (6/6) loss ")
            && lines[5].contains(" acc ")
            && lines[5].contains(" TopoLoss ")
            && lines[5].contains("(tau-weighted ")
            && lines[5].contains(" images/s eta 0:00:00"),
        "{}",
        lines[5]
    );

    let summary = summary(&run);
    assert_eq!(summary["val_images"], 4 * 64);
    let train_lines: Vec<serde_json::Value> = metrics(&run)
        .into_iter()
        .filter(|l| l["kind"] == "train")
        .collect();
    assert_eq!(train_lines.len(), 6);
    let last = &train_lines[5];
    // Mean over layers at tau = 1, and the tau-weighted value (tau 2, the
    // layers' mean) added to the loss.
    let (mean, weighted) = (
        last["mean_topo_loss"].as_f64().unwrap(),
        last["weighted_topo_loss"].as_f64().unwrap(),
    );
    assert!((weighted - 2.0 * mean).abs() < 1e-9 * weighted, "{last}");
    let epoch_line = metrics(&run)
        .into_iter()
        .find(|l| l["kind"] == "epoch")
        .unwrap();
    assert_eq!(epoch_line["mean_topo_loss"], summary["mean_topo_loss"]);
    assert_eq!(epoch_line["val_samples"], 4 * 64);

    // `inspect` reads the run directory and reports the run's own layers,
    // with the TopoLoss the run ended with.
    let inspected = topotrain(&["inspect", "--checkpoint", run.to_str().unwrap(), "--json"]);
    assert_success(&inspected);
    let layers: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    let run_layers = summary["topo_layers"].as_object().unwrap();
    assert_eq!(layers.as_array().unwrap().len(), run_layers.len());
    for layer in layers.as_array().unwrap() {
        let name = layer["name"].as_str().unwrap();
        let (got, want) = (
            layer["topo_loss"].as_f64().unwrap(),
            run_layers[name].as_f64().unwrap(),
        );
        assert!((got - want).abs() <= 1e-6 * want, "{name}: {got} vs {want}");
    }

    // A checkpoint's model.mpk stands for its checkpoint; a damaged one is
    // named, not read.
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let model = run
        .join("checkpoints")
        .join(latest.trim())
        .join("model.mpk");
    assert_success(&topotrain(&[
        "inspect",
        "--checkpoint",
        model.to_str().unwrap(),
    ]));
    let mut bytes = std::fs::read(&model).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&model, bytes).unwrap();
    let damaged = topotrain(&["inspect", "--checkpoint", run.to_str().unwrap()]);
    let message = String::from_utf8_lossy(&damaged.stderr);
    assert!(
        !damaged.status.success() && message.contains("model.mpk is damaged"),
        "{message}"
    );

    // `plot` draws the run's curves, PNG and SVG, with their data.
    assert_success(&topotrain(&["plot", "--run", run.to_str().unwrap()]));
    for stem in ["loss", "accuracy", "topoloss", "lr"] {
        for ext in ["png", "svg"] {
            let figure = run.join("plots").join(format!("{stem}.{ext}"));
            assert!(figure.is_file(), "no {}", figure.display());
        }
    }
    let curves: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("plots/curves.json")).unwrap()).unwrap();
    let loss = &curves[0]["series"][0]["points"];
    assert_eq!(loss.as_array().unwrap().len(), 6, "{loss}");

    let events: Vec<_> = std::fs::read_dir(run.join("tensorboard"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let name = events[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let bytes = std::fs::read(&events[0]).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    for tag in ["train/task_loss", "train/mean_topo_loss", "epoch/val_top1"] {
        assert!(text.contains(tag), "no {tag} in {name}");
    }
}
