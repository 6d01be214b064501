//! A model as an ONNX file: one ONNX node per op where ONNX has the op (GELU and SiLU, which
//! opset 17 lacks, as the few nodes that compute them), initializers named as the state dict
//! names the parameters, the batch dimension named `batch` so that any batch size runs.

use super::proto::{
    attribute_type, data_type, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TensorTypeProto,
    TypeProto, ValueInfoProto,
};
use super::{metadata, IR_VERSION, OPSET};
use crate::error::Result;
use crate::fsutil::write_atomically;
use crate::graph::INPUT;
use crate::layers::{LayerSpec, PadMode, BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM};
use crate::model::Model;
use crate::tensor::Param;
use crate::window::Window2d;
use prost::Message;
use std::collections::HashMap;
use std::path::Path;

/// The name of the network's output (raw scores).
pub const LOGITS: &str = "logits";
/// The name of the optional second output, the class probabilities.
pub const PROBABILITIES: &str = "probabilities";

#[derive(Clone, Copy, Debug, Default)]
pub struct ExportOptions {
    /// Adds the output [`PROBABILITIES`], the softmax of the logits.
    pub softmax: bool,
}

/// Writes `model` as an ONNX file, atomically.
pub fn save(model: &Model, path: &Path, options: ExportOptions) -> Result<()> {
    write_atomically(path, &to_bytes(model, options)?)
}

/// The ONNX file of `model`; the same model always gives the same bytes.
pub fn to_bytes(model: &Model, options: ExportOptions) -> Result<Vec<u8>> {
    Ok(to_proto(model, options)?.encode_to_vec())
}

