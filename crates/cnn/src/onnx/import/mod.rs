//! ONNX files as this engine's graphs. Each ONNX node becomes a node of [`Architecture`], or is
//! folded away: computations on constants and on shapes (`Shape`, `Gather`, `Concat`,
//! `Unsqueeze` feeding a `Reshape`) are evaluated at load, a constant added after a convolution
//! or a `MatMul` becomes its bias, `x * sigmoid(x)` becomes SiLU and the nodes of the exact GELU
//! become GELU. Everything is checked before it is used: the file is untrusted. A graph with ops
//! this engine cannot run gets one error that lists every one of them with its node's name.

mod attributes;
mod constant;
mod ops;

use super::proto::{data_type, GraphProto, ModelProto, NodeProto, ValueInfoProto};
use crate::error::{Error, Result};
use crate::fsutil::read_file;
use crate::graph::{Architecture, NodeSpec, INPUT};
use crate::kernels::simd::Isa;
use crate::layers::LayerSpec;
use crate::limits::{NetworkBudget, MAX_LAYERS, MAX_MODEL_FILE_BYTES, MAX_PARAMETERS};
use crate::model::Model;
use crate::network::Network;
use crate::preprocess::Preprocessing;
use crate::tensor::Shape;
use constant::{read_tensor, Constant};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The opsets of the default domain read here. Opsets 23 to 25 changed the ops read here only
/// in the element types they accept (4- and 8-bit numbers), not in what they compute on floats.
pub const OPSETS: std::ops::RangeInclusive<i64> = 6..=25;

/// What a foreign file does not say: its class names and how pictures become its input.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    pub classes: Option<Vec<String>>,
    pub preprocessing: Option<Preprocessing>,
}

/// How a value of the ONNX graph, `[N, ...]`, is held in the engine's `C x H x W` shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[N]`, one value per sample: `1 x 1 x 1`.
    Scalar,
    /// `[N, F]`, features: `F x 1 x 1`.
    Features,
    /// `[N, C, L]`, what 1-D convolutions and pools read: `C x 1 x L`.
    Sequence,
    /// `[N, C, H, W]`, feature maps.
    Maps,
}

impl Layout {
    /// The value's ONNX dimensions after the batch.
    pub fn dims(self, shape: Shape) -> Vec<usize> {
        match self {
            Layout::Scalar => vec![],
            Layout::Features => vec![shape.len()],
            Layout::Sequence => vec![shape.channels, shape.width],
            Layout::Maps => vec![shape.channels, shape.height, shape.width],
        }
    }

    /// Its rank, the batch included.
    pub fn rank(self) -> i64 {
        match self {
            Layout::Scalar => 1,
            Layout::Features => 2,
            Layout::Sequence => 3,
            Layout::Maps => 4,
        }
    }
}

/// A network read from an ONNX file, with what the file says about it.
#[derive(Debug)]
pub struct Imported {
    pub network: Network,
    /// How the file's input is held in the network's input shape.
    pub input_layout: Layout,
    /// The file's outputs, in its order; the network's main output (its last node's, which
    /// prediction and training use) is [`Imported::main_output`].
    pub outputs: Vec<Output>,
    main_output: usize,
    /// `metadata_props`, as `cnn export` writes them (class names, preprocessing...).
    pub metadata: HashMap<String, String>,
}

/// One output of an ONNX file, as the network computes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Its name in the file.
    pub name: String,
    /// The node of the network that gives it.
    pub node: String,
    /// How the node's output is the file's.
    pub layout: Layout,
    /// Whether the file's output is the softmax of the node's, over the classes: the network
    /// leaves it out (a model's predictions apply it, [`Model::predict`] gives probabilities).
    pub softmax: bool,
}

impl Imported {
    /// The output the network's last node gives: of the file's outputs, the first from which
    /// no other is computed.
    pub fn main_output(&self) -> &Output {
        &self.outputs[self.main_output]
    }
}

/// Reads an ONNX file as a model (a classifier: its output one score per class).
pub fn load(path: &Path, options: &ImportOptions) -> Result<Model> {
    let bytes = read_file(path, MAX_MODEL_FILE_BYTES)?;
    from_bytes(&bytes, options).map_err(|message| Error::file(path, message))
}

/// Reads an ONNX file as a network, whatever its output.
pub fn load_network(path: &Path) -> Result<Imported> {
    let bytes = read_file(path, MAX_MODEL_FILE_BYTES)?;
    network_from_bytes(&bytes).map_err(|message| Error::file(path, message))
}

