//! `model.train_only`: fine-tuning some parameters only (e.g. the new head,
//! `["fc"]`). The others get no gradient, hence no optimiser step, no
//! momentum and no weight decay, as PyTorch parameters with
//! `requires_grad = False`. BatchNorm running statistics still update in
//! training mode, as in PyTorch.

use std::collections::HashSet;

use anyhow::{bail, Result};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use models::{LayerPattern, Model};

/// The parameters outside every pattern of `train_only` (module globs as in
/// `[topography]`, matched against torchvision's module names, or against
/// full parameter names such as `fc.bias`). A pattern matching nothing is
/// an error.
pub fn frozen_parameters<B: Backend>(
    model: &Model<B>,
    train_only: &[String],
) -> Result<HashSet<ParamId>> {
    let names = models::torch_parameter_names(model);
    let module_of = |name: &str| name.rsplit_once('.').map_or("", |(m, _)| m).to_string();
    let mut trainable = HashSet::new();
    for text in train_only {
        let pattern = LayerPattern::new(text)?;
        let matched: Vec<ParamId> = names
            .iter()
            .filter(|(name, _)| pattern.matches(&module_of(name)) || pattern.matches(name))
            .map(|(_, id)| *id)
            .collect();
        if matched.is_empty() {
            let mut modules: Vec<String> = names.iter().map(|(n, _)| module_of(n)).collect();
            modules.dedup();
            bail!(
                "model.train_only: pattern {text:?} matches no module; the modules are: {}",
                modules.join(", ")
            );
        }
        trainable.extend(matched);
    }
    Ok(names
        .into_iter()
        .map(|(_, id)| id)
        .filter(|id| !trainable.contains(id))
        .collect())
}

/// Removes the gradients of the `frozen` parameters of `model`.
pub fn drop_frozen_gradients<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    frozen: &HashSet<ParamId>,
    grads: &mut GradientsParams,
) {
    let mut visitor = DropFrozen::<B> {
        frozen,
        grads,
        _backend: std::marker::PhantomData,
    };
    model.visit(&mut visitor);
}

struct DropFrozen<'a, B> {
    frozen: &'a HashSet<ParamId>,
    grads: &'a mut GradientsParams,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for DropFrozen<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.frozen.contains(&param.id) {
            self.grads.remove::<B::InnerBackend, D>(param.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;
    use models::{Architecture, ResNetConfig};

    fn tiny_resnet() -> Model<Cpu> {
        Architecture::ResNet(ResNetConfig::resnet18(4).with_width(4))
            .init(&Default::default())
            .unwrap()
    }

    #[test]
    fn only_the_matching_parameters_train() {
        let model = tiny_resnet();
        let names = models::torch_parameter_names(&model);
        let frozen = frozen_parameters(&model, &["fc".to_string()]).unwrap();
        let trainable: Vec<&str> = names
            .iter()
            .filter(|(_, id)| !frozen.contains(id))
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(trainable, ["fc.weight", "fc.bias"]);

        let frozen = frozen_parameters(&model, &["layer4.**".to_string()]).unwrap();
        let trainable = names.iter().filter(|(_, id)| !frozen.contains(id));
        assert!(trainable
            .clone()
            .all(|(name, _)| name.starts_with("layer4.")));
        assert!(trainable.count() > 10);
    }

    #[test]
    fn a_pattern_matching_nothing_is_an_error() {
        let error = frozen_parameters(&tiny_resnet(), &["head".to_string()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("model.train_only")
                && error.contains("\"head\"")
                && error.contains("fc"),
            "{error}"
        );
    }
}
