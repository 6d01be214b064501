//! Model files: safetensors, laid out as PyTorch's `nn.Sequential` state dict, so that
//! `model.load_state_dict(safetensors.torch.load_file(path))` works without conversion.
//!
//! Tensors are named `"<node>.weight"` and `"<node>.bias"` (a plain stack's nodes are named by
//! their index, a graph's by their module path: [`crate::graph`]), little-endian f32,
//! conv weights `[out, in, kh, kw]`, dense weights `[out, in]`; batch normalisation adds
//! `running_mean`, `running_var` (f32) and `num_batches_tracked` (int64, shape `[]`). The
//! header's `__metadata__` holds JSON strings: `architecture` (the layer list of a stack, the
//! nodes of a graph, each op with every setting another framework needs to rebuild it,
//! defaults included: see [`architecture_to_json`]), `notation` (the same in the text
//! notation), `input_shape` (`[C, H, W]`), `classes`, `preprocessing`, `format`, and, when
//! known, `data` (the `--data` spec it was trained on) and `training` (how: whatever the
//! trainer recorded, as JSON). Keys added since `cnn-model-1` began are optional when reading.

use crate::arch::to_notation;
use crate::error::{Error, Result};
use crate::fsutil::{read_file, write_atomically};
use crate::graph::Architecture;
use crate::limits::MAX_MODEL_FILE_BYTES;
use crate::model::Model;
use crate::network::Network;
use crate::preprocess::Preprocessing;
use crate::tensor::{Param, Shape};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::Path;

/// Written into `format`; a file without it was not written by this program.
pub const FORMAT: &str = "cnn-model-1";

/// Serialises a model to safetensors bytes. The same model always gives the same bytes.
pub fn to_bytes(model: &Model) -> Result<Vec<u8>> {
    parts_to_bytes(
        &model.network,
        &model.classes,
        &model.preprocessing,
        model.data.as_deref(),
        model.training.as_ref(),
    )
}

/// The `__metadata__` of a model file: everything but the tensors (an ONNX file carries the
/// same, as its `metadata_props`).
pub fn metadata(
    network: &Network,
    classes: &[String],
    preprocessing: &Preprocessing,
    data: Option<&str>,
    training: Option<&serde_json::Value>,
) -> Result<HashMap<String, String>> {
    let architecture = network.architecture();
    let shape = network.input_shape();
    let json = |value: serde_json::Result<String>| {
        value.map_err(|e| Error::Invalid(format!("cannot describe the model: {e}")))
    };
    let mut metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        (
            "architecture".to_string(),
            json(serde_json::to_string(&architecture_to_json(&architecture)?))?,
        ),
        ("notation".to_string(), to_notation(&architecture)),
        (
            "input_shape".to_string(),
            json(serde_json::to_string(&[
                shape.channels,
                shape.height,
                shape.width,
            ]))?,
        ),
        ("classes".to_string(), json(serde_json::to_string(classes))?),
        (
            "preprocessing".to_string(),
            json(serde_json::to_string(preprocessing))?,
        ),
    ]);
    if let Some(data) = data {
        metadata.insert("data".to_string(), data.to_string());
    }
    if let Some(training) = training {
        metadata.insert(
            "training".to_string(),
            json(serde_json::to_string(training))?,
        );
    }
    Ok(metadata)
}

/// [`to_bytes`] for the parts of a model (a checkpoint holds a network still being trained).
pub fn parts_to_bytes(
    network: &Network,
    classes: &[String],
    preprocessing: &Preprocessing,
    data: Option<&str>,
    training: Option<&serde_json::Value>,
) -> Result<Vec<u8>> {
    let metadata = metadata(network, classes, preprocessing, data, training)?;
    let buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = network
        .tensors()
        .map(|(node, param)| {
            let (dtype, bytes) = encode(param);
            (
                format!("{node}.{}", param.name),
                dtype,
                param.dims.clone(),
                bytes,
            )
        })
        .collect();
    let mut views = Vec::with_capacity(buffers.len());
    for (name, dtype, dims, bytes) in &buffers {
        let view = TensorView::new(*dtype, dims.clone(), bytes)
            .map_err(|e| Error::Invalid(format!("tensor {name}: {e}")))?;
        views.push((name.as_str(), view));
    }
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Invalid(format!("cannot serialise the model: {e}")))?;
    canonical_header(bytes)
}

/// Tensors PyTorch keeps as integers (batch normalisation's `num_batches_tracked`, int64).
fn is_count(name: &str) -> bool {
    name == "num_batches_tracked"
}

/// A tensor's dtype and little-endian bytes: f32, or int64 for counts.
pub fn encode(param: &Param) -> (Dtype, Vec<u8>) {
    if is_count(param.name) {
        let bytes = param
            .value
            .iter()
            .flat_map(|&v| (v as i64).to_le_bytes())
            .collect();
        (Dtype::I64, bytes)
    } else {
        let bytes = param.value.iter().flat_map(|v| v.to_le_bytes()).collect();
        (Dtype::F32, bytes)
    }
}

