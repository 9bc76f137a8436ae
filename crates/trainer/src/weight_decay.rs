//! L2 weight decay with BatchNorm parameters exempt, as in ffcv's
//! `train_imagenet.py`, which gives BatchNorm weights and biases their own
//! parameter group with `weight_decay = 0`. Burn's SGD decays every
//! parameter alike, so the trainer adds the penalty to the gradients itself
//! (`grad += penalty * param`, exactly what PyTorch's and Burn's SGD do
//! before momentum) and runs SGD without decay.
//!
//! ffcv selects its group by name (`'bn' in name`); here a parameter is
//! exempt when it belongs to a `BatchNorm` module, which also covers the
//! BatchNorm inside torchvision's `downsample` (named `downsample.1`), the
//! evident intent of that rule.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

use crate::sgd::scaled_add;

/// Which parameters a decay step touched (their module paths).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecayedParams {
    pub decayed: Vec<String>,
    pub exempt: Vec<String>,
}

/// Adds `penalty * param` to the gradient of every parameter of `model`
/// outside BatchNorm modules. Parameters without a gradient are left alone.
pub fn add_weight_decay<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    penalty: f64,
    grads: &mut GradientsParams,
) -> DecayedParams {
    let mut visitor = DecayVisitor::<B> {
        penalty: penalty as f32,
        grads,
        path: Vec::new(),
        touched: DecayedParams::default(),
        _backend: std::marker::PhantomData,
    };
    model.visit(&mut visitor);
    visitor.touched
}

struct DecayVisitor<'a, B> {
    penalty: f32,
    grads: &'a mut GradientsParams,
    /// (field name, type of the module holding that field).
    path: Vec<(String, String)>,
    touched: DecayedParams,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for DecayVisitor<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        // Module path without enum variants (`ResNet.`), like torchvision's.
        let name = self
            .path
            .iter()
            .filter(|(_, owner)| !owner.starts_with("Enum:"))
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(".");
        // The innermost container is the module that owns the parameter.
        let in_batch_norm = self
            .path
            .last()
            .is_some_and(|(_, owner)| owner == "Struct:BatchNorm");
        let grad = if in_batch_norm {
            self.touched.exempt.push(name);
            grad
        } else {
            self.touched.decayed.push(name);
            scaled_add(grad, 1.0, &param.val().inner(), self.penalty)
        };
        self.grads.register::<B::InnerBackend, D>(param.id, grad);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuTrain;
    use burn::module::AutodiffModule;
    use burn::tensor::TensorData;
    use models::{Architecture, Model};

    type Inner = <CpuTrain as AutodiffBackend>::InnerBackend;

    fn gradients(model: &Model<CpuTrain>) -> GradientsParams {
        let device = Default::default();
        let x = Tensor::<CpuTrain, 4>::from_data(
            TensorData::new(
                (0..2 * 28 * 28).map(|i| (i % 7) as f32 / 7.0).collect(),
                [2, 1, 28, 28],
            ),
            &device,
        );
        let loss = model.forward(x).sum();
        GradientsParams::from_grads(loss.backward(), model)
    }

    #[test]
    fn batch_norm_parameters_are_not_decayed() {
        let architecture = Architecture::from_name("resnet18", 10).unwrap();
        let Architecture::ResNet(config) = architecture else {
            unreachable!()
        };
        let config = config
            .with_width(4)
            .with_small_stem(true)
            .with_in_channels(1);
        let model: Model<CpuTrain> = Architecture::ResNet(config)
            .init(&Default::default())
            .unwrap();
        let plain = gradients(&model);
        let mut decayed = gradients(&model);
        let touched = add_weight_decay(&model, 0.5, &mut decayed);

        // ResNet-18: 20 BatchNorms (stem, 16 in blocks, 3 downsample) with a
        // weight and a bias each; 20 convolutions and the fc weight and bias.
        assert_eq!(touched.exempt.len(), 40, "{:?}", touched.exempt);
        assert_eq!(touched.decayed.len(), 22, "{:?}", touched.decayed);
        assert!(touched.exempt.iter().all(|n| n.contains("bn")));
        assert!(touched.decayed.iter().any(|n| n.starts_with("fc.")));
        assert!(touched.decayed.iter().all(|n| !n.contains("bn")));

        // The penalty lands on decayed parameters only, as penalty * w.
        let valid = model.valid();
        let check = |module: &str| {
            let (id, weight) = parameter(&valid, &format!("ResNet.{module}"));
            let before = plain.get::<Inner, 1>(id).unwrap().into_data();
            let after = decayed.get::<Inner, 1>(id).unwrap().into_data();
            let (before, after, weight) = (
                before.to_vec::<f32>().unwrap(),
                after.to_vec::<f32>().unwrap(),
                weight,
            );
            before
                .iter()
                .zip(&after)
                .zip(&weight)
                .map(|((b, a), w)| (a - (b + 0.5 * w)).abs())
                .fold(0.0f32, f32::max)
        };
        assert!(check("fc.bias") < 1e-6);
        let (id, _) = parameter(&valid, "ResNet.bn1.gamma");
        assert_eq!(
            plain.get::<Inner, 1>(id).unwrap().into_data(),
            decayed.get::<Inner, 1>(id).unwrap().into_data()
        );
    }

    /// The id and values of a 1-D parameter, by module path.
    fn parameter(model: &Model<Inner>, path: &str) -> (burn::module::ParamId, Vec<f32>) {
        struct Find<'a> {
            path: Vec<String>,
            want: &'a str,
            found: Option<(burn::module::ParamId, Vec<f32>)>,
        }
        impl ModuleVisitor<Inner> for Find<'_> {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.path.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.path.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Inner, D>>) {
                if D == 1 && self.path.join(".") == self.want {
                    let values = param.val().into_data().to_vec::<f32>().unwrap();
                    self.found = Some((param.id, values));
                }
            }
        }
        let mut find = Find {
            path: vec![],
            want: path,
            found: None,
        };
        model.visit(&mut find);
        find.found
            .unwrap_or_else(|| panic!("no 1-D parameter {path}"))
    }
}
