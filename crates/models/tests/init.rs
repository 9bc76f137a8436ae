//! Fresh weights follow the reference implementations' init: torchvision's
//! ResNet and VisionTransformer, nanoGPT's `_init_weights`. Each check draws
//! a layer large enough for its sample std to settle within a few percent;
//! tolerances are five standard errors of the sample size.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use models::{CpuBackend, GptConfig, ResNetConfig, VitConfig};

/// Mean, std and largest magnitude of a parameter's `n` values.
struct Stats {
    n: f64,
    mean: f64,
    std: f64,
    max_abs: f64,
}

fn stats<const D: usize>(param: &Param<Tensor<CpuBackend, D>>) -> Stats {
    let values = param.val().into_data().to_vec::<f32>().unwrap();
    let (mean, std) = test_support::mean_and_std(&values);
    let max_abs = values.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    Stats {
        n: values.len() as f64,
        mean,
        std,
        max_abs,
    }
}

/// Zero-mean values with standard deviation `std`.
fn assert_normal<const D: usize>(name: &str, param: &Param<Tensor<CpuBackend, D>>, std: f64) {
    let s = stats(param);
    // Standard errors of a normal sample's std (relative) and mean.
    let std_error = 1.0 / (2.0 * s.n).sqrt();
    assert!(
        (s.std / std - 1.0).abs() < 5.0 * std_error,
        "{name}: std {} but expected {std}",
        s.std
    );
    let mean_error = std / s.n.sqrt();
    assert!(s.mean.abs() < 5.0 * mean_error, "{name}: mean {}", s.mean);
}

/// U(-bound, bound): nothing beyond the bound, the std of a uniform draw.
fn assert_uniform<const D: usize>(name: &str, param: &Param<Tensor<CpuBackend, D>>, bound: f64) {
    let s = stats(param);
    assert!(
        s.max_abs <= bound * (1.0 + 1e-6),
        "{name}: |w| reaches {} beyond the bound {bound}",
        s.max_abs
    );
    assert_normal(name, param, bound / 3f64.sqrt());
}

fn assert_constant<const D: usize>(name: &str, param: &Param<Tensor<CpuBackend, D>>, value: f32) {
    let values = param.val().into_data().to_vec::<f32>().unwrap();
    assert!(
        values.iter().all(|&v| v == value),
        "{name} is not all {value}"
    );
}

fn seed() -> burn::tensor::Device<CpuBackend> {
    let device = Default::default();
    CpuBackend::seed(&device, 0);
    device
}

#[test]
fn resnet_convs_are_kaiming_normal_fan_out_and_fc_is_linear_default() {
    let device = seed();
    let model = ResNetConfig::resnet18(10)
        .with_blurpool(true)
        .init::<CpuBackend>(&device)
        .unwrap();
    // torchvision: std = sqrt(2 / (out_channels * kh * kw)).
    let fan_out_std = |out: usize, kernel: usize| (2.0 / (out * kernel * kernel) as f64).sqrt();
    assert_normal("conv1", &model.conv1.weight, fan_out_std(64, 7));
    assert_normal(
        "layer1.0.conv2",
        &model.layer1[0].conv2.conv().weight,
        fan_out_std(64, 3),
    );
    // BlurPool wraps the conv without changing its init.
    let block = &model.layer4[0];
    assert_eq!(block.conv1.weight_module_suffix(), ".conv");
    assert_normal(
        "layer4.0.conv1.conv",
        &block.conv1.conv().weight,
        fan_out_std(512, 3),
    );
    let downsample = block.downsample.as_ref().unwrap();
    assert_normal(
        "layer4.0.downsample.0.conv",
        &downsample.conv.conv().weight,
        fan_out_std(512, 1),
    );
    assert_constant("layer4.0.bn1.weight", &block.bn1.gamma, 1.0);
    assert_constant("layer4.0.bn1.bias", &block.bn1.beta, 0.0);
    assert_constant("layer4.0.downsample.1.bias", &downsample.bn.beta, 0.0);
    // nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    let bound = 1.0 / 512f64.sqrt();
    assert_uniform("fc.weight", &model.fc.weight, bound);
    let bias = stats(model.fc.bias.as_ref().unwrap());
    assert!(bias.max_abs <= bound, "fc.bias reaches {}", bias.max_abs);
}

#[test]
fn resnet50_bottleneck_convs_use_their_own_fan_out() {
    let device = seed();
    let model = ResNetConfig::resnet50(10)
        .init::<CpuBackend>(&device)
        .unwrap();
    let block = &model.layer1[0];
    assert_normal(
        "layer1.0.conv1",
        &block.conv1.conv().weight,
        (2.0 / 64.0f64).sqrt(),
    );
    let conv3 = block.conv3.as_ref().unwrap();
    assert_normal(
        "layer1.0.conv3",
        &conv3.conv().weight,
        (2.0 / 256.0f64).sqrt(),
    );
    assert_constant(
        "layer1.0.bn3.weight",
        &block.bn3.as_ref().unwrap().gamma,
        1.0,
    );
}

