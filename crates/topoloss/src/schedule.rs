//! Schedules for tau, the weight of the TopoLoss, over training steps.

use crate::TopoError;

/// Tau as a function of the optimiser step.
///
/// In a config: a plain number (`tau = 10.0`), `{ kind = "constant", value = 10.0 }`,
/// `{ kind = "linear", from = 0.0, to = 10.0, steps = 1000 }` (a warm-up when
/// `from < to`), `{ kind = "cosine", from = 10.0, to = 1.0, steps = 5000 }`, or
/// `{ kind = "chain", stages = [...] }` where each stage but the last runs for
/// its `steps` and the last one holds on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TauSchedule {
    Constant {
        value: f64,
        #[serde(default)]
        steps: Option<u64>,
    },
    Linear {
        from: f64,
        to: f64,
        steps: u64,
    },
    Cosine {
        from: f64,
        to: f64,
        steps: u64,
    },
    Chain {
        stages: Vec<TauSchedule>,
    },
}

impl TauSchedule {
    pub fn constant(value: f64) -> Self {
        TauSchedule::Constant { value, steps: None }
    }

    /// Tau at optimiser step `step` (0-based).
    pub fn value(&self, step: u64) -> f64 {
        match self {
            TauSchedule::Constant { value, .. } => *value,
            TauSchedule::Linear { from, to, steps } => {
                let progress = progress(step, *steps);
                from + (to - from) * progress
            }
            TauSchedule::Cosine { from, to, steps } => {
                let progress = progress(step, *steps);
                to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            TauSchedule::Chain { stages } => {
                let mut start = 0;
                for (index, stage) in stages.iter().enumerate() {
                    let length = stage.duration();
                    let is_last = index + 1 == stages.len();
                    match length {
                        Some(length) if !is_last && step >= start + length => start += length,
                        _ => return stage.value(step - start),
                    }
                }
                0.0
            }
        }
    }

    /// Steps this schedule lasts when it is a stage of a chain.
    fn duration(&self) -> Option<u64> {
        match self {
            TauSchedule::Constant { steps, .. } => *steps,
            TauSchedule::Linear { steps, .. } | TauSchedule::Cosine { steps, .. } => Some(*steps),
            TauSchedule::Chain { stages } => stages.iter().map(|s| s.duration()).sum(),
        }
    }

    /// Checks values a user could get wrong; the message names the problem.
    pub fn validate(&self) -> Result<(), TopoError> {
        let bad = |text: String| Err(TopoError::InvalidSchedule(text));
        match self {
            TauSchedule::Constant { value, .. } if !(value.is_finite() && *value >= 0.0) => bad(
                format!("constant tau must be a finite number >= 0, got {value}"),
            ),
            TauSchedule::Linear { from, to, .. } | TauSchedule::Cosine { from, to, .. }
                if !(from.is_finite() && to.is_finite() && *from >= 0.0 && *to >= 0.0) =>
            {
                bad(format!(
                    "tau endpoints must be finite numbers >= 0, got from = {from}, to = {to}"
                ))
            }
            TauSchedule::Chain { stages } if stages.is_empty() => {
                bad("a chain needs at least one stage".to_string())
            }
            TauSchedule::Chain { stages } => {
                for (index, stage) in stages.iter().enumerate() {
                    if index + 1 < stages.len() && stage.duration().is_none() {
                        return bad(format!(
                            "stage {} of the chain has no `steps`, so the stages after it would never run",
                            index + 1
                        ));
                    }
                    stage.validate()?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// What a config may write for a schedule: a number or a tagged table.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ScheduleText {
    Number(f64),
    Table(TauSchedule),
}

impl ScheduleText {
    fn into_schedule(self) -> Result<TauSchedule, TopoError> {
        let schedule = match self {
            ScheduleText::Number(value) => TauSchedule::constant(value),
            ScheduleText::Table(schedule) => schedule,
        };
        schedule.validate()?;
        Ok(schedule)
    }
}

/// `#[serde(deserialize_with = ...)]` for a config's tau: a number or a
/// schedule table, validated.
pub fn deserialize_tau<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<TauSchedule, D::Error> {
    use serde::de::Error;
    let text: ScheduleText = serde::Deserialize::deserialize(deserializer)?;
    text.into_schedule().map_err(D::Error::custom)
}

/// Like [`deserialize_tau`], for an optional tau.
pub fn deserialize_optional_tau<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<TauSchedule>, D::Error> {
    use serde::de::Error;
    let text: Option<ScheduleText> = serde::Deserialize::deserialize(deserializer)?;
    text.map(ScheduleText::into_schedule)
        .transpose()
        .map_err(D::Error::custom)
}

fn progress(step: u64, steps: u64) -> f64 {
    if steps == 0 {
        1.0
    } else {
        (step as f64 / steps as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_warm_up_then_holds() {
        let schedule = TauSchedule::Linear {
            from: 0.0,
            to: 10.0,
            steps: 100,
        };
        assert_eq!(schedule.value(0), 0.0);
        assert_eq!(schedule.value(50), 5.0);
        assert_eq!(schedule.value(100), 10.0);
        assert_eq!(schedule.value(1000), 10.0);
    }

    #[test]
    fn cosine_decays_from_start_to_end() {
        let schedule = TauSchedule::Cosine {
            from: 10.0,
            to: 2.0,
            steps: 100,
        };
        assert!((schedule.value(0) - 10.0).abs() < 1e-12);
        assert!((schedule.value(50) - 6.0).abs() < 1e-12);
        assert!((schedule.value(100) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn chain_runs_stages_in_order() {
        let schedule: TauSchedule = serde_json::from_str(
            r#"{"kind": "chain", "stages": [
                {"kind": "linear", "from": 0.0, "to": 4.0, "steps": 4},
                {"kind": "constant", "value": 4.0, "steps": 2},
                {"kind": "cosine", "from": 4.0, "to": 0.0, "steps": 10}
            ]}"#,
        )
        .unwrap();
        schedule.validate().unwrap();
        let values: Vec<f64> = (0..7).map(|s| schedule.value(s)).collect();
        assert_eq!(values, vec![0.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0]);
        assert!((schedule.value(11) - 2.0).abs() < 1e-12);
        assert_eq!(schedule.value(100), 0.0);
    }

    #[derive(Debug, serde::Deserialize)]
    struct Config {
        #[serde(deserialize_with = "deserialize_tau")]
        tau: TauSchedule,
    }

    #[test]
    fn a_plain_number_is_a_constant_and_bad_values_fail_to_parse() {
        let config: Config = serde_json::from_str(r#"{"tau": 10.0}"#).unwrap();
        assert_eq!(config.tau, TauSchedule::constant(10.0));
        let table: Config = serde_json::from_str(
            r#"{"tau": {"kind": "linear", "from": 0.0, "to": 1.0, "steps": 5}}"#,
        )
        .unwrap();
        assert_eq!(table.tau.value(5), 1.0);
        let negative = serde_json::from_str::<Config>(r#"{"tau": -1.0}"#).unwrap_err();
        assert!(negative.to_string().contains(">= 0"), "{negative}");
        assert!(
            serde_json::from_str::<Config>(r#"{"tau": {"kind": "linear", "from": 0.0}}"#).is_err()
        );
    }

    #[test]
    fn invalid_schedules_are_reported() {
        assert!(TauSchedule::constant(-1.0).validate().is_err());
        assert!(TauSchedule::constant(f64::NAN).validate().is_err());
        assert!(TauSchedule::Chain { stages: vec![] }.validate().is_err());
        let open_ended_middle = TauSchedule::Chain {
            stages: vec![TauSchedule::constant(1.0), TauSchedule::constant(2.0)],
        };
        let error = open_ended_middle.validate().unwrap_err().to_string();
        assert!(error.contains("stage 1"), "{error}");
    }
}