pub fn to_proto(model: &Model, options: ExportOptions) -> Result<ModelProto> {
    let network = &model.network;
    let mut graph = GraphBuilder::default();
    // What each of the engine's values (0 the input, `k + 1` node `k`) is in the ONNX graph:
    // a name, and whether it is flat (`[N, F]`) rather than maps (`[N, C, H, W]`).
    let mut values: Vec<(String, bool)> = vec![(INPUT.to_string(), false)];
    let last = network.nodes().len() - 1;
    for (index, node) in network.nodes().iter().enumerate() {
        let name = node.name();
        let spec = node.layer().spec();
        let tensors: HashMap<&str, &Param> = node
            .layer()
            .params()
            .iter()
            .chain(node.layer().buffers())
            .map(|p| (p.name, p))
            .collect();
        let mut inputs: Vec<(String, bool)> =
            node.inputs().iter().map(|&v| values[v].clone()).collect();
        // An op over several values of which some are flat: PyTorch would flatten the others
        // (their maps are 1x1, or the engine's shape check had refused them).
        if spec == LayerSpec::Mul {
            // A product broadcasts: flat features become `[N, F, 1, 1]` maps.
            for (k, input) in inputs.iter_mut().enumerate() {
                if input.1 {
                    let shape = network.value_shape(node.inputs()[k]);
                    let dims = [0, shape.len() as i64, 1, 1];
                    let target = graph.int64s(&format!("{name}.shape{k}"), &dims);
                    let maps = format!("{name}.maps{k}");
                    graph.node(
                        "Reshape",
                        &maps,
                        vec![input.0.clone(), target],
                        &maps,
                        vec![],
                    );
                    *input = (maps, false);
                }
            }
        } else if inputs.len() > 1 && inputs.iter().any(|(_, flat)| *flat) {
            for (k, input) in inputs.iter_mut().enumerate() {
                if !input.1 {
                    *input = (graph.flatten(&format!("{name}.flatten{k}"), &input.0), true);
                }
            }
        }
        let flat_in = inputs[0].1;
        let flags: Vec<bool> = inputs.iter().map(|(_, flat)| *flat).collect();
        let output = if index == last {
            LOGITS.to_string()
        } else {
            name.to_string()
        };
        let x = inputs[0].0.clone();
        let param = |graph: &mut GraphBuilder, param: &str| -> String {
            let full = format!("{name}.{param}");
            graph.initializer(&full, tensors[param]);
            full
        };
        let flat_out = spec.output_flat(&flags);
        match spec {
            LayerSpec::Conv2d(c) => {
                let mut args = vec![x, param(&mut graph, "weight")];
                if c.bias {
                    args.push(param(&mut graph, "bias"));
                }
                graph.node("Conv", name, args, &output, conv_attributes(&c));
            }
            LayerSpec::Dense(d) => {
                let x = if flat_in {
                    x
                } else {
                    graph.flatten(&format!("{name}.flatten"), &x)
                };
                let mut args = vec![x, param(&mut graph, "weight")];
                if d.bias {
                    args.push(param(&mut graph, "bias"));
                }
                graph.node("Gemm", name, args, &output, vec![int("transB", 1)]);
            }
            LayerSpec::BatchNorm2d => {
                let args = vec![
                    x,
                    param(&mut graph, "weight"),
                    param(&mut graph, "bias"),
                    param(&mut graph, "running_mean"),
                    param(&mut graph, "running_var"),
                ];
                graph.node(
                    "BatchNormalization",
                    name,
                    args,
                    &output,
                    vec![
                        float("epsilon", BATCH_NORM_EPSILON),
                        // ONNX's momentum weighs the old statistics, PyTorch's the new batch.
                        float("momentum", 1.0 - BATCH_NORM_MOMENTUM),
                    ],
                );
            }
            LayerSpec::MaxPool2d(w) => {
                graph.node("MaxPool", name, vec![x], &output, window_attributes(&w));
            }
            LayerSpec::AvgPool2d(w) => {
                let mut attributes = window_attributes(&w);
                // The engine divides by the pixels a window covers, never by the padding.
                attributes.push(int("count_include_pad", 0));
                graph.node("AveragePool", name, vec![x], &output, attributes);
            }
            LayerSpec::GlobalAvgPool | LayerSpec::GlobalMaxPool => {
                let op = if spec == LayerSpec::GlobalAvgPool {
                    "GlobalAveragePool"
                } else {
                    "GlobalMaxPool"
                };
                let maps = format!("{name}.maps");
                graph.node(op, &maps, vec![x], &maps, vec![]);
                graph.node("Flatten", name, vec![maps], &output, vec![int("axis", 1)]);
            }
            LayerSpec::Flatten => {
                graph.node("Flatten", name, vec![x], &output, vec![int("axis", 1)]);
            }
            LayerSpec::Relu => graph.node("Relu", name, vec![x], &output, vec![]),
            LayerSpec::Sigmoid => graph.node("Sigmoid", name, vec![x], &output, vec![]),
            LayerSpec::Tanh => graph.node("Tanh", name, vec![x], &output, vec![]),
            LayerSpec::LeakyRelu { slope } => {
                graph.node(
                    "LeakyRelu",
                    name,
                    vec![x],
                    &output,
                    vec![float("alpha", slope)],
                );
            }
            LayerSpec::Silu => {
                let sigmoid = format!("{name}.sigmoid");
                graph.node("Sigmoid", &sigmoid, vec![x.clone()], &sigmoid, vec![]);
                graph.node("Mul", name, vec![x, sigmoid], &output, vec![]);
            }
            LayerSpec::Gelu => graph.gelu(name, &x, &output),
            LayerSpec::Clip { min, max } => {
                // Since opset 11 the bounds are inputs; an empty name is no bound.
                let bound = |graph: &mut GraphBuilder, which: &str, value: Option<f32>| {
                    value.map_or(String::new(), |v| {
                        graph.scalar(&format!("{name}.{which}"), v)
                    })
                };
                let args = vec![
                    x,
                    bound(&mut graph, "min", min),
                    bound(&mut graph, "max", max),
                ];
                graph.node("Clip", name, args, &output, vec![]);
            }
            LayerSpec::HardSigmoid { alpha, beta } => graph.node(
                "HardSigmoid",
                name,
                vec![x],
                &output,
                vec![float("alpha", alpha), float("beta", beta)],
            ),
            LayerSpec::HardSwish => graph.node("HardSwish", name, vec![x], &output, vec![]),
            LayerSpec::Lrn(c) => graph.node(
                "LRN",
                name,
                vec![x],
                &output,
                vec![
                    int("size", c.size as i64),
                    float("alpha", c.alpha),
                    float("beta", c.beta),
                    float("bias", c.bias),
                ],
            ),
            LayerSpec::Reshape { shape } => {
                // 0: the batch, as it is.
                let dims = [0, shape[0] as i64, shape[1] as i64, shape[2] as i64];
                let target = graph.int64s(&format!("{name}.shape"), &dims);
                graph.node("Reshape", name, vec![x, target], &output, vec![]);
            }
            LayerSpec::Pad { pads, mode } => {
                // `pads`: the start of every axis, then the end (N and C are not padded).
                let [top, left, bottom, right] = pads.map(|p| p as i64);
                let sizes = graph.int64s(
                    &format!("{name}.pads"),
                    &[0, 0, top, left, 0, 0, bottom, right],
                );
                let (mode, args) = match mode {
                    PadMode::Constant { value } => {
                        let value = graph.scalar(&format!("{name}.value"), value);
                        ("constant", vec![x, sizes, value])
                    }
                    PadMode::Edge => ("edge", vec![x, sizes]),
                    PadMode::Reflect => ("reflect", vec![x, sizes]),
                };
                graph.node("Pad", name, args, &output, vec![string("mode", mode)]);
            }
            LayerSpec::ConstantOp { op, .. } => {
                let constant = param(&mut graph, "constant");
                let (op, constant_first) = op.onnx();
                let args = if constant_first {
                    vec![constant, x]
                } else {
                    vec![x, constant]
                };
                graph.node(op, name, args, &output, vec![]);
            }
            LayerSpec::Prelu { shared } => {
                // ONNX broadcasts from the last axis: slopes per channel of maps are `[C, 1, 1]`.
                let weight = tensors["weight"];
                let dims = if shared || flat_in {
                    weight.dims.clone()
                } else {
                    vec![weight.dims[0], 1, 1]
                };
                let slope = format!("{name}.weight");
                graph.initializer(
                    &slope,
                    &Param {
                        name: "weight",
                        dims,
                        value: weight.value.clone(),
                    },
                );
                graph.node("PRelu", name, vec![x, slope], &output, vec![]);
            }
            // Dropout does nothing at inference: it is left out, its readers read its input.
            LayerSpec::Dropout { .. } if index != last => {
                values.push(inputs.swap_remove(0));
                continue;
            }
            LayerSpec::Dropout { .. } | LayerSpec::Identity => {
                graph.node("Identity", name, vec![x], &output, vec![]);
            }
            LayerSpec::Add => {
                let op = if inputs.len() == 2 { "Add" } else { "Sum" };
                let args = inputs.into_iter().map(|(n, _)| n).collect();
                graph.node(op, name, args, &output, vec![]);
            }
            LayerSpec::Mul => {
                let args = inputs.into_iter().map(|(n, _)| n).collect();
                graph.node("Mul", name, args, &output, vec![]);
            }
            LayerSpec::Concat => {
                let args = inputs.into_iter().map(|(n, _)| n).collect();
                graph.node("Concat", name, args, &output, vec![int("axis", 1)]);
            }
        }
        values.push((output, flat_out));
    }
    let classes = model.classes.len() as i64;
    // The network's outputs in its order, the last node's as the logits.
    let mut outputs: Vec<ValueInfoProto> = network
        .output_names()
        .iter()
        .map(|&name| {
            let v = network.find_node(name).expect("an output is a node") + 1;
            if v == last + 1 {
                return value_info(LOGITS, &[None, Some(classes)]);
            }
            let (value, flat) = &values[v];
            let shape = network.value_shape(v);
            let dims: Vec<Option<i64>> = if *flat {
                vec![None, Some(shape.len() as i64)]
            } else {
                std::iter::once(None)
                    .chain([shape.channels, shape.height, shape.width].map(|d| Some(d as i64)))
                    .collect()
            };
            value_info(value, &dims)
        })
        .collect();
    if options.softmax {
        graph.node(
            "Softmax",
            PROBABILITIES,
            vec![LOGITS.to_string()],
            PROBABILITIES,
            vec![int("axis", 1)],
        );
        outputs.push(value_info(PROBABILITIES, &[None, Some(classes)]));
    }
    let shape = network.input_shape();
    let input = value_info(
        INPUT,
        &[
            None,
            Some(shape.channels as i64),
            Some(shape.height as i64),
            Some(shape.width as i64),
        ],
    );
    let metadata_props = metadata(model)?
        .into_iter()
        .map(|(key, value)| StringStringEntryProto { key, value })
        .collect();
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "cnn".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: String::new(),
        graph: Some(GraphProto {
            node: graph.nodes,
            name: "cnn".into(),
            initializer: graph.initializers,
            doc_string: String::new(),
            input: vec![input],
            output: outputs,
            value_info: Vec::new(),
        }),
        metadata_props,
    })
}