/// Overwrites `param` with the tensor `name` of `tensors`, checking dtype, shape and values.
pub fn decode(
    tensors: &SafeTensors<'_>,
    name: &str,
    param: &mut Param,
) -> std::result::Result<(), String> {
    let view = tensors
        .tensor(name)
        .map_err(|_| format!("tensor `{name}` is missing"))?;
    let expected = if is_count(param.name) {
        Dtype::I64
    } else {
        Dtype::F32
    };
    if view.dtype() != expected {
        return Err(format!(
            "tensor `{name}` is {:?}, expected {expected:?}",
            view.dtype()
        ));
    }
    if view.shape() != param.dims.as_slice() {
        return Err(format!(
            "tensor `{name}` has shape {:?}, the architecture needs {:?}",
            view.shape(),
            param.dims
        ));
    }
    if expected == Dtype::I64 {
        for (value, chunk) in param.value.iter_mut().zip(view.data().chunks_exact(8)) {
            *value = i64::from_le_bytes(chunk.try_into().expect("8 bytes")) as f32;
        }
    } else {
        for (value, chunk) in param.value.iter_mut().zip(view.data().chunks_exact(4)) {
            *value = f32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        }
    }
    if param.value.iter().any(|v| !v.is_finite()) {
        return Err(format!("tensor `{name}` holds NaN or infinite values"));
    }
    Ok(())
}

/// Loads every parameter and buffer of `network` from `tensors` (named `"<node>.<name>"`),
/// which must hold nothing else.
pub fn load_tensors(
    network: &mut Network,
    tensors: &SafeTensors<'_>,
) -> std::result::Result<(), String> {
    let mut expected = 0;
    for node in network.nodes_mut() {
        let name = node.name().to_string();
        let layer = node.layer_mut();
        for param in layer.params_mut() {
            expected += 1;
            decode(tensors, &format!("{name}.{}", param.name), param)?;
        }
        for buffer in layer.buffers_mut() {
            expected += 1;
            decode(tensors, &format!("{name}.{}", buffer.name), buffer)?;
        }
    }
    if tensors.len() != expected {
        return Err(format!(
            "it holds {} tensors, the architecture has {expected} parameters",
            tensors.len()
        ));
    }
    Ok(())
}

/// The safetensors crate writes `__metadata__` in hash-map order, which changes from run to
/// run. Rewriting the header with sorted keys makes equal models give equal files. The data
/// section and every offset stay as they were.
fn canonical_header(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len])
        .map_err(|e| Error::Invalid(format!("cannot serialise the model: {e}")))?;
    // serde_json's maps are sorted by key (no `preserve_order` feature).
    let mut canonical = serde_json::to_vec(&header)
        .map_err(|e| Error::Invalid(format!("cannot serialise the model: {e}")))?;
    // Keep the data section 8-byte aligned, padding with spaces as the crate does.
    canonical.resize(canonical.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + canonical.len() + bytes.len() - 8 - header_len);
    out.extend_from_slice(&(canonical.len() as u64).to_le_bytes());
    out.extend_from_slice(&canonical);
    out.extend_from_slice(&bytes[8 + header_len..]);
    Ok(out)
}

/// Saves atomically: a reader sees the old file or the whole new one.
pub fn save(model: &Model, path: &Path) -> Result<()> {
    write_atomically(path, &to_bytes(model)?)
}

/// Whether `path` names an ONNX file (by its extension), which [`load`] imports.
pub fn is_onnx(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Loads a model file, or an ONNX file ([`crate::onnx::load`], with what its metadata says).
pub fn load(path: &Path) -> Result<Model> {
    if is_onnx(path) {
        return crate::onnx::load(path, &crate::onnx::ImportOptions::default());
    }
    let bytes = read_file(path, MAX_MODEL_FILE_BYTES)?;
    from_bytes(&bytes).map_err(|message| Error::file(path, message))
}

/// Parses and validates a model file; the error says what is wrong with it.
pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Model, String> {
    if bytes.is_empty() {
        return Err("empty file, not a model".into());
    }
    if bytes.len() < 8 {
        return Err("too short to be a safetensors model file".into());
    }
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid safetensors model file ({e})"))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a valid safetensors file ({e})"))?;
    let metadata = header
        .metadata()
        .as_ref()
        .ok_or("a safetensors file, but not a cnn model: it has no metadata")?;
    let field = |key: &str| {
        metadata.get(key).ok_or_else(|| {
            format!("a safetensors file, but not a cnn model: no `{key}` in its metadata")
        })
    };
    if field("format")? != FORMAT {
        return Err(format!(
            "model format `{}` is not `{FORMAT}`",
            field("format")?
        ));
    }
    let parse_error =
        |key: &str, e: serde_json::Error| format!("metadata `{key}` is malformed: {e}");
    let architecture = architecture_from_json(field("architecture")?)?;
    let [channels, height, width]: [usize; 3] =
        serde_json::from_str(field("input_shape")?).map_err(|e| parse_error("input_shape", e))?;
    let classes: Vec<String> =
        serde_json::from_str(field("classes")?).map_err(|e| parse_error("classes", e))?;
    let preprocessing: Preprocessing = serde_json::from_str(field("preprocessing")?)
        .map_err(|e| parse_error("preprocessing", e))?;
    let mut network = Network::new(&architecture, Shape::new(channels, height, width))
        .map_err(|e| format!("its architecture does not build: {e}"))?;

    load_tensors(&mut network, &tensors)?;
    let mut model = Model::new(network, classes, preprocessing).map_err(|e| e.to_string())?;
    model.data = metadata.get("data").cloned();
    model.training = metadata
        .get("training")
        .map(|text| serde_json::from_str(text).map_err(|e| parse_error("training", e)))
        .transpose()?;
    Ok(model)
}

