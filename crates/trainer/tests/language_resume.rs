//! A language run halted like a kill resumes to the same weights as an
//! uninterrupted one.

use std::path::Path;

use data_prep::text::{kjv_text, prep_text};
use trainer::language::{fit_language, LanguageConfig};
use trainer::FitOptions;

use crate::util::{burn_rng, config_text, tensors};

#[test]
fn a_halted_language_run_resumes_to_the_same_weights() {
    let _rng = burn_rng();
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