#[derive(Default)]
struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl GraphBuilder {
    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: Vec<String>,
        output: &str,
        attribute: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output.to_string()],
            name: name.to_string(),
            op_type: op.to_string(),
            domain: String::new(),
            attribute,
        });
    }

    /// `[N, C, H, W]` to `[N, C*H*W]`, as a node named `name`; returns its output.
    fn flatten(&mut self, name: &str, input: &str) -> String {
        self.node(
            "Flatten",
            name,
            vec![input.to_string()],
            name,
            vec![int("axis", 1)],
        );
        name.to_string()
    }

    fn initializer(&mut self, name: &str, param: &Param) {
        self.initializers.push(TensorProto {
            dims: param.dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::FLOAT,
            name: name.to_string(),
            raw_data: param.value.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..TensorProto::default()
        });
    }

    fn int64s(&mut self, name: &str, values: &[i64]) -> String {
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: data_type::INT64,
            name: name.to_string(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..TensorProto::default()
        });
        name.to_string()
    }

    fn scalar(&mut self, name: &str, value: f32) -> String {
        self.initializers.push(TensorProto {
            data_type: data_type::FLOAT,
            name: name.to_string(),
            raw_data: value.to_le_bytes().to_vec(),
            ..TensorProto::default()
        });
        name.to_string()
    }

    /// The exact GELU, `x * (1 + erf(x / sqrt 2)) / 2`, in the nodes PyTorch exports it as
    /// (ONNX Runtime recognises them and runs its own GELU kernel).
    fn gelu(&mut self, name: &str, x: &str, output: &str) {
        let step = |s: &str| format!("{name}.{s}");
        let sqrt2 = self.scalar(&step("sqrt2"), std::f32::consts::SQRT_2);
        let one = self.scalar(&step("one"), 1.0);
        let half = self.scalar(&step("half"), 0.5);
        let x = x.to_string();
        self.node(
            "Div",
            &step("div"),
            vec![x.clone(), sqrt2],
            &step("div"),
            vec![],
        );
        self.node("Erf", &step("erf"), vec![step("div")], &step("erf"), vec![]);
        self.node(
            "Add",
            &step("add"),
            vec![step("erf"), one],
            &step("add"),
            vec![],
        );
        self.node(
            "Mul",
            &step("mul"),
            vec![x, step("add")],
            &step("mul"),
            vec![],
        );
        self.node("Mul", name, vec![step("mul"), half], output, vec![]);
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i: value,
        ..AttributeProto::default()
    }
}

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: values.iter().map(|&v| v as i64).collect(),
        ..AttributeProto::default()
    }
}