#[test]
fn vit_follows_torchvision_vision_transformer() {
    let device = seed();
    let (dim, mlp_dim) = (256, 1024);
    let model = VitConfig::new()
        .with_image_size(64)
        .with_patch_size(16)
        .with_hidden_dim(dim)
        .with_num_layers(1)
        .with_num_heads(4)
        .with_mlp_dim(mlp_dim)
        .with_num_classes(10)
        .init::<CpuBackend>(&device)
        .unwrap();
    assert_normal(
        "conv_proj.weight",
        &model.conv_proj.weight,
        (1.0 / 768f64).sqrt(),
    );
    assert_constant(
        "conv_proj.bias",
        model.conv_proj.bias.as_ref().unwrap(),
        0.0,
    );
    assert_constant("class_token", &model.class_token, 0.0);
    assert_normal("pos_embedding", &model.encoder.pos_embedding, 0.02);

    let layer = &model.encoder.layers[0];
    let attention = &layer.self_attention;
    let xavier = |fan_in: usize, fan_out: usize| (6.0 / (fan_in + fan_out) as f64).sqrt();
    assert_uniform(
        "in_proj_weight",
        &attention.in_proj_weight,
        xavier(dim, 3 * dim),
    );
    assert_constant("in_proj_bias", &attention.in_proj_bias, 0.0);
    // out_proj.weight keeps nn.Linear's default; only its bias is zeroed.
    let out_proj = &attention.out_proj;
    assert_uniform(
        "out_proj.weight",
        &out_proj.weight,
        1.0 / (dim as f64).sqrt(),
    );
    assert_constant("out_proj.bias", out_proj.bias.as_ref().unwrap(), 0.0);

    for (name, linear, fan_in, fan_out) in [
        ("mlp.0", &layer.mlp.linear_1, dim, mlp_dim),
        ("mlp.3", &layer.mlp.linear_2, mlp_dim, dim),
    ] {
        assert_uniform(name, &linear.weight, xavier(fan_in, fan_out));
        assert_normal(name, linear.bias.as_ref().unwrap(), 1e-6);
    }
    assert_constant("ln_1.weight", &layer.ln_1.gamma, 1.0);
    assert_constant("ln_1.bias", layer.ln_1.beta.as_ref().unwrap(), 0.0);
    assert_constant("heads.head.weight", &model.heads.head.weight, 0.0);
    assert_constant(
        "heads.head.bias",
        model.heads.head.bias.as_ref().unwrap(),
        0.0,
    );
}

#[test]
fn vit_patch_embedding_is_truncated_at_two() {
    // fan_in 1 gives std 1, so trunc_normal_'s absolute [-2, 2] bounds bite:
    // the truncated N(0, 1) has std 0.8796.
    let device = seed();
    let model = VitConfig::new()
        .with_image_size(1)
        .with_patch_size(1)
        .with_in_channels(1)
        .with_hidden_dim(8192)
        .with_num_layers(0)
        .with_num_heads(1)
        .with_mlp_dim(1)
        .with_num_classes(1)
        .init::<CpuBackend>(&device)
        .unwrap();
    let weight = &model.conv_proj.weight;
    assert!(stats(weight).max_abs <= 2.0);
    assert_normal("conv_proj.weight", weight, 0.8796);
}

#[test]
fn gpt_follows_nanogpt_init_weights() {
    let device = seed();
    let (n_layer, dim) = (6, 256);
    let model = GptConfig::new()
        .with_block_size(64)
        .with_vocab_size(512)
        .with_n_layer(n_layer)
        .with_n_head(4)
        .with_n_embd(dim)
        .with_bias(true)
        .init::<CpuBackend>(&device)
        .unwrap();
    let transformer = &model.transformer;
    assert_normal("wte", &transformer.wte.weight, 0.02);
    assert_normal("wpe", &transformer.wpe.weight, 0.02);
    let block = &transformer.h[0];
    assert_normal("attn.c_attn", &block.attn.c_attn.weight, 0.02);
    assert_normal("mlp.c_fc", &block.mlp.c_fc.weight, 0.02);
    // Residual projections: 0.02 / sqrt(2 n_layer).
    let residual = 0.02 / (2.0 * n_layer as f64).sqrt();
    assert_normal("attn.c_proj", &block.attn.c_proj.weight, residual);
    assert_normal("mlp.c_proj", &block.mlp.c_proj.weight, residual);
    assert_constant("mlp.c_fc.bias", block.mlp.c_fc.bias.as_ref().unwrap(), 0.0);
    assert_constant("ln_1.weight", &block.ln_1.gamma, 1.0);
    assert_constant("ln_f.bias", transformer.ln_f.beta.as_ref().unwrap(), 0.0);
}
