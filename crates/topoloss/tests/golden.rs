//! Parity with the authors' `topoloss` 0.0.2 package: losses and gradients
//! computed by it in float64 (../shared/golden, made for this project).

use std::path::PathBuf;

use safetensors::SafeTensors;
use topoloss::{Interpolation, LayerTopoLoss, SheetSource};

fn golden_dir() -> PathBuf {
    test_support::shared("golden")
}

fn f64_tensor(tensors: &SafeTensors, name: &str) -> (Vec<f64>, Vec<usize>) {
    let view = tensors
        .tensor(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(view.dtype(), safetensors::Dtype::F64, "{name}");
    let values = view
        .data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (values, view.shape().to_vec())
}

/// Largest absolute difference relative to the largest reference magnitude.
fn relative_error(ours: &[f64], reference: &[f64]) -> f64 {
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(reference)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

struct Case {
    name: String,
    layer: LayerTopoLoss,
    tau: f64,
    loss: f64,
    weight: Vec<f64>,
    grad: Vec<f64>,
}

fn load_cases() -> Vec<Case> {
    let dir = golden_dir();
    let description: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("golden.json")).expect("../shared/golden/golden.json"),
    )
    .unwrap();
    let bytes = std::fs::read(dir.join("topoloss_cases.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let cases = description["cases"].as_array().unwrap();
    assert!(cases.len() >= 10, "golden.json lists {} cases", cases.len());
    cases
        .iter()
        .map(|case| {
            let name = case["name"].as_str().unwrap().to_string();
            let (weight, shape) = f64_tensor(&tensors, &format!("{name}.weight"));
            let (grad, _) = f64_tensor(&tensors, &format!("{name}.grad"));
            let unit_len = shape[1..].iter().product();
            let mode: Interpolation = case["interpolation"].as_str().unwrap().parse().unwrap();
            let layer = LayerTopoLoss::new(
                shape[0],
                unit_len,
                SheetSource::Weight,
                case["factor_h"].as_f64().unwrap(),
                case["factor_w"].as_f64().unwrap(),
                mode,
            )
            .unwrap();
            assert_eq!(
                layer.sheet().height as u64,
                case["sheet_h"].as_u64().unwrap()
            );
            assert_eq!(
                layer.sheet().width as u64,
                case["sheet_w"].as_u64().unwrap()
            );
            Case {
                name,
                layer,
                tau: case["tau"].as_f64().unwrap(),
                loss: case["loss"].as_f64().unwrap(),
                weight,
                grad,
            }
        })
        .collect()
}

/// Runs every case in precision `T` and checks loss and gradient against the
/// reference to `tolerance` (relative).
fn check_cases<T: topoloss::Real>(tolerance: f64) {
    for case in load_cases() {
        let weight: Vec<T> = case
            .weight
            .iter()
            .map(|&v| T::from_f64(v).unwrap())
            .collect();
        let mut grad = vec![T::zero(); weight.len()];
        let loss = case
            .layer
            .loss_and_grad(&weight, case.tau, &mut grad)
            .unwrap();
        let grad: Vec<f64> = grad.iter().map(|v| v.to_f64().unwrap()).collect();
        let loss_error = (loss - case.loss).abs() / case.loss.abs();
        let grad_error = relative_error(&grad, &case.grad);
        println!(
            "{}: loss rel err {loss_error:.2e}, grad rel err {grad_error:.2e}",
            case.name
        );
        assert!(
            loss_error < tolerance,
            "{}: loss {loss} vs {}",
            case.name,
            case.loss
        );
        assert!(
            grad_error < tolerance,
            "{}: gradient relative error {grad_error}",
            case.name
        );
        let forward_only = case.layer.loss(&weight, case.tau).unwrap();
        assert!(
            (forward_only - loss).abs() <= 1e-9 * loss.abs(),
            "{}",
            case.name
        );
    }
}

#[test]
fn losses_and_gradients_match_the_reference_in_f64() {
    check_cases::<f64>(1e-6);
}

#[test]
fn losses_and_gradients_match_the_reference_in_f32() {
    check_cases::<f32>(1e-4);
}
