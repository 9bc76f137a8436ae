//! `topotrain inspect` on the published-layout ResNet-18 (BlurPool) must
//! reproduce the reference package's per-layer TopoLoss.

use std::process::Command;
use test_support::golden;

fn topotrain(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_topotrain"))
        .args(args)
        .output()
        .expect("run topotrain")
}

#[test]
fn inspect_matches_the_reference_topoloss_of_every_layer() {
    let checkpoint = golden("resnet18_blurpool.pt");
    let output = topotrain(&[
        "inspect",
        checkpoint.to_str().unwrap(),
        "--factor",
        "3",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let layers: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let layers = layers.as_array().unwrap();
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden("golden.json")).unwrap()).unwrap();
    let reference = golden["resnet18"]["topoloss_per_layer"]
        .as_object()
        .unwrap();
    assert_eq!(
        layers.len(),
        reference.len(),
        "every Conv2d/Linear layer is reported"
    );
    for layer in layers {
        let name = layer["name"].as_str().unwrap();
        let expected = reference[name]["loss"].as_f64().unwrap();
        let got = layer["topo_loss"].as_f64().unwrap();
        assert!(
            (got - expected).abs() <= 1e-4 * expected,
            "{name}: {got} vs {expected}"
        );
        assert_eq!(layer["factor"].as_f64(), Some(3.0), "{name}");
        let units = layer["sheet_h"].as_u64().unwrap() * layer["sheet_w"].as_u64().unwrap();
        assert!(
            units == 1000 || units.is_power_of_two(),
            "{name}: {units} units"
        );
    }
}

#[test]
fn inspect_clamps_the_factor_and_filters_layers() {
    let checkpoint = golden("resnet18_blurpool.pt");
    let output = topotrain(&[
        "inspect",
        checkpoint.to_str().unwrap(),
        "--factor",
        "12",
        "--layers",
        "conv1,fc",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let layers: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let factors: Vec<(String, f64)> = layers
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                l["factor"].as_f64().unwrap(),
            )
        })
        .collect();
    // conv1 has 64 units (8 x 8): 12 clamps to 8; fc has 1000 (25 x 40): stays 12.
    assert_eq!(
        factors,
        vec![("conv1".to_string(), 8.0), ("fc".to_string(), 12.0)]
    );
}

#[test]
fn inspect_errors_are_clear() {
    let missing = topotrain(&["inspect", "/nonexistent/model.pt", "--json"]);
    assert!(!missing.status.success());
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(message.contains("/nonexistent/model.pt"), "{message}");
    assert!(!message.contains("panicked"), "{message}");

    let checkpoint = golden("resnet18_blurpool.pt");
    let wrong_arch = topotrain(&[
        "inspect",
        checkpoint.to_str().unwrap(),
        "--arch",
        "resnet50",
    ]);
    assert!(!wrong_arch.status.success());
    assert!(String::from_utf8_lossy(&wrong_arch.stderr).contains("--arch resnet50"));

    let bad_layer = topotrain(&["inspect", checkpoint.to_str().unwrap(), "--layers", "bn1"]);
    assert!(!bad_layer.status.success());
    let message = String::from_utf8_lossy(&bad_layer.stderr);
    assert!(
        message.contains("bn1") && message.contains("not Conv2d or Linear"),
        "{message}"
    );
}
