//! The picture a run ends with: one topographic layer's sheet, each unit
//! coloured by the first three principal components of its weights
//! (`analysis::pca`, drawn by `analysis::sheet_image`), and the layer's
//! smoothness score (`analysis::smoothness`), which tells a topographic
//! sheet (neighbours alike, score well above 0) from a baseline one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use models::topography::Topography;
use models::HasWeightLayers;
use serde::{Deserialize, Serialize};

/// Where the sheet picture went, and what it shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SheetPicture {
    pub layer: String,
    pub png: PathBuf,
    /// `analysis::smoothness` score of the layer's unit weights.
    pub smoothness: f64,
}

/// Draws `layer` (default: the last topographic layer, the largest sheet of
/// a ResNet) of `model` into `dir/sheet_<layer>.png` and `.svg`.
pub fn write_sheet_picture<B: Backend>(
    model: &impl HasWeightLayers<B>,
    topography: &Topography,
    layer: Option<&str>,
    tau: f64,
    dir: &Path,
) -> Result<SheetPicture> {
    let chosen = match layer {
        Some(name) => topography.layers.iter().find(|l| l.name == name),
        None => topography.layers.last(),
    };
    let Some(chosen) = chosen else {
        bail!(
            "output.sheet_layer = {:?} is not one of the topographic layers ({})",
            layer.unwrap_or_default(),
            topography.layer_names().join(", ")
        );
    };
    let name = chosen.name.as_str();
    let candidate = model
        .select_layers(&[name])?
        .into_iter()
        .find(|c| c.name == name)
        .with_context(|| format!("the model has no layer {name}"))?;
    let [units, e] = candidate.flat_shape();
    let weights = candidate
        .weight
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{name}: cannot read the weights: {e:?}"))?;
    let sheet = chosen.loss.sheet();
    if sheet.units() != units {
        bail!(
            "{name}: {units} units do not fill its {}x{} sheet",
            sheet.height,
            sheet.width
        );
    }
    let colours = analysis::pca::sheet_pca_colors(&weights, e, sheet)?;
    let smoothness = analysis::smoothness::smoothness(&weights, e, sheet)?.score;
    let png = dir.join(format!("sheet_{name}.png"));
    let title = format!("{name}, tau {tau}: smoothness {smoothness:.3}");
    analysis::sheet_image::render_sheet(&colours, &title)
        .save(&png, analysis::DEFAULT_PNG_SCALE)
        .with_context(|| format!("cannot draw {}", png.display()))?;
    Ok(SheetPicture {
        layer: name.to_string(),
        png,
        smoothness,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;
    use models::topography::TopographyConfig;
    use models::Architecture;

    fn small_resnet() -> models::Model<Cpu> {
        let Architecture::ResNet(config) = Architecture::from_name("resnet18", 10).unwrap() else {
            unreachable!()
        };
        Architecture::ResNet(config.with_width(4).with_small_stem(true))
            .init(&Default::default())
            .unwrap()
    }

    #[test]
    fn draws_the_last_topographic_layer_or_the_named_one() {
        analysis::ensure_font().expect("the analyses' font (scripts/setup.sh installs it)");
        let model = small_resnet();
        let patterns = vec!["layer*.**".to_string()];
        let topography =
            Topography::new(&model, &TopographyConfig::uniform(&patterns, 3.0, 1.0)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let last = write_sheet_picture(&model, &topography, None, 1.0, dir.path()).unwrap();
        assert_eq!(last.layer, "layer4.1.conv2");
        let bytes = std::fs::read(&last.png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let svg = std::fs::read_to_string(last.png.with_extension("svg")).unwrap();
        assert!(svg.contains("layer4.1.conv2, tau 1: smoothness"), "{svg}");
        // Untrained weights: no relation between neighbours.
        assert!(last.smoothness.abs() < 0.2, "{}", last.smoothness);

        let named =
            write_sheet_picture(&model, &topography, Some("layer2.0.conv1"), 1.0, dir.path())
                .unwrap();
        assert!(named.png.ends_with("sheet_layer2.0.conv1.png"));
        let error = write_sheet_picture(&model, &topography, Some("fc"), 1.0, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sheet_layer") && error.contains("layer4.1.conv2"),
            "{error}"
        );
    }
}
