//! Forward shapes, checkpoint round trips, architecture inference, layer
//! selection and gradient mapping on small networks.

use std::path::Path;

use crate::util::{golden, max_abs_diff, scratch_dir};
use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Tensor};
use models::{
    inspect_checkpoint, load_checkpoint, save_checkpoint, Architecture, CpuBackend,
    HasWeightLayers, LayerKind, Model, ModelError, NativeGradient, NewHead, ResNetConfig,
    VitConfig,
};

fn random_images(dims: [usize; 4]) -> Tensor<CpuBackend, 4> {
    Tensor::random(dims, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn tiny_vit() -> VitConfig {
    VitConfig::new()
        .with_image_size(16)
        .with_patch_size(4)
        .with_hidden_dim(24)
        .with_num_layers(2)
        .with_num_heads(3)
        .with_mlp_dim(48)
        .with_num_classes(7)
}

fn build(arch: &Architecture) -> Model<CpuBackend> {
    arch.init(&Default::default()).unwrap()
}

#[test]
fn resnet50_forward_shape_and_bottleneck_names() {
    let model = build(&Architecture::ResNet(ResNetConfig::resnet50(10)));
    let logits = model.forward(random_images([1, 3, 32, 32]));
    assert_eq!(logits.dims(), [1, 10]);
    let names: Vec<String> = model.weight_layers().into_iter().map(|c| c.name).collect();
    // 1 stem + 16 blocks x 3 convs + 4 downsamples + fc.
    assert_eq!(names.len(), 1 + 16 * 3 + 4 + 1);
    assert!(names.contains(&"layer3.5.conv3".to_string()));
}

#[test]
fn resnet50_blurpool_wraps_the_strided_3x3_conv() {
    let config = ResNetConfig::resnet50(10)
        .with_width(16)
        .with_blurpool(true);
    let model = build(&Architecture::ResNet(config));
    let names: Vec<String> = model.weight_layers().into_iter().map(|c| c.name).collect();
    assert!(names.contains(&"layer2.0.conv2.conv".to_string()));
    assert!(names.contains(&"layer2.0.conv1".to_string()));
    assert!(names.contains(&"layer2.0.downsample.0.conv".to_string()));
    // layer1 keeps stride 1, so nothing there is wrapped.
    assert!(names.contains(&"layer1.0.downsample.0".to_string()));
}

#[test]
fn vit_b_32_forward_shape() {
    let model = build(&Architecture::from_name("vit_b_32", 1000).unwrap());
    let logits = model.forward(random_images([1, 3, 224, 224]));
    assert_eq!(logits.dims(), [1, 1000]);
}

#[test]
fn small_stem_resnet_takes_one_channel_28px_images() {
    let config = ResNetConfig::resnet18(10)
        .with_in_channels(1)
        .with_small_stem(true)
        .with_width(8);
    let model = build(&Architecture::ResNet(config));
    let names = vec!["layer1".to_string(), "layer4".to_string()];
    let (logits, taps) = model
        .forward_with_taps(random_images([2, 1, 28, 28]), &names)
        .unwrap();
    assert_eq!(logits.dims(), [2, 10]);
    // No stem downsampling: layer1 keeps 28 px; three stride-2 stages give 4.
    assert_eq!(taps[0].1.dims(), [2, 8, 28, 28]);
    assert_eq!(taps[1].1.dims(), [2, 64, 4, 4]);
}

#[test]
fn vit_taps_use_torchvision_names_and_the_head_equals_the_logits() {
    let model = build(&Architecture::Vit(tiny_vit()));
    let names: Vec<String> = [
        "encoder.layers.encoder_layer_1.mlp.0",
        "encoder.ln",
        "heads.head",
    ]
    .map(String::from)
    .to_vec();
    let (logits, taps) = model
        .forward_with_taps(random_images([2, 3, 16, 16]), &names)
        .unwrap();
    assert_eq!(taps[0].1.dims(), [2, 17, 48]);
    assert_eq!(taps[1].1.dims(), [2, 17, 24]);
    let head = match taps[2].1.clone() {
        models::Activation::Rank2(t) => t,
        other => panic!("heads.head should be rank 2, got {:?}", other.dims()),
    };
    assert_eq!(max_abs_diff(head, logits), 0.0);
}

#[test]
fn unknown_tap_name_lists_the_valid_ones() {
    let model = build(&Architecture::Vit(tiny_vit()));
    let err = model
        .forward_with_taps(
            random_images([1, 3, 16, 16]),
            &["encoder.layer".to_string()],
        )
        .err()
        .unwrap();
    let message = err.to_string();
    assert!(
        message.contains("encoder.layer;") || message.contains("encoder.layer "),
        "{message}"
    );
    assert!(
        message.contains("encoder.layers.encoder_layer_0.ln_1"),
        "{message}"
    );
}

#[test]
fn tiny_vit_checkpoint_round_trips_with_its_head_count() {
    let model = build(&Architecture::Vit(tiny_vit()));
    let path = scratch_dir("vit").join("tiny_vit.safetensors");
    save_checkpoint(&model, &path).unwrap();

    let info = inspect_checkpoint(&path).unwrap();
    // 24 wide: no tensor shape reveals 3 heads; the metadata does.
    assert_eq!(info.architecture, Architecture::Vit(tiny_vit()));
    assert!(info
        .tensors
        .contains_key("encoder.layers.encoder_layer_1.mlp.3.weight"));
    assert!(info
        .tensors
        .contains_key("encoder.layers.encoder_layer_0.self_attention.in_proj_weight"));
    // PyTorch layout: Linear weights are [out, in].
    assert_eq!(
        info.tensors["encoder.layers.encoder_layer_0.mlp.0.weight"],
        [48, 24]
    );
    assert_eq!(info.tensors["encoder.ln.weight"], [24]);

    let reloaded = load_checkpoint::<CpuBackend>(&path, &Default::default()).unwrap();
    let x = random_images([2, 3, 16, 16]);
    assert_eq!(
        max_abs_diff(model.forward(x.clone()), reloaded.forward(x)),
        0.0
    );
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn architecture_is_inferred_from_keys_without_metadata() {
    // Save, then keep only the tensors (no metadata), as a PyTorch export would.
    let config = ResNetConfig::resnet50(5)
        .with_width(8)
        .with_in_channels(1)
        .with_small_stem(true)
        .with_blurpool(true);
    let model = build(&Architecture::ResNet(config.clone()));
    let dir = scratch_dir("infer");
    let ours = dir.join("ours.safetensors");
    save_checkpoint(&model, &ours).unwrap();
    let bytes = std::fs::read(&ours).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let plain = dir.join("plain.safetensors");
    safetensors::serialize_to_file(file.tensors(), &None, &plain).unwrap();

    let info = inspect_checkpoint(&plain).unwrap();
    assert_eq!(info.architecture, Architecture::ResNet(config));
    assert!(info
        .tensors
        .contains_key("layer2.0.downsample.0.conv.weight"));
    assert!(info.tensors.contains_key("layer2.0.conv2.blur_filter"));
    load_checkpoint::<CpuBackend>(&plain, &Default::default()).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// Loads a checkpoint of `pretrained` into a fresh `target` (other classes)
/// and checks that every tensor but the head's comes from the checkpoint
/// and the head's are the fresh ones, of the target's shape.
fn check_new_head(pretrained: Architecture, target: Architecture, head: &str, tag: &str) {
    let dir = scratch_dir(tag);
    let checkpoint = dir.join("pretrained.safetensors");
    save_checkpoint(&build(&pretrained), &checkpoint).unwrap();
    let mut model = build(&target);
    let fresh = dir.join("fresh.safetensors");
    save_checkpoint(&model, &fresh).unwrap();

    let info = inspect_checkpoint(&checkpoint).unwrap();
    let replaced = models::load_weights_new_head(&mut model, &info).unwrap();
    assert_eq!(
        replaced,
        Some(NewHead {
            name: target.head_name(),
            checkpoint_classes: pretrained.num_classes(),
            model_classes: target.num_classes(),
        })
    );
    let loaded = dir.join("loaded.safetensors");
    save_checkpoint(&model, &loaded).unwrap();
    let (pretrained, fresh, loaded) = (
        test_support::read_tensors(&checkpoint),
        test_support::read_tensors(&fresh),
        test_support::read_tensors(&loaded),
    );
    assert!(loaded.keys().eq(pretrained.keys()));
    for (name, value) in &loaded {
        let expected = if name.starts_with(&format!("{head}.")) {
            &fresh[name]
        } else {
            &pretrained[name]
        };
        assert!(value == expected, "{name} was not loaded as expected");
    }
    let head_rows = loaded[&format!("{head}.weight")].0[0];
    assert_eq!(head_rows, target.num_classes());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn other_class_counts_load_everything_but_a_fresh_head() {
    let resnet = |classes| Architecture::ResNet(ResNetConfig::resnet18(classes).with_width(4));
    check_new_head(resnet(10), resnet(4), "fc", "new-head-resnet");
    let vit = |classes| Architecture::Vit(tiny_vit().with_num_classes(classes));
    check_new_head(vit(7), vit(3), "heads.head", "new-head-vit");
}

#[test]
fn a_new_head_leaves_other_mismatches_errors() {
    let dir = scratch_dir("new-head-mismatch");
    let checkpoint = dir.join("pretrained.safetensors");
    let narrow = ResNetConfig::resnet18(10).with_width(4);
    save_checkpoint(&build(&Architecture::ResNet(narrow)), &checkpoint).unwrap();
    let info = inspect_checkpoint(&checkpoint).unwrap();

    let mut wider = build(&Architecture::ResNet(
        ResNetConfig::resnet18(4).with_width(8),
    ));
    let err = models::load_weights_new_head(&mut wider, &info)
        .err()
        .unwrap();
    assert!(matches!(err, ModelError::Mismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("conv1.weight"), "{message}");
    assert!(message.contains("[8, 3, 7, 7]"), "{message}");

    // Same classes: a plain load, no head replaced.
    let mut same = build(&info.architecture);
    assert_eq!(
        models::load_weights_new_head(&mut same, &info).unwrap(),
        None
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn truncated_checkpoint_names_the_file_and_the_missing_tensors() {
    let model = build(&Architecture::ResNet(
        ResNetConfig::resnet18(3).with_width(4),
    ));
    let dir = scratch_dir("missing");
    let ours = dir.join("ours.safetensors");
    save_checkpoint(&model, &ours).unwrap();
    let bytes = std::fs::read(&ours).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let without_bn = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "layer3.1.bn2.running_var");
    let broken = dir.join("broken.safetensors");
    safetensors::serialize_to_file(without_bn, &None, &broken).unwrap();

    let err = load_checkpoint::<CpuBackend>(&broken, &Default::default())
        .err()
        .unwrap();
    assert!(matches!(err, ModelError::MissingTensors { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("broken.safetensors"), "{message}");
    assert!(message.contains("layer3.1.bn2.running_var"), "{message}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_architecture_and_unreadable_files_are_errors() {
    let not_a_model = golden("topoloss_cases.safetensors");
    let err = inspect_checkpoint(&not_a_model).err().unwrap();
    assert!(
        matches!(err, ModelError::UnknownArchitecture { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("topoloss_cases.safetensors"),
        "{err}"
    );

    let dir = scratch_dir("garbage");
    let garbage = dir.join("garbage.pt");
    std::fs::write(&garbage, b"not a pickle").unwrap();
    let err = inspect_checkpoint(&garbage).err().unwrap();
    assert!(matches!(err, ModelError::Read { .. }), "{err}");
    assert!(err.to_string().contains("garbage.pt"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn selection_by_pattern_and_its_errors() {
    let model = build(&Architecture::ResNet(
        ResNetConfig::resnet18(10)
            .with_width(16)
            .with_blurpool(true),
    ));
    let picked: Vec<String> = model
        .select_layers(&["layer*.*.conv*", "fc"])
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    // 8 blocks x 2 convs, less the 3 BlurPool-wrapped ones (`layerN.0.conv1.conv`
    // has a fourth segment, which `*` does not cross), plus fc.
    assert!(picked.contains(&"layer1.0.conv1".to_string()));
    assert!(picked.contains(&"layer4.1.conv2".to_string()));
    assert!(!picked.iter().any(|n| n.ends_with(".conv1.conv")));
    assert_eq!(picked.last().unwrap(), "fc");
    assert_eq!(picked.len(), 16 - 3 + 1);

    let blurred = model.select_layers(&["layer*.0.conv1.conv"]).unwrap();
    assert_eq!(blurred.len(), 3);

    let err = model.select_layers(&["layer9.*"]).err().unwrap();
    assert!(
        matches!(err, ModelError::PatternMatchesNothing { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("layer9.*"), "{err}");

    let err = model.select_layers(&["bn1"]).err().unwrap();
    assert!(matches!(err, ModelError::NotConvOrLinear { .. }), "{err}");
    assert!(err.to_string().contains("bn1 (BatchNorm2d)"), "{err}");
}

#[test]
fn candidate_weights_are_in_pytorch_layout_and_gradients_map_back() {
    let model = build(&Architecture::Vit(tiny_vit()));
    let candidates = model.weight_layers();

    let conv = &candidates[0];
    assert_eq!(
        (conv.name.as_str(), conv.kind),
        ("conv_proj", LayerKind::Conv2d)
    );
    assert_eq!(conv.weight.dims(), [24, 3 * 4 * 4]);
    assert_eq!(conv.weight_shape, [24, 3, 4, 4]);

    let mlp = candidates
        .iter()
        .find(|c| c.name == "encoder.layers.encoder_layer_0.mlp.0")
        .unwrap();
    assert_eq!(mlp.kind, LayerKind::Linear);
    assert_eq!(mlp.weight.dims(), [48, 24]);
    assert_eq!(mlp.weight_shape, [24, 48]);

    // A gradient equal to the weight must map back onto the native weight.
    let Model::Vit(vit) = &model else {
        unreachable!()
    };
    match mlp.native_gradient(mlp.weight.clone()).unwrap() {
        NativeGradient::Linear(g) => {
            let native = vit.encoder.layers[0].mlp.linear_1.weight.val();
            assert_eq!(max_abs_diff(g, native), 0.0);
        }
        other => panic!("expected a linear gradient, got {other:?}"),
    }
    match conv.native_gradient(conv.weight.clone()).unwrap() {
        NativeGradient::Conv2d(g) => assert_eq!(max_abs_diff(g, vit.conv_proj.weight.val()), 0.0),
        other => panic!("expected a conv gradient, got {other:?}"),
    }

    let err = mlp.native_gradient(conv.weight.clone()).err().unwrap();
    assert!(matches!(err, ModelError::GradientShape { .. }), "{err}");
}

#[test]
fn accumulated_gradient_adds_to_the_task_gradient() {
    type Train = burn::backend::Autodiff<CpuBackend>;
    let config = ResNetConfig::resnet18(4)
        .with_width(4)
        .with_small_stem(true);
    let model: Model<Train> = Architecture::ResNet(config)
        .init(&Default::default())
        .unwrap();
    let x: Tensor<Train, 4> =
        Tensor::random([2, 3, 8, 8], Distribution::Default, &Default::default());
    let loss = model.forward(x).sum();
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);

    let fc = model.select_layers(&["fc"]).unwrap().remove(0);
    let before: Tensor<CpuBackend, 2> = grads.get(fc.param_id).unwrap();
    let ones = Tensor::<CpuBackend, 2>::ones(fc.flat_shape(), &Default::default());
    fc.accumulate_gradient(&mut grads, ones).unwrap();
    let after: Tensor<CpuBackend, 2> = grads.get(fc.param_id).unwrap();
    // Burn's Linear weight is [in, out] = [8 * width, classes].
    assert_eq!(after.dims(), [32, 4]);
    assert!(max_abs_diff(after - before, Tensor::ones([32, 4], &Default::default())) < 1e-6);
}

/// Every f32 tensor of `file` rounded to `dtype` (F16 or BF16), as a
/// PyTorch `model.half()` or bf16 export holds it: (name, bytes, shape).
/// The int64 `num_batches_tracked` counters are left out (ignored on
/// loading; the writers below take one dtype).
fn rounded_to_16_bits(
    file: &safetensors::SafeTensors,
    dtype: safetensors::Dtype,
) -> Vec<(String, Vec<u8>, Vec<usize>)> {
    use burn::tensor::{bf16, f16};
    let round = |v: f32| match dtype {
        safetensors::Dtype::F16 => f16::from_f32(v).to_bits(),
        safetensors::Dtype::BF16 => bf16::from_f32(v).to_bits(),
        other => panic!("{other:?} is not a 16-bit float"),
    };
    file.tensors()
        .into_iter()
        .filter(|(name, _)| !name.ends_with(".num_batches_tracked"))
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let bytes = view
                .data()
                .chunks_exact(4)
                .flat_map(|b| round(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes())
                .collect();
            (name, bytes, view.shape().to_vec())
        })
        .collect()
}

fn write_safetensors(
    tensors: &[(String, Vec<u8>, Vec<usize>)],
    dtype: safetensors::Dtype,
    path: &Path,
) {
    let views = tensors.iter().map(|(name, bytes, shape)| {
        let view = safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).unwrap();
        (name.clone(), view)
    });
    safetensors::serialize_to_file(views, &None, path).unwrap();
}

/// Writes a state dict as `torch.save` does (a zip of `archive/data.pkl`, a
/// protocol-2 pickle of an OrderedDict of `_rebuild_tensor_v2` calls, and
/// one `archive/data/<key>` file of raw little-endian values per tensor),
/// with storages of class `torch.<storage>` (e.g. `HalfStorage`).
fn write_torch_save(tensors: &[(String, Vec<u8>, Vec<usize>)], storage: &str, path: &Path) {
    use std::io::Write;
    fn text(pickle: &mut Vec<u8>, s: &str) {
        pickle.push(b'X'); // BINUNICODE
        pickle.extend((s.len() as u32).to_le_bytes());
        pickle.extend(s.as_bytes());
    }
    fn int(pickle: &mut Vec<u8>, i: usize) {
        pickle.push(b'J'); // BININT
        pickle.extend((i as i32).to_le_bytes());
    }
    fn ints(pickle: &mut Vec<u8>, values: &[usize]) {
        pickle.push(b'('); // MARK
        values.iter().for_each(|&v| int(pickle, v));
        pickle.push(b't'); // TUPLE
    }
    let ordered_dict = b"ccollections\nOrderedDict\n)R"; // GLOBAL, EMPTY_TUPLE, REDUCE
    let mut pickle = vec![0x80, 2]; // PROTO 2
    pickle.extend(ordered_dict);
    pickle.push(b'(');
    for (key, (name, bytes, shape)) in tensors.iter().enumerate() {
        text(&mut pickle, name);
        pickle.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        // The storage: a persistent id ("storage", class, key, device, numel).
        pickle.push(b'(');
        text(&mut pickle, "storage");
        pickle.extend(format!("ctorch\n{storage}\n").as_bytes());
        text(&mut pickle, &key.to_string());
        text(&mut pickle, "cpu");
        int(&mut pickle, bytes.len() / 2);
        pickle.extend(b"tQ"); // TUPLE, BINPERSID
        int(&mut pickle, 0); // storage offset
        ints(&mut pickle, shape);
        let strides: Vec<usize> = (0..shape.len())
            .map(|d| shape[d + 1..].iter().product())
            .collect();
        ints(&mut pickle, &strides);
        pickle.push(0x89); // NEWFALSE: requires_grad
        pickle.extend(ordered_dict); // backward hooks
        pickle.extend(b"tR"); // TUPLE, REDUCE
    }
    pickle.extend(b"u."); // SETITEMS, STOP
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut entry = |name: &str, data: &[u8]| {
        zip.start_file(format!("archive/{name}"), stored).unwrap();
        zip.write_all(data).unwrap();
    };
    entry("data.pkl", &pickle);
    for (key, (_, bytes, _)) in tensors.iter().enumerate() {
        entry(&format!("data/{key}"), bytes);
    }
    entry("version", b"3\n");
    zip.finish().unwrap();
}

#[test]
fn half_precision_checkpoints_load_upcast_to_f32() {
    let model = build(&Architecture::ResNet(
        ResNetConfig::resnet18(3).with_width(4),
    ));
    let dir = scratch_dir("half");
    let ours = dir.join("ours.safetensors");
    save_checkpoint(&model, &ours).unwrap();
    let bytes = std::fs::read(&ours).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let images = random_images([2, 3, 32, 32]);
    let expected = model.forward(images.clone());
    let scale = expected.clone().abs().max().into_scalar();
    // bf16 keeps 8 bits of mantissa to f16's 11.
    for (dtype, storage, tolerance) in [
        (safetensors::Dtype::F16, "HalfStorage", 0.01),
        (safetensors::Dtype::BF16, "BFloat16Storage", 0.05),
    ] {
        let tensors = rounded_to_16_bits(&file, dtype);
        let safetensors_file = dir.join(format!("{dtype:?}.safetensors"));
        write_safetensors(&tensors, dtype, &safetensors_file);
        let torch_file = dir.join(format!("{dtype:?}.pt"));
        write_torch_save(&tensors, storage, &torch_file);
        for path in [safetensors_file, torch_file] {
            let loaded = load_checkpoint::<CpuBackend>(&path, &Default::default()).unwrap();
            let logits = loaded.forward(images.clone());
            let name = path.display();
            assert_eq!(logits.dtype(), burn::tensor::DType::F32, "{name}");
            let error = max_abs_diff(logits, expected.clone());
            assert!(error <= tolerance * scale, "{name}: {error} vs {scale}");
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}
