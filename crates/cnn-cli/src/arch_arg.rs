//! `--arch`: a preset name, a file holding the notation, or the notation itself.

use anyhow::{bail, Context, Result};
use cnn::arch;
use cnn::Architecture;
use std::path::Path;

/// The help line of `--arch`, naming every preset.
pub fn help() -> String {
    let names: Vec<&str> = arch::presets().iter().map(|(n, _)| *n).collect();
    format!(
        "Architecture: a preset ({}), a file, or layers in the notation",
        names.join(", ")
    )
}

/// The architecture `argument` names, with how to name it in one line: a stack's notation, or
/// for a graph its preset name and size.
pub fn resolve(argument: &str, classes: usize) -> Result<(String, Architecture)> {
    let text = if let Some(notation) = arch::preset(argument) {
        notation
    } else if Path::new(argument).is_file() {
        cnn::fsutil::read_text(Path::new(argument), cnn::limits::MAX_TEXT_FILE_BYTES)
            .context("cannot read the architecture file")?
    } else if argument.split_whitespace().count() == 1
        && !argument.contains([',', ';'])
        && is_word(argument)
    {
        let names: Vec<&str> = arch::presets().iter().map(|(n, _)| *n).collect();
        bail!(
            "unknown preset `{argument}` (presets: {}; or write layers, e.g. \"conv 8@3x3, relu, maxpool 2, dense classes\")",
            names.join(", ")
        );
    } else {
        argument.to_string()
    };
    let architecture = arch::parse(&text, classes)?;
    let preset = arch::preset(argument).map(|_| argument);
    Ok((describe(&architecture, preset), architecture))
}

/// An architecture in one line: a stack's notation, a graph summed up by its preset name and
/// size (`train` prints its nodes).
pub fn describe(architecture: &Architecture, preset: Option<&str>) -> String {
    let nodes = architecture.nodes.len();
    match (architecture.as_sequential(), preset) {
        (Some(_), _) => arch::to_notation(architecture),
        (None, Some(name)) => format!("{name} (a graph of {nodes} nodes)"),
        (None, None) => format!("a graph of {nodes} nodes"),
    }
}

/// A single name-like word: what a mistyped preset looks like (a lone `relu` is not).
fn is_word(argument: &str) -> bool {
    let known_layers = ["relu", "flatten", "gap", "batchnorm", "dropout"];
    argument
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !known_layers.contains(&argument)
}