pub fn from_bytes(bytes: &[u8], options: &ImportOptions) -> std::result::Result<Model, String> {
    network_from_bytes(bytes)?.into_model(options)
}

impl Imported {
    /// The network as a classifier, with class names and preprocessing from `options`, else
    /// from the file's metadata, else `0, 1, 2...` and none.
    pub fn into_model(self, options: &ImportOptions) -> std::result::Result<Model, String> {
        let output = self.network.output_shape();
        if self.main_output().layout != Layout::Features {
            return Err(format!(
                "its output is feature maps ({output}), not one score per class"
            ));
        }
        let metadata = &self.metadata;
        let parse = |key: &str| -> std::result::Result<Option<serde_json::Value>, String> {
            metadata
                .get(key)
                .map(|text| {
                    serde_json::from_str(text)
                        .map_err(|e| format!("metadata `{key}` is malformed: {e}"))
                })
                .transpose()
        };
        let classes = match (&options.classes, parse("classes")?) {
            (Some(classes), _) => classes.clone(),
            (None, Some(stored)) => serde_json::from_value(stored)
                .map_err(|e| format!("metadata `classes` is malformed: {e}"))?,
            (None, None) => (0..output.channels).map(|i| i.to_string()).collect(),
        };
        let channels = self.network.input_shape().channels;
        let preprocessing = match (&options.preprocessing, parse("preprocessing")?) {
            (Some(preprocessing), _) => preprocessing.clone(),
            (None, Some(stored)) => serde_json::from_value(stored)
                .map_err(|e| format!("metadata `preprocessing` is malformed: {e}"))?,
            (None, None) => Preprocessing::identity(channels),
        };
        let mut model =
            Model::new(self.network, classes, preprocessing).map_err(|e| e.to_string())?;
        model.data = metadata.get("data").cloned();
        model.training = parse("training")?;
        Ok(model)
    }
}

/// Parses an ONNX file and builds its network; the error says what is wrong with the file.
pub fn network_from_bytes(bytes: &[u8]) -> std::result::Result<Imported, String> {
    if bytes.is_empty() {
        return Err("empty file, not an ONNX model".into());
    }
    let model = ModelProto::decode(bytes).map_err(|e| format!("not a valid ONNX file ({e})"))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or("an ONNX file without the default opset (`ai.onnx`), not a model this reads")?;
    if !OPSETS.contains(&opset) {
        return Err(format!(
            "opset {opset} is not supported (opsets {} to {} are)",
            OPSETS.start(),
            OPSETS.end()
        ));
    }
    let graph = model.graph.as_ref().ok_or("an ONNX file without a graph")?;
    let metadata = model
        .metadata_props
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    let converter = Converter::new(graph, opset)?;
    let input_layout = converter.input_layout;
    let converted = converter.run(graph)?;
    Ok(Imported {
        network: converted.network,
        input_layout,
        outputs: converted.outputs,
        main_output: converted.main_output,
        metadata,
    })
}

// ---------------------------------------------------------------------------------------------
// Values

/// A value computed when the network runs: the output of one of the engine's nodes (or its
/// input).
#[derive(Clone, Debug)]
struct Dynamic {
    /// The engine's name for it: a node's name, or [`INPUT`].
    name: String,
    shape: Shape,
    layout: Layout,
}

/// Stands for the batch among a computed value's ONNX dimensions (see [`Dynamic::onnx_dims`]).
const BATCH_DIM: usize = usize::MAX;

impl Dynamic {
    /// `[N, F]` features.
    fn flat(&self) -> bool {
        self.layout == Layout::Features
    }

    /// `[N, C, L]` or `[N, C, H, W]`: what convolutions, pools and batch norm read.
    fn spatial(&self) -> bool {
        matches!(self.layout, Layout::Sequence | Layout::Maps)
    }

    /// Its ONNX dimensions, [`BATCH_DIM`] first.
    fn onnx_dims(&self) -> Vec<usize> {
        std::iter::once(BATCH_DIM)
            .chain(self.layout.dims(self.shape))
            .collect()
    }
}

#[derive(Clone, Debug)]
enum Value {
    Constant(Constant),
    Dynamic(Dynamic),
    /// Part of the exact GELU of `x`: `x / sqrt 2` (step 1), its `erf` (2), `1 + erf` (3),
    /// `x * (1 + erf)` (4); the nodes that made it, in case the rest never comes.
    Gelu {
        x: Dynamic,
        step: u8,
        nodes: Vec<String>,
    },
    /// The softmax of `x` over its features, which the engine computes only as an output of
    /// the graph (as the CLI's predictions do).
    Softmax(Dynamic),
    /// The output of a node that could not be converted: nodes reading it are skipped.
    Failed,
}