/// Settings of each kind of op that this engine fixes and PyTorch lets one choose, with the
/// values this engine computes with. Written into every op of `architecture`, so that a file
/// alone says how to rebuild each module (PyTorch's `AvgPool2d` counts the padding in its
/// divisor by default, this engine does not); when read, any other value is refused.
fn fixed_settings(kind: &str) -> serde_json::Value {
    use crate::layers::{BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM};
    match kind {
        "conv2d" => serde_json::json!({"padding_mode": "zeros"}),
        "max_pool2d" => serde_json::json!({"dilation": [1, 1]}),
        "avg_pool2d" => serde_json::json!({"count_include_pad": false}),
        "batchnorm2d" => serde_json::json!({
            "eps": BATCH_NORM_EPSILON,
            "momentum": BATCH_NORM_MOMENTUM,
            "affine": true,
            "track_running_stats": true,
        }),
        "flatten" => serde_json::json!({"start_dim": 1}),
        "gelu" => serde_json::json!({"approximate": "none"}),
        "concat" => serde_json::json!({"dim": 1}),
        _ => serde_json::json!({}),
    }
}

/// Settings that the op's own JSON leaves out at their default, written out anyway.
fn explicit_defaults(kind: &str) -> serde_json::Value {
    match kind {
        "conv2d" => serde_json::json!({"dilation": [1, 1], "groups": 1}),
        _ => serde_json::json!({}),
    }
}

/// The ops of `value` (a stack's layer list, or a graph's `{"nodes": [{"op": ...}]}`).
fn ops_mut(value: &mut serde_json::Value) -> Vec<&mut serde_json::Value> {
    match value {
        serde_json::Value::Array(layers) => layers.iter_mut().collect(),
        serde_json::Value::Object(graph) => match graph.get_mut("nodes") {
            Some(serde_json::Value::Array(nodes)) => nodes
                .iter_mut()
                .filter_map(|node| node.get_mut("op"))
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// The architecture as written into `architecture`: as serde writes [`Architecture`], each op
/// with its [`fixed_settings`] and [`explicit_defaults`] beside its own, e.g. `{"type":
/// "avg_pool2d", "kernel": [2, 2], "stride": [2, 2], "padding": [1, 1], "ceil_mode": false,
/// "count_include_pad": false}`.
pub fn architecture_to_json(architecture: &Architecture) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(architecture)
        .map_err(|e| Error::Invalid(format!("cannot describe the model: {e}")))?;
    for op in ops_mut(&mut value) {
        let kind = op["type"].as_str().unwrap_or("").to_string();
        if let Some(object) = op.as_object_mut() {
            for settings in [fixed_settings(&kind), explicit_defaults(&kind)] {
                if let serde_json::Value::Object(settings) = settings {
                    for (key, setting) in settings {
                        object.entry(key).or_insert(setting);
                    }
                }
            }
        }
    }
    Ok(value)
}

/// Reads `architecture`, written with or without the [`fixed_settings`] (files from before
/// they were written lack them), refusing an op that asks for other values.
pub fn architecture_from_json(text: &str) -> std::result::Result<Architecture, String> {
    let malformed = |e: serde_json::Error| format!("metadata `architecture` is malformed: {e}");
    let mut value: serde_json::Value = serde_json::from_str(text).map_err(malformed)?;
    for (index, op) in ops_mut(&mut value).into_iter().enumerate() {
        let kind = op["type"].as_str().unwrap_or("").to_string();
        if let (Some(object), serde_json::Value::Object(fixed)) =
            (op.as_object_mut(), fixed_settings(&kind))
        {
            for (key, supported) in fixed {
                match object.remove(&key) {
                    Some(value) if !same_setting(&value, &supported) => {
                        return Err(format!(
                            "node {index} ({kind}): {key} = {value} is not supported \
                             (this engine computes with {key} = {supported})"
                        ))
                    }
                    _ => {}
                }
            }
        }
    }
    serde_json::from_value(value).map_err(malformed)
}

/// Equal settings, numbers compared as numbers (`1e-5` written by another program as
/// `0.00001` is the same setting).
fn same_setting(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * y.abs().max(1.0),
        _ => a == b,
    }
}
