//! `--arch`: a preset name, a file holding the notation, or the notation itself.

use anyhow::{bail, Context, Result};
use cnn::arch;
use cnn::LayerSpec;
use std::path::Path;

pub fn resolve(argument: &str, classes: usize) -> Result<(String, Vec<LayerSpec>)> {
    let text = if let Some(notation) = arch::preset(argument) {
        notation.to_string()
    } else if Path::new(argument).is_file() {
        cnn::fsutil::read_text(Path::new(argument), cnn::limits::MAX_TEXT_FILE_BYTES)
            .context("cannot read the architecture file")?
    } else if argument.split_whitespace().count() == 1
        && !argument.contains([',', ';'])
        && is_word(argument)
    {
        let names: Vec<&str> = arch::PRESETS.iter().map(|(n, _)| *n).collect();
        bail!(
            "unknown preset `{argument}` (presets: {}; or write layers, e.g. \"conv 8@3x3, relu, maxpool 2, dense classes\")",
            names.join(", ")
        );
    } else {
        argument.to_string()
    };
    let layers = arch::parse(&text, classes)?;
    Ok((arch::to_notation(&layers), layers))
}

/// A single name-like word: what a mistyped preset looks like (a lone `relu` is not).
fn is_word(argument: &str) -> bool {
    let known_layers = ["relu", "flatten", "gap", "batchnorm", "dropout"];
    argument
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !known_layers.contains(&argument)
}