/// One of the engine's nodes being built, with its parameters.
struct Built {
    spec: NodeSpec,
    params: Vec<(&'static str, Vec<f32>)>,
}

struct Converter {
    opset: i64,
    input_shape: Shape,
    input_layout: Layout,
    /// Values of the constants computed so far (see [`Converter::run`]).
    computed: usize,
    values: HashMap<String, Value>,
    /// How many node inputs and graph outputs read each value.
    readers: HashMap<String, usize>,
    built: Vec<Built>,
    names: HashSet<String>,
    /// The engine's nodes whose output it holds as flattened features (after `gap`, `dense`...),
    /// which ops that need maps cannot read without a reshape.
    flattened: HashSet<String>,
    unsupported: Vec<String>,
    budget: NetworkBudget,
}

struct Converted {
    network: Network,
    outputs: Vec<Output>,
    main_output: usize,
}

type Outcome = std::result::Result<Value, Unsupported>;

/// Why a node cannot be converted: its op or a setting this engine does not compute.
struct Unsupported(String);

fn unsupported<T>(reason: impl Into<String>) -> std::result::Result<T, Unsupported> {
    Err(Unsupported(reason.into()))
}

impl Converter {
    fn new(graph: &GraphProto, opset: i64) -> std::result::Result<Self, String> {
        if graph.node.len() > MAX_LAYERS {
            return Err(format!(
                "its graph has {} nodes, more than the {MAX_LAYERS} a network may have",
                graph.node.len()
            ));
        }
        let mut values = HashMap::new();
        let mut total = 0usize;
        for tensor in &graph.initializer {
            let constant =
                read_tensor(tensor).map_err(|e| format!("initializer `{}`: {e}", tensor.name))?;
            total = total.saturating_add(constant.len());
            if total > MAX_PARAMETERS {
                return Err(format!(
                    "its initializers hold more than {MAX_PARAMETERS} values"
                ));
            }
            values.insert(tensor.name.clone(), Value::Constant(constant));
        }
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !values.contains_key(&i.name))
            .collect();
        let [input] = inputs.as_slice() else {
            if inputs.is_empty() {
                return Err("it has no input besides its initializers".into());
            }
            return Err(format!(
                "networks of several inputs are not supported (it has {}: {})",
                inputs.len(),
                inputs
                    .iter()
                    .map(|i| format!("`{}`", i.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let (shape, layout) = input_shape(input)?;
        let budget =
            NetworkBudget::new(graph.node.len().max(1), shape).map_err(|e| e.to_string())?;
        values.insert(
            input.name.clone(),
            Value::Dynamic(Dynamic {
                name: INPUT.into(),
                shape,
                layout,
            }),
        );
        let mut readers = HashMap::new();
        for name in graph
            .node
            .iter()
            .flat_map(|n| &n.input)
            .chain(graph.output.iter().map(|o| &o.name))
        {
            *readers.entry(name.clone()).or_insert(0) += 1;
        }
        Ok(Converter {
            opset,
            input_shape: shape,
            input_layout: layout,
            computed: 0,
            values,
            readers,
            built: Vec::new(),
            names: HashSet::from([INPUT.to_string()]),
            flattened: HashSet::new(),
            unsupported: Vec::new(),
            budget,
        })
    }

    fn run(mut self, graph: &GraphProto) -> std::result::Result<Converted, String> {
        if graph.output.is_empty() {
            return Err("its graph has no output".into());
        }
        let needed = needed_nodes(graph);
        for (index, node) in graph.node.iter().enumerate() {
            if !needed[index] {
                continue;
            }
            let label = node_label(node, index);
            // Every input must be known: ONNX lists nodes in an order where each comes after
            // what it reads, so anything else is a cycle or a dangling name.
            let mut inputs = Vec::with_capacity(node.input.len());
            for name in &node.input {
                if name.is_empty() {
                    inputs.push(None);
                    continue;
                }
                match self.values.get(name) {
                    Some(value) => inputs.push(Some(value.clone())),
                    None => {
                        return Err(format!(
                            "node {label} reads `{name}`, which no node before it gives and is \
                             not an input or initializer (a cycle, or a graph out of order)"
                        ))
                    }
                }
            }
            if node.output.is_empty() {
                return Err(format!("node {label} has no output"));
            }
            for name in node.output.iter().filter(|n| !n.is_empty()) {
                if self.values.contains_key(name) {
                    return Err(format!(
                        "node {label} gives `{name}`, which is already defined"
                    ));
                }
            }
            let value = if inputs.iter().flatten().any(|v| matches!(v, Value::Failed)) {
                // After a node that failed, only ops that are not read at all are listed: the
                // others may well be fine once the first is.
                if !ops::READ_OPS.contains(&node.op_type.as_str())
                    || !(node.domain.is_empty() || node.domain == "ai.onnx")
                {
                    self.unsupported.push(format!("{} ({label})", node.op_type));
                }
                Value::Failed
            } else {
                match self.convert(node, &label, &inputs) {
                    Ok(Value::Constant(c)) if node.op_type != "Constant" => {
                        // Constants computed at load, copies included, within what the
                        // file's own tensors may hold.
                        self.computed = self.computed.saturating_add(c.len());
                        if self.computed > MAX_PARAMETERS {
                            return Err(format!(
                                "node {label}: the constants computed at load exceed \
                                 {MAX_PARAMETERS} values"
                            ));
                        }
                        Value::Constant(c)
                    }
                    Ok(value) => value,
                    Err(Unsupported(reason)) => {
                        self.unsupported
                            .push(format!("{} ({label}{reason})", node.op_type));
                        Value::Failed
                    }
                }
            };
            self.values.insert(node.output[0].clone(), value);
            // Other outputs (a dropout's mask, a pool's indices) are not computed: a node that
            // reads one fails.
            for extra in node.output.iter().skip(1).filter(|n| !n.is_empty()) {
                if self.readers.contains_key(extra) {
                    self.unsupported.push(format!(
                        "{} ({label}: its output `{extra}` is used)",
                        node.op_type
                    ));
                }
                self.values.insert(extra.clone(), Value::Failed);
            }
        }
        if !self.unsupported.is_empty() {
            return Err(format!(
                "not supported by this engine: {}",
                self.unsupported.join(", ")
            ));
        }
        let mut outputs = Vec::with_capacity(graph.output.len());
        let mut input_copy: Option<Dynamic> = None;
        for output in &graph.output {
            let (value, softmax) = match self.values.get(&output.name) {
                Some(Value::Dynamic(d)) => (d.clone(), false),
                Some(Value::Softmax(d)) => (d.clone(), true),
                Some(Value::Gelu { nodes, .. }) => {
                    return Err(format!(
                        "not supported by this engine: {}",
                        nodes.join(", ")
                    ))
                }
                Some(_) => {
                    return Err(format!(
                        "a constant output (`{}`) is not supported: nothing in it is computed",
                        output.name
                    ))
                }
                None => return Err(format!("no node gives its output `{}`", output.name)),
            };
            // An output that is the input is a node's: an identity's.
            let value = match (value.name == INPUT, &input_copy) {
                (false, _) => value,
                (true, Some(copy)) => copy.clone(),
                (true, None) => {
                    let copy = self
                        .add("identity", LayerSpec::Identity, vec![value], Vec::new())
                        .map_err(|Unsupported(e)| e)?;
                    input_copy = Some(copy.clone());
                    copy
                }
            };
            outputs.push(Output {
                name: output.name.clone(),
                node: value.name,
                layout: value.layout,
                softmax,
            });
        }
        let main_output = self.main_output(&outputs);
        let architecture = self.architecture(&outputs, &outputs[main_output].node);
        let mut network = Network::new(&architecture, self.input_shape)
            .map_err(|e| format!("its graph does not build: {e}"))?;
        let mut params: HashMap<&str, Vec<(&'static str, Vec<f32>)>> = self
            .built
            .iter_mut()
            .map(|b| (b.spec.name.as_str(), std::mem::take(&mut b.params)))
            .collect();
        for node in network.nodes_mut() {
            let values = params.remove(node.name()).unwrap_or_default();
            let layer = node.layer_mut();
            for (name, value) in values {
                let target = match layer.params_mut().iter().position(|p| p.name == name) {
                    Some(k) => layer.params_mut().get_mut(k),
                    None => layer.buffers_mut().iter_mut().find(|p| p.name == name),
                };
                match target {
                    Some(param) if param.value.len() == value.len() => param.value = value,
                    _ => {
                        return Err(format!(
                            "node `{}`: parameter `{name}` does not fit its op",
                            node.name()
                        ))
                    }
                }
            }
        }
        Ok(Converted {
            network,
            outputs,
            main_output,
        })
    }

    /// Of the outputs, the first whose node no other output's is computed from (there is one:
    /// the output whose node was built last).
    fn main_output(&self, outputs: &[Output]) -> usize {
        let used: HashSet<&str> = outputs
            .iter()
            .flat_map(|o| {
                let mut before = self.ancestors([o.node.as_str()]);
                before.remove(o.node.as_str());
                before
            })
            .collect();
        outputs
            .iter()
            .position(|o| !used.contains(o.node.as_str()))
            .expect("the last built output is computed from no other")
    }

    /// The nodes `nodes` are computed from, themselves included.
    fn ancestors<'a>(&'a self, nodes: impl IntoIterator<Item = &'a str>) -> HashSet<&'a str> {
        let mut needed: HashSet<&str> = nodes.into_iter().collect();
        for built in self.built.iter().rev() {
            if needed.contains(built.spec.name.as_str()) {
                needed.extend(built.spec.inputs.iter().map(String::as_str));
            }
        }
        needed
    }

    /// The nodes the outputs depend on, in order, the main one's node last (nothing the
    /// outputs need is computed from it).
    fn architecture(&self, outputs: &[Output], main: &str) -> Architecture {
        let needed = self.ancestors(outputs.iter().map(|o| o.node.as_str()));
        let kept = || {
            self.built
                .iter()
                .filter(|b| needed.contains(b.spec.name.as_str()))
        };
        let mut nodes: Vec<NodeSpec> = kept()
            .filter(|b| b.spec.name != main)
            .map(|b| b.spec.clone())
            .collect();
        nodes.extend(
            kept()
                .filter(|b| b.spec.name == main)
                .map(|b| b.spec.clone()),
        );
        let mut names: Vec<String> = Vec::new();
        for output in outputs {
            if !names.contains(&output.node) {
                names.push(output.node.clone());
            }
        }
        Architecture {
            nodes,
            outputs: if names.len() > 1 { names } else { Vec::new() },
        }
    }

    /// Adds one of the engine's nodes reading `inputs`; its name is `name` made unique.
    fn add(
        &mut self,
        name: &str,
        op: LayerSpec,
        inputs: Vec<Dynamic>,
        params: Vec<(&'static str, Vec<f32>)>,
    ) -> std::result::Result<Dynamic, Unsupported> {
        // ONNX's global pools keep `[N, C, 1, 1]` maps, which a convolution may read (the
        // excitation of a squeeze-and-excitation block); the engine's flatten them.
        let mut inputs = inputs;
        if op.needs_maps() {
            for input in &mut inputs {
                if self.flattened.contains(&input.name) {
                    let s = input.shape;
                    let reshape = LayerSpec::Reshape {
                        shape: [s.channels, s.height, s.width],
                    };
                    let maps = self.add(
                        &format!("{}.maps", input.name),
                        reshape,
                        vec![input.clone()],
                        Vec::new(),
                    )?;
                    *input = Dynamic {
                        layout: input.layout,
                        ..maps
                    };
                }
            }
        }
        let name = self.unique(name);
        let shapes: Vec<Shape> = inputs.iter().map(|d| d.shape).collect();
        let layer = op
            .build(&name, &shapes, Isa::Portable)
            .map_err(|e| Unsupported(format!(": {e}")))?;
        self.budget
            .add(&name, &shapes, layer.as_ref())
            .map_err(|e| Unsupported(format!(": {e}")))?;
        for (param, value) in &params {
            let expected = layer
                .params()
                .iter()
                .chain(layer.buffers())
                .find(|p| p.name == *param)
                .map(|p| p.value.len());
            if expected != Some(value.len()) {
                return unsupported(format!(": its {param} has {} values", value.len()));
            }
        }
        let output = layer.output_shape();
        let held_flat: Vec<bool> = inputs
            .iter()
            .map(|d| self.flattened.contains(&d.name))
            .collect();
        if op.output_flat(&held_flat) {
            self.flattened.insert(name.clone());
        }
        let flags: Vec<bool> = inputs.iter().map(Dynamic::flat).collect();
        let layout = if op.output_flat(&flags) {
            Layout::Features
        } else if matches!(op, LayerSpec::Reshape { .. }) {
            Layout::Maps
        } else {
            inputs[0].layout
        };
        self.built.push(Built {
            spec: NodeSpec {
                name: name.clone(),
                op,
                inputs: inputs.into_iter().map(|d| d.name).collect(),
            },
            params,
        });
        Ok(Dynamic {
            name,
            shape: output,
            layout,
        })
    }

    fn unique(&mut self, name: &str) -> String {
        let base = if name.is_empty() { "node" } else { name };
        let mut candidate = base.to_string();
        let mut k = 1;
        while self.names.contains(&candidate) {
            candidate = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(candidate.clone());
        candidate
    }

    /// The engine's node that gives `value`, if `value` is read by one node only (so that node
    /// may absorb what comes after it).
    fn sole_producer(&self, onnx_name: &str, value: &Dynamic) -> Option<usize> {
        if self.readers.get(onnx_name).copied() != Some(1) {
            return None;
        }
        self.built.iter().position(|b| b.spec.name == value.name)
    }
}

/// Which nodes the graph's outputs depend on: the others are never run.
fn needed_nodes(graph: &GraphProto) -> Vec<bool> {
    let mut wanted: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut needed = vec![false; graph.node.len()];
    for (index, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| wanted.contains(o.as_str())) {
            needed[index] = true;
            wanted.extend(node.input.iter().map(String::as_str));
        }
    }
    needed
}

fn node_label(node: &NodeProto, index: usize) -> String {
    if node.name.is_empty() {
        format!("node {index}")
    } else {
        format!("`{}`", node.name)
    }
}

/// The engine's name for the node made from `node`: its weights' module path when they are
/// named as a state dict names them (`layer1.0.conv1.weight` gives `layer1.0.conv1`),
/// otherwise the ONNX node's name as a path (`/layer1/relu/Relu` gives `layer1.relu`),
/// otherwise its output's name.
fn module_name(node: &NodeProto, values: &HashMap<String, Value>) -> String {
    let weight = node
        .input
        .get(1)
        .filter(|w| matches!(values.get(*w), Some(Value::Constant(_))));
    if let Some(path) = weight.and_then(|w| w.strip_suffix(".weight")) {
        if is_path(path) {
            return path.to_string();
        }
    }
    let from_node = node
        .name
        .trim_matches('/')
        .split('/')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>();
    // PyTorch names nodes `/module/path/OpType`; the last part is the op.
    let path = match from_node.as_slice() {
        [] => String::new(),
        [only] => only.to_string(),
        [path @ .., _op] if node.name.starts_with('/') => path.join("."),
        parts => parts.join("."),
    };
    if is_path(&path) && path != INPUT {
        return path;
    }
    let output = node.output.first().cloned().unwrap_or_default();
    if is_path(&output) && output != INPUT {
        output
    } else {
        node.op_type.to_lowercase()
    }
}

fn is_path(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn input_shape(input: &ValueInfoProto) -> std::result::Result<(Shape, Layout), String> {
    let tensor = input
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| format!("its input `{}` is not a tensor", input.name))?;
    if tensor.elem_type != data_type::FLOAT {
        return Err(format!(
            "its input `{}` is not float32 (element type {})",
            input.name, tensor.elem_type
        ));
    }
    let dims: Vec<Option<i64>> = tensor
        .shape
        .as_ref()
        .map(|s| s.dim.iter().map(|d| d.dim_value).collect())
        .unwrap_or_default();
    let size = |k: usize| -> std::result::Result<usize, String> {
        match dims[k] {
            Some(d) if d > 0 => usize::try_from(d).map_err(|_| "too large".to_string()),
            _ => Err(format!(
                "its input `{}` has no fixed size in dimension {k} (only the batch may vary)",
                input.name
            )),
        }
    };
    let shape = match dims.len() {
        4 => (Shape::new(size(1)?, size(2)?, size(3)?), Layout::Maps),
        3 => (Shape::new(size(1)?, 1, size(2)?), Layout::Sequence),
        1 => (Shape::flat(1), Layout::Scalar),
        2 => (Shape::flat(size(1)?), Layout::Features),
        rank => {
            return Err(format!(
                "its input `{}` has rank {rank}; this engine reads [N, C, H, W] images, [N, C, L] \
                 sequences, [N, F] features or [N] values",
                input.name
            ))
        }
    };
    let values = [shape.0.channels, shape.0.height, shape.0.width]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if values.is_none_or(|v| v > crate::limits::MAX_IMAGE_VALUES) {
        return Err(format!("its input `{}` is too large", input.name));
    }
    Ok(shape)
}
