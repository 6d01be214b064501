//! A model's network as PyTorch source: an `nn.Module` whose `state_dict` has the model file's
//! names, layouts and dtypes, so that `load_state_dict(safetensors.torch.load_file(M),
//! strict=True)` loads it as it is. Modules with parameters are nested as their paths say
//! (`layer1.0.conv1` is `layer1["0"]["conv1"]`, in `nn.ModuleDict`s); everything else is a
//! call in `forward`. The file also saves a trained module back as a model file of this
//! engine (`save_for_cnn`), with the metadata it was generated with.

use crate::error::{Error, Result};
use crate::fsutil::write_atomically;
use crate::layers::{BinaryOp, LayerSpec, PadMode, BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM};
use crate::model::Model;
use crate::model_file;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::path::Path;

/// Writes the PyTorch source of `model` to `path`, atomically.
pub fn save(model: &Model, path: &Path) -> Result<()> {
    write_atomically(path, to_source(model)?.as_bytes())
}

/// A module of the tree built in `__init__`: a layer, or a container of named children (in the
/// order of the graph, as PyTorch registers them).
enum Module {
    Layer(String),
    Children(Vec<(String, Module)>),
}

pub fn to_source(model: &Model) -> Result<String> {
    let network = &model.network;
    let summary = network.summary();
    let mut tree: Vec<(String, Module)> = Vec::new();
    let mut body = String::new();
    let mut variables: Vec<String> = Vec::new();
    let mut taken: HashSet<String> = HashSet::from(["x".to_string(), "self".to_string()]);
    // Whether each value (0 the input, `k + 1` node `k`) is `[N, F]` in PyTorch.
    let mut flat = vec![false];
    let mut uses_constant = false;
    for (index, node) in network.nodes().iter().enumerate() {
        let spec = node.layer().spec();
        let input_shape = summary[index].input;
        let args: Vec<String> = node
            .inputs()
            .iter()
            .map(|&v| {
                if v == 0 {
                    "x".to_string()
                } else {
                    variables[v - 1].clone()
                }
            })
            .collect();
        let x = args[0].clone();
        let path = node.name();
        let call = |module: &str| format!("self.get_submodule({path:?})({module})");
        let expression = match spec {
            LayerSpec::Conv2d(c) => {
                let layer = format!(
                    "nn.Conv2d({}, {}, kernel_size={}, stride={}, padding={}, dilation={}, \
                     groups={}, bias={})",
                    input_shape.channels,
                    c.out_channels,
                    pair(c.kernel),
                    pair(c.stride),
                    pair(c.padding),
                    pair(c.dilation),
                    c.groups,
                    python_bool(c.bias)
                );
                insert(&mut tree, path, layer)?;
                call(&x)
            }
            LayerSpec::Dense(d) => {
                let layer = format!(
                    "nn.Linear({}, {}, bias={})",
                    input_shape.len(),
                    d.out_features,
                    python_bool(d.bias)
                );
                insert(&mut tree, path, layer)?;
                if flat[node.inputs()[0]] {
                    call(&x)
                } else {
                    call(&format!("torch.flatten({x}, 1)"))
                }
            }
            LayerSpec::BatchNorm2d => {
                let layer = format!(
                    "nn.BatchNorm2d({}, eps={BATCH_NORM_EPSILON:e}, momentum={BATCH_NORM_MOMENTUM})",
                    input_shape.channels
                );
                insert(&mut tree, path, layer)?;
                call(&x)
            }
            LayerSpec::MaxPool2d(w) => format!(
                "F.max_pool2d({x}, kernel_size={}, stride={}, padding={}, ceil_mode={})",
                pair(w.kernel),
                pair(w.stride),
                pair(w.padding),
                python_bool(w.ceil_mode)
            ),
            LayerSpec::AvgPool2d(w) => format!(
                "F.avg_pool2d({x}, kernel_size={}, stride={}, padding={}, ceil_mode={}, \
                 count_include_pad=False)",
                pair(w.kernel),
                pair(w.stride),
                pair(w.padding),
                python_bool(w.ceil_mode)
            ),
            LayerSpec::Flatten => format!("torch.flatten({x}, 1)"),
            LayerSpec::GlobalAvgPool => format!("{x}.mean(dim=(2, 3))"),
            LayerSpec::GlobalMaxPool => format!("{x}.amax(dim=(2, 3))"),
            LayerSpec::Relu => format!("F.relu({x})"),
            LayerSpec::LeakyRelu { slope } => format!("F.leaky_relu({x}, {slope:?})"),
            LayerSpec::Sigmoid => format!("torch.sigmoid({x})"),
            LayerSpec::Tanh => format!("torch.tanh({x})"),
            LayerSpec::Gelu => format!("F.gelu({x})"),
            LayerSpec::Silu => format!("F.silu({x})"),
            LayerSpec::Clip {
                min: Some(0.0),
                max: Some(6.0),
            } => format!("F.relu6({x})"),
            LayerSpec::Clip {
                min: Some(min),
                max: Some(max),
            } if min <= max => format!("F.hardtanh({x}, {min:?}, {max:?})"),
            LayerSpec::Clip { min, max } => format!(
                "torch.clamp({x}, min={}, max={})",
                min.map_or("None".into(), |v| format!("{v:?}")),
                max.map_or("None".into(), |v| format!("{v:?}"))
            ),
            LayerSpec::HardSigmoid { alpha, beta } if alpha == 1.0 / 6.0 && beta == 0.5 => {
                format!("F.hardsigmoid({x})")
            }
            LayerSpec::HardSigmoid { alpha, beta } => {
                format!("torch.clamp({alpha:?} * {x} + {beta:?}, 0.0, 1.0)")
            }
            LayerSpec::HardSwish => format!("F.hardswish({x})"),
            LayerSpec::Lrn(c) => {
                // PyTorch's own computation, with ONNX's window (the same for odd sizes).
                let (before, after) = c.reach();
                format!(
                    "{x} / ({k:?} + {alpha:?} * F.avg_pool3d(F.pad({x}.pow(2).unsqueeze(1), \
                     (0, 0, 0, 0, {before}, {after})), ({size}, 1, 1), stride=1).squeeze(1))\
                     .pow({beta:?})",
                    k = c.bias,
                    alpha = c.alpha,
                    size = c.size,
                    beta = c.beta
                )
            }
            LayerSpec::Reshape { shape: [c, h, w] } => format!("{x}.reshape(-1, {c}, {h}, {w})"),
            LayerSpec::Pad { pads, mode } => {
                let [top, left, bottom, right] = pads;
                let sides = format!("({left}, {right}, {top}, {bottom})");
                match mode {
                    PadMode::Constant { value } => format!("F.pad({x}, {sides}, value={value:?})"),
                    PadMode::Edge => format!("F.pad({x}, {sides}, mode=\"replicate\")"),
                    PadMode::Reflect => format!("F.pad({x}, {sides}, mode=\"reflect\")"),
                }
            }
            LayerSpec::ConstantOp { op, .. } => {
                let dims = &node.layer().buffers()[0].dims;
                let dims: Vec<String> = dims.iter().map(usize::to_string).collect();
                insert(&mut tree, path, format!("Constant({})", dims.join(", ")))?;
                uses_constant = true;
                let c = format!("self.get_submodule({path:?}).constant");
                match op {
                    BinaryOp::Add => format!("{x} + {c}"),
                    BinaryOp::Sub => format!("{x} - {c}"),
                    BinaryOp::Mul => format!("{x} * {c}"),
                    BinaryOp::Div => format!("{x} / {c}"),
                    BinaryOp::ReverseSub => format!("{c} - {x}"),
                    BinaryOp::ReverseDiv => format!("{c} / {x}"),
                }
            }
            LayerSpec::Prelu { shared } => {
                let slopes = if shared { 1 } else { input_shape.channels };
                insert(&mut tree, path, format!("nn.PReLU({slopes})"))?;
                call(&x)
            }
            LayerSpec::Identity => x.clone(),
            LayerSpec::Dropout { rate } => format!("F.dropout({x}, {rate:?}, self.training)"),
            LayerSpec::Add => args.join(" + "),
            LayerSpec::Concat => format!("torch.cat([{}], 1)", args.join(", ")),
            // Features broadcast over maps as `[N, F, 1, 1]`.
            LayerSpec::Mul => {
                let operands: Vec<String> = node
                    .inputs()
                    .iter()
                    .zip(&args)
                    .map(|(&v, a)| {
                        if flat[v] {
                            format!("{a}.reshape({a}.shape[0], -1, 1, 1)")
                        } else {
                            a.clone()
                        }
                    })
                    .collect();
                operands.join(" * ")
            }
        };
        let variable = identifier(path, &mut taken);
        writeln!(body, "        {variable} = {expression}  # {path}: {spec}").expect("a String");
        variables.push(variable);
        let flags: Vec<bool> = node.inputs().iter().map(|&v| flat[v]).collect();
        flat.push(spec.output_flat(&flags));
    }
    // The network's outputs, as a tuple when it gives several (as an ONNX file lists them).
    let output = network
        .output_names()
        .iter()
        .map(|&name| {
            let node = network.find_node(name).expect("an output is a node");
            variables[node].as_str()
        })
        .collect::<Vec<_>>()
        .join(", ");

    let metadata: BTreeMap<String, String> = model_file::metadata(
        network,
        &model.classes,
        &model.preprocessing,
        model.data.as_deref(),
        None,
    )?
    .into_iter()
    .collect();
    let shape = network.input_shape();
    let mut source = String::new();
    let _ = write!(
        source,
        r#""""The network of a `cnn` model as a PyTorch module, written by `cnn export --pytorch`.

Its state_dict has the model file's names, so that

    model = Net()
    model.load_state_dict(safetensors.torch.load_file("MODEL.safetensors"), strict=True)

loads the trained weights, and training can go on in PyTorch (DistributedDataParallel included).
`save_for_cnn(model, "OUT.safetensors")` writes the weights back as a `cnn` model file (with the
architecture, classes and preprocessing it was exported with), which `cnn import` checks and
every `cnn` command reads.

The input is the prepared image, `[N, {c}, {h}, {w}]` float32: `(pixel / 255 - MEAN) / STD` per
channel (see `cnn info` for how pictures are prepared). The output is one score per class, in
the order of CLASSES.
"""

import json

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = {classes}
INPUT_SHAPE = ({c}, {h}, {w})
MEAN = {mean}
STD = {std}
# The model file's metadata, written back by save_for_cnn.
METADATA = json.loads({metadata})
{helpers}

class Net(nn.Module):
    def __init__(self):
        super().__init__()
"#,
        helpers = if uses_constant { CONSTANT_CLASS } else { "" },
        c = shape.channels,
        h = shape.height,
        w = shape.width,
        classes = python_list(model.classes.iter().map(|c| python_string(c))),
        mean = python_list(model.preprocessing.mean.iter().map(|v| format!("{v:?}"))),
        std = python_list(model.preprocessing.std.iter().map(|v| format!("{v:?}"))),
        metadata = python_string(
            &serde_json::to_string(&metadata)
                .map_err(|e| Error::Invalid(format!("cannot describe the model: {e}")))?
        ),
    );
    if tree.is_empty() {
        source.push_str("        pass\n");
    }
    for (name, module) in &tree {
        let _ = writeln!(
            source,
            "        self.add_module({name:?}, {})",
            render(module, 2)
        );
    }
    let _ = write!(
        source,
        "\n    def forward(self, x):\n{body}        return {output}\n\n\n\
         def save_for_cnn(model, path):\n    \
         \"\"\"Writes the module's weights as a `cnn` model file.\"\"\"\n    \
         from safetensors.torch import save_file\n\n    \
         state = {{name: tensor.detach().cpu().contiguous() for name, tensor in \
         model.state_dict().items()}}\n    \
         save_file(state, path, metadata=METADATA)\n"
    );
    Ok(source)
}

/// The module of a `constant` node: its tensor, saved with the weights and not learnt.
const CONSTANT_CLASS: &str = r#"

class Constant(nn.Module):
    """A tensor saved with the weights but not learnt (`cnn`'s `constant` op)."""

    def __init__(self, *shape):
        super().__init__()
        self.register_buffer("constant", torch.zeros(shape))
"#;

fn insert(tree: &mut Vec<(String, Module)>, path: &str, layer: String) -> Result<()> {
    let conflict = || {
        Error::Invalid(format!(
            "module `{path}` cannot be written as a PyTorch module: another module with \
             parameters is named as its parent or child"
        ))
    };
    let parts: Vec<&str> = path.split('.').collect();
    let (last, parents) = parts.split_last().expect("split gives one part at least");
    let mut level = tree;
    for part in parents {
        let index = match level.iter().position(|(name, _)| name == part) {
            Some(index) => index,
            None => {
                level.push((part.to_string(), Module::Children(Vec::new())));
                level.len() - 1
            }
        };
        level = match &mut level[index].1 {
            Module::Children(children) => children,
            Module::Layer(_) => return Err(conflict()),
        };
    }
    if level.iter().any(|(name, _)| name == last) {
        return Err(conflict());
    }
    level.push((last.to_string(), Module::Layer(layer)));
    Ok(())
}

fn render(module: &Module, depth: usize) -> String {
    match module {
        Module::Layer(layer) => layer.clone(),
        Module::Children(children) => {
            let indent = "    ".repeat(depth + 1);
            let inner: String = children
                .iter()
                .map(|(name, child)| format!("{indent}{name:?}: {},\n", render(child, depth + 1)))
                .collect();
            format!("nn.ModuleDict({{\n{inner}{}}})", "    ".repeat(depth))
        }
    }
}

/// A Python identifier for node `path` (`layer1.0.conv1` gives `layer1_0_conv1`), not taken.
fn identifier(path: &str, taken: &mut HashSet<String>) -> String {
    let mut base: String = path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) {
        base = format!("x{base}");
    }
    let mut name = base.clone();
    let mut k = 1;
    while !taken.insert(name.clone()) {
        name = format!("{base}_{k}");
        k += 1;
    }
    name
}

fn pair(values: [usize; 2]) -> String {
    format!("({}, {})", values[0], values[1])
}

fn python_bool(value: bool) -> &'static str {
    if value {
        "True"
    } else {
        "False"
    }
}

/// A Python string literal (JSON's escapes are Python's for these).
fn python_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

fn python_list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}