fn string(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::STRING,
        s: value.as_bytes().to_vec(),
        ..AttributeProto::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::FLOAT,
        f: value,
        ..AttributeProto::default()
    }
}

/// ONNX's `pads`: the start of each axis, then the end (`[top, left, bottom, right]`).
fn pads(padding: [usize; 2]) -> AttributeProto {
    ints("pads", &[padding[0], padding[1], padding[0], padding[1]])
}

fn conv_attributes(c: &crate::layers::Conv2dConfig) -> Vec<AttributeProto> {
    vec![
        ints("kernel_shape", &c.kernel),
        ints("strides", &c.stride),
        pads(c.padding),
        ints("dilations", &c.dilation),
        int("group", c.groups as i64),
    ]
}

fn window_attributes(w: &Window2d) -> Vec<AttributeProto> {
    vec![
        ints("kernel_shape", &w.kernel),
        ints("strides", &w.stride),
        pads(w.padding),
        int("ceil_mode", w.ceil_mode as i64),
    ]
}

/// A float tensor's name and shape; `None` is the batch dimension, named `batch`.
fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Some(size) => Dimension {
                dim_value: Some(*size),
                dim_param: None,
            },
            None => Dimension {
                dim_value: None,
                dim_param: Some("batch".into()),
            },
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}
