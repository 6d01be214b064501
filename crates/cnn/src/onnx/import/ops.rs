//! Each ONNX op as the engine's nodes, or folded away.

use super::attributes::Attributes;
use super::constant::positive;
use super::constant::{
    broadcast_vector, concat_constants, created_len, flatten_dims, fold_arithmetic,
    gather_constant, reshape_constant, resolve_reshape, slice_constant, squeeze_dims, to_dims,
    transpose_constant, Constant, Data, BATCH,
};
use super::{
    module_name, unsupported, Converter, Dynamic, Layout, Outcome, Unsupported, Value, BATCH_DIM,
};
use crate::layers::{
    BinaryOp, Conv2dConfig, DenseConfig, LayerSpec, LrnConfig, PadMode, Pads, BATCH_NORM_EPSILON,
};
use crate::onnx::proto::{data_type, NodeProto};
use crate::tensor::Shape;
use crate::window::Window2d;

/// The ops [`Converter::convert`] reads (some only in the settings a classifier uses).
pub(super) const READ_OPS: &[&str] = &[
    "Conv",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "BatchNormalization",
    "Gemm",
    "MatMul",
    "Add",
    "Sum",
    "Sub",
    "Mul",
    "Div",
    "Erf",
    "Concat",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Gelu",
    "Clip",
    "HardSigmoid",
    "HardSwish",
    "PRelu",
    "Pad",
    "LRN",
    "Identity",
    "Dropout",
    "Softmax",
    "Constant",
    "ConstantOfShape",
    "Shape",
    "Gather",
    "Slice",
    "Cast",
];

impl Converter {
    pub(super) fn convert(
        &mut self,
        node: &NodeProto,
        label: &str,
        inputs: &[Option<Value>],
    ) -> Outcome {
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return unsupported(format!(": an op of domain `{}`", node.domain));
        }
        let attributes = Attributes::new(node);
        let name = module_name(node, &self.values);
        let input = |k: usize| -> std::result::Result<&Value, Unsupported> {
            inputs
                .get(k)
                .and_then(Option::as_ref)
                .ok_or_else(|| Unsupported(format!(": input {k} is missing")))
        };
        let dynamic = |k: usize| -> std::result::Result<Dynamic, Unsupported> {
            match input(k)? {
                Value::Dynamic(d) => Ok(d.clone()),
                Value::Gelu { .. } => unsupported(": part of an expression it does not compute"),
                Value::Softmax(_) => unsupported(
                    ": it reads a softmax, which this engine computes only as an output of the graph",
                ),
                _ => unsupported(format!(": input {k} is a constant, not a computed value")),
            }
        };
        let constant = |k: usize| -> std::result::Result<&Constant, Unsupported> {
            match input(k)? {
                Value::Constant(c) => Ok(c),
                _ => unsupported(format!(
                    ": input {k} is computed, this engine needs it constant"
                )),
            }
        };
        let all_constant = inputs
            .iter()
            .flatten()
            .all(|v| matches!(v, Value::Constant(_)));
        let simple = |converter: &mut Converter, op: LayerSpec| -> Outcome {
            let x = dynamic(0)?;
            Ok(Value::Dynamic(converter.add(
                &name,
                op,
                vec![x],
                Vec::new(),
            )?))
        };
        match node.op_type.as_str() {
            "Conv" => {
                let x = dynamic(0)?;
                let w = constant(1)?;
                let kernel = match (x.layout, w.dims.as_slice()) {
                    (Layout::Maps, &[_, _, h, w]) => [h, w],
                    (Layout::Sequence, &[_, _, l]) => [1, l],
                    _ => return unsupported(": only 1-D and 2-D convolutions are"),
                };
                let attributes = attributes.one_dimensional(x.layout == Layout::Sequence);
                let groups = attributes.int("group", 1)?;
                if attributes.get("kernel_shape").is_some()
                    && attributes.pair("kernel_shape", 1)? != kernel
                {
                    return unsupported(": kernel_shape does not match the weights");
                }
                let stride = attributes.pair("strides", 1)?;
                let dilation = attributes.pair("dilations", 1)?;
                // Padding that differs before and after an axis goes to a node before.
                let (begin, end) = attributes.padding(x.shape, kernel, stride, dilation)?;
                let (padding, extra) = split_padding(begin, end, [usize::MAX; 2]);
                let x = self.pad(&name, x, extra, PadMode::Constant { value: 0.0 })?;
                let mut config = Conv2dConfig::new(w.dims[0], kernel);
                config.stride = stride;
                config.dilation = dilation;
                config.padding = padding;
                config.groups = positive(groups, "group")?;
                config.bias = inputs.get(2).is_some_and(Option::is_some);
                if w.dims[1] * config.groups != x.shape.channels {
                    return unsupported(format!(
                        ": weights for {} input channels, the input has {}",
                        w.dims[1] * config.groups,
                        x.shape.channels
                    ));
                }
                let mut params = vec![("weight", w.floats())];
                if config.bias {
                    params.push(("bias", constant(2)?.floats()));
                }
                Ok(Value::Dynamic(self.add(
                    &name,
                    LayerSpec::Conv2d(config),
                    vec![x],
                    params,
                )?))
            }
            "MaxPool" | "AveragePool" => {
                let x = dynamic(0)?;
                if !x.spatial() {
                    return unsupported(": only 1-D and 2-D pooling is");
                }
                let attributes = attributes.one_dimensional(x.layout == Layout::Sequence);
                let kernel = attributes.pair_required("kernel_shape")?;
                let stride = attributes.pair("strides", 1)?;
                let dilation = attributes.pair("dilations", 1)?;
                if dilation != [1, 1] {
                    return unsupported(": dilated pooling is not");
                }
                if attributes.int("storage_order", 0)? != 0 {
                    return unsupported(": storage_order 1 is not");
                }
                let (begin, end) = attributes.padding(x.shape, kernel, stride, [1, 1])?;
                let ceil_mode = attributes.int("ceil_mode", 0)? != 0;
                let max = node.op_type == "MaxPool";
                let include_pad = !max && attributes.int("count_include_pad", 0)? != 0;
                // The engine pads both ends of an axis alike, by at most half the window (as
                // PyTorch); the rest of the padding goes to a node before. For a maximum that
                // node copies the edge pixels, which every window over them also covers when
                // no side is padded by a whole window; for an average that counts the padding
                // it pads with zeros.
                let most = if include_pad {
                    [0, 0]
                } else {
                    [kernel[0] / 2, kernel[1] / 2]
                };
                let (padding, extra) = split_padding(begin, end, most);
                let mode = if max {
                    let covered = (0..2).all(|a| begin[a] < kernel[a] && end[a] < kernel[a]);
                    if extra != [0; 4] && !covered {
                        return unsupported(": padding by a whole window or more is not");
                    }
                    PadMode::Edge
                } else if include_pad {
                    PadMode::Constant { value: 0.0 }
                } else if extra != [0; 4] {
                    if ceil_mode {
                        return unsupported(": ceil_mode with this padding is not");
                    }
                    return self.average_without_padding(&name, x, kernel, stride, begin, end);
                } else {
                    PadMode::Edge
                };
                if ceil_mode && (extra != [0; 4] || include_pad) {
                    return unsupported(": ceil_mode with this padding is not");
                }
                let x = self.pad(&name, x, extra, mode)?;
                let mut window = Window2d::new(kernel, stride, padding);
                window.ceil_mode = ceil_mode;
                let op = if max {
                    LayerSpec::MaxPool2d(window)
                } else {
                    LayerSpec::AvgPool2d(window)
                };
                Ok(Value::Dynamic(self.add(&name, op, vec![x], Vec::new())?))
            }
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = dynamic(0)?;
                if !x.spatial() {
                    return unsupported(": its input is not feature maps");
                }
                let op = if node.op_type == "GlobalAveragePool" {
                    LayerSpec::GlobalAvgPool
                } else {
                    LayerSpec::GlobalMaxPool
                };
                let layout = x.layout;
                let out = self.add(&name, op, vec![x], Vec::new())?;
                // ONNX keeps the spatial axes, of size 1: `[N, C, 1, 1]` (`[N, C, 1]`).
                Ok(Value::Dynamic(Dynamic { layout, ..out }))
            }
            "BatchNormalization" => {
                let x = dynamic(0)?;
                if !x.spatial() {
                    return unsupported(": batch normalisation of flat features is not");
                }
                if attributes.int("training_mode", 0)? != 0 {
                    return unsupported(": training_mode=1 is not");
                }
                let epsilon = attributes.float("epsilon", 1e-5)?;
                let mut variance = constant(4)?.floats();
                // y = (x - mean) / sqrt(var + eps): another epsilon is the same as a variance
                // larger by the difference.
                for v in &mut variance {
                    *v += epsilon - BATCH_NORM_EPSILON;
                    if v.is_nan() || *v < 0.0 {
                        return unsupported(": a variance is negative");
                    }
                }
                let params = vec![
                    ("weight", constant(1)?.floats()),
                    ("bias", constant(2)?.floats()),
                    ("running_mean", constant(3)?.floats()),
                    ("running_var", variance),
                    ("num_batches_tracked", vec![0.0]),
                ];
                Ok(Value::Dynamic(self.add(
                    &name,
                    LayerSpec::BatchNorm2d,
                    vec![x],
                    params,
                )?))
            }
            "Gemm" | "MatMul" => {
                let x = dynamic(0)?;
                let w = constant(1)?;
                if !x.flat() || w.dims.len() != 2 {
                    return unsupported(": only a product of [N, F] features and a matrix is");
                }
                let (alpha, beta, trans_a, trans_b) = if node.op_type == "Gemm" {
                    (
                        attributes.float("alpha", 1.0)?,
                        attributes.float("beta", 1.0)?,
                        attributes.int("transA", 0)?,
                        attributes.int("transB", 0)?,
                    )
                } else {
                    (1.0, 1.0, 0, 0)
                };
                if trans_a != 0 {
                    return unsupported(": transA=1 is not");
                }
                // The engine's weights are `[out, in]`, B of `x * B` is `[in, out]`.
                let (out, features) = if trans_b != 0 {
                    (w.dims[0], w.dims[1])
                } else {
                    (w.dims[1], w.dims[0])
                };
                if features != x.shape.channels {
                    return unsupported(format!(
                        ": weights for {features} features, the input has {}",
                        x.shape.channels
                    ));
                }
                let values = w.floats();
                let weight: Vec<f32> = if trans_b != 0 {
                    values.iter().map(|v| alpha * v).collect()
                } else {
                    (0..out)
                        .flat_map(|o| {
                            let values = &values;
                            (0..features).map(move |i| alpha * values[i * out + o])
                        })
                        .collect()
                };
                let mut params = vec![("weight", weight)];
                let bias = match inputs.get(2).and_then(Option::as_ref) {
                    Some(_) => Some(broadcast_vector(constant(2)?, out)?),
                    None => None,
                };
                if let Some(bias) = bias {
                    params.push(("bias", bias.iter().map(|b| beta * b).collect()));
                }
                let config = DenseConfig {
                    out_features: out,
                    bias: params.len() == 2,
                };
                Ok(Value::Dynamic(self.add(
                    &name,
                    LayerSpec::Dense(config),
                    vec![x],
                    params,
                )?))
            }
            "Add" | "Sum" | "Sub" | "Mul" | "Div" if all_constant => {
                fold_arithmetic(&node.op_type, inputs)
            }
            "Add" => self.add_values(node, &name, inputs),
            "Sum" => {
                let values = (0..inputs.len())
                    .map(dynamic)
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                self.sum(&name, values)
            }
            "Mul" => self.multiply(node, &name, inputs),
            "Div" => match (input(0)?, input(1)?) {
                (Value::Dynamic(x), Value::Constant(c))
                    if c.len() == 1 && (c.floats()[0] - std::f32::consts::SQRT_2).abs() < 1e-5 =>
                {
                    Ok(Value::Gelu {
                        x: x.clone(),
                        step: 1,
                        nodes: vec![format!("Div ({label})")],
                    })
                }
                _ => self.constant_operand(&name, BinaryOp::Div, inputs),
            },
            "Sub" => self.constant_operand(&name, BinaryOp::Sub, inputs),
            "Erf" => match input(0)? {
                Value::Gelu { x, step: 1, nodes } => Ok(Value::Gelu {
                    x: x.clone(),
                    step: 2,
                    nodes: [nodes.clone(), vec![format!("Erf ({label})")]].concat(),
                }),
                _ => unsupported(": Erf is supported only as part of GELU"),
            },
            "Concat" => {
                let axis = attributes.int("axis", 1)?;
                if all_constant {
                    let parts: Vec<&Constant> = (0..inputs.len())
                        .map(constant)
                        .collect::<std::result::Result<_, _>>()?;
                    return concat_constants(&parts, axis);
                }
                let values = (0..inputs.len())
                    .map(dynamic)
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let rank = values[0].layout.rank();
                if axis != 1 && axis != 1 - rank {
                    return unsupported(": only concatenation along channels (axis 1) is");
                }
                if values.iter().any(|v| v.layout != values[0].layout) {
                    return unsupported(": its inputs have different ranks");
                }
                Ok(Value::Dynamic(self.add(
                    &name,
                    LayerSpec::Concat,
                    values,
                    Vec::new(),
                )?))
            }
            "Flatten" => match input(0)? {
                Value::Constant(c) => {
                    reshape_constant(c, flatten_dims(&c.dims, attributes.int("axis", 1)?)?)
                }
                _ => {
                    let x = dynamic(0)?;
                    let axis = attributes.int("axis", 1)?;
                    if axis != 1 && !(x.flat() && axis == -1) {
                        return unsupported(": only axis=1 is");
                    }
                    self.flatten(&name, x)
                }
            },
            "Reshape" => {
                let target = constant(1)?
                    .ints()
                    .map_err(|e| Unsupported(format!(": {e}")))?;
                match input(0)? {
                    Value::Constant(c) => reshape_constant(c, resolve_reshape(&c.dims, &target)?),
                    _ => {
                        let x = dynamic(0)?;
                        self.reshape(&name, x, &target, attributes.int("allowzero", 0)? != 0)
                    }
                }
            }
            "Squeeze" | "Unsqueeze" => {
                let axes = match attributes.ints_opt("axes")? {
                    Some(axes) => Some(axes),
                    None if inputs.len() > 1 => Some(
                        constant(1)?
                            .ints()
                            .map_err(|e| Unsupported(format!(": axes {e}")))?,
                    ),
                    None => None,
                };
                match input(0)? {
                    Value::Constant(c) => {
                        let dims = squeeze_dims(&node.op_type, &c.dims, axes.as_deref())?;
                        reshape_constant(c, dims)
                    }
                    _ => {
                        let x = dynamic(0)?;
                        let dims = squeeze_dims(&node.op_type, &x.onnx_dims(), axes.as_deref())?;
                        let squeezed = x.onnx_dims().len().saturating_sub(dims.len());
                        let ones = |d: &[usize]| d.iter().filter(|&&d| d == 1).count();
                        // Squeezing drops axes of size 1 only, and never the batch.
                        if node.op_type == "Squeeze"
                            && ones(&x.onnx_dims()) - ones(&dims) != squeezed
                            || dims.first() != Some(&BATCH_DIM)
                        {
                            return unsupported(format!(
                                ": the axes {:?} of a value of rank {}",
                                axes.unwrap_or_default(),
                                x.layout.rank()
                            ));
                        }
                        self.restructure(&name, x, &dims[1..])
                    }
                }
            }
            "Slice" => {
                let c = constant(0)?;
                let ints =
                    |k: usize, what: &str| -> std::result::Result<Option<Vec<i64>>, Unsupported> {
                        match inputs.get(k) {
                            Some(Some(_)) => constant(k)?
                                .ints()
                                .map(Some)
                                .map_err(|e| Unsupported(format!(": {what} {e}"))),
                            _ => Ok(None),
                        }
                    };
                // Attributes before opset 10, inputs since.
                let (starts, ends, axes, steps) = if self.opset < 10 {
                    (
                        attributes.ints_opt("starts")?.unwrap_or_default(),
                        attributes.ints_opt("ends")?.unwrap_or_default(),
                        attributes.ints_opt("axes")?,
                        None,
                    )
                } else {
                    (
                        ints(1, "starts")?.unwrap_or_default(),
                        ints(2, "ends")?.unwrap_or_default(),
                        ints(3, "axes")?,
                        ints(4, "steps")?,
                    )
                };
                slice_constant(c, &starts, &ends, axes.as_deref(), steps.as_deref())
            }
            "Transpose" => match input(0)? {
                Value::Constant(c) => transpose_constant(c, attributes.ints_opt("perm")?),
                _ => unsupported(": transposing computed values is not"),
            },
            "Relu" => simple(self, LayerSpec::Relu),
            "LeakyRelu" => simple(
                self,
                LayerSpec::LeakyRelu {
                    slope: attributes.float("alpha", 0.01)?,
                },
            ),
            "Sigmoid" => simple(self, LayerSpec::Sigmoid),
            "Tanh" => simple(self, LayerSpec::Tanh),
            "Gelu" => {
                if attributes.string("approximate", "none")? != "none" {
                    return unsupported(": only the exact GELU (approximate=none) is");
                }
                simple(self, LayerSpec::Gelu)
            }
            "Clip" => {
                // Bounds: attributes before opset 11, optional inputs since.
                let bound =
                    |attribute: &str, k: usize| -> std::result::Result<Option<f32>, Unsupported> {
                        if let Some(v) = attributes.float_opt(attribute)? {
                            return Ok(Some(v));
                        }
                        match inputs.get(k) {
                            Some(Some(_)) => match constant(k)?.floats().as_slice() {
                                [v] => Ok(Some(*v)),
                                _ => unsupported(format!(": its {attribute} is not one value")),
                            },
                            _ => Ok(None),
                        }
                    };
                let (min, max) = (bound("min", 1)?, bound("max", 2)?);
                if min.is_some_and(f32::is_nan) || max.is_some_and(f32::is_nan) {
                    return unsupported(": a NaN bound is not");
                }
                if min == Some(f32::INFINITY) || max == Some(f32::NEG_INFINITY) {
                    return unsupported(": an infinite bound on the wrong side is not");
                }
                // An infinite bound is no bound.
                let finite = |b: Option<f32>| b.filter(|v| v.is_finite());
                let (min, max) = (finite(min), finite(max));
                match (min, max) {
                    (Some(0.0), None) => simple(self, LayerSpec::Relu),
                    (Some(low), Some(high)) if low > high => unsupported(": min above max is not"),
                    _ => simple(self, LayerSpec::Clip { min, max }),
                }
            }
            "HardSigmoid" => simple(
                self,
                LayerSpec::HardSigmoid {
                    alpha: attributes.float("alpha", 0.2)?,
                    beta: attributes.float("beta", 0.5)?,
                },
            ),
            "HardSwish" => simple(self, LayerSpec::HardSwish),
            "LRN" => {
                let x = dynamic(0)?;
                if !x.spatial() {
                    return unsupported(": only normalisation of [N, C, ...] maps is");
                }
                let size = attributes.int("size", 0)?;
                let config = LrnConfig {
                    size: positive(size, "size")?,
                    alpha: attributes.float("alpha", 1e-4)?,
                    beta: attributes.float("beta", 0.75)?,
                    bias: attributes.float("bias", 1.0)?,
                };
                simple(self, LayerSpec::Lrn(config))
            }
            "Pad" => {
                let x = dynamic(0)?;
                if !x.spatial() {
                    return unsupported(": only padding of [N, C, L] and [N, C, H, W] values is");
                }
                let rank = x.layout.rank() as usize;
                // Attributes before opset 11, inputs since (`axes` since 18).
                let (given, value) = if self.opset < 11 {
                    let pads = attributes.ints_opt("pads")?.unwrap_or_default();
                    (pads, attributes.float("value", 0.0)?)
                } else {
                    let pads = constant(1)?
                        .ints()
                        .map_err(|e| Unsupported(format!(": pads {e}")))?;
                    let value = match inputs.get(2) {
                        Some(Some(_)) => match constant(2)?.floats().as_slice() {
                            [v] if v.is_finite() => *v,
                            _ => {
                                return unsupported(": its constant_value is not one finite value")
                            }
                        },
                        _ => 0.0,
                    };
                    (pads, value)
                };
                let axes: Vec<usize> = match inputs.get(3) {
                    Some(Some(_)) => constant(3)?
                        .ints()
                        .map_err(|e| Unsupported(format!(": axes {e}")))?
                        .iter()
                        .map(|&a| if a < 0 { a + rank as i64 } else { a })
                        .map(|a| usize::try_from(a).ok().filter(|&a| a < rank))
                        .collect::<Option<_>>()
                        .ok_or_else(|| Unsupported(": an axis is out of range".into()))?,
                    _ => (0..rank).collect(),
                };
                if given.len() != 2 * axes.len() {
                    return unsupported(format!(": pads {given:?} for {} axes", axes.len()));
                }
                let mut full = vec![0i64; 2 * rank];
                for (k, &axis) in axes.iter().enumerate() {
                    full[axis] = given[k];
                    full[rank + axis] = given[axes.len() + k];
                }
                let side = |k: usize| -> std::result::Result<usize, Unsupported> {
                    usize::try_from(full[k])
                        .map_err(|_| Unsupported(": negative pads (cropping) are not".into()))
                };
                // Nothing added to the batch or the channels; the height of `[N, C, L]` is 1.
                if [0, 1, rank, rank + 1].iter().any(|&k| full[k] != 0) {
                    return unsupported(": padding the batch or the channels is not");
                }
                let pads = if rank == 3 {
                    [0, side(2)?, 0, side(5)?]
                } else {
                    [side(2)?, side(3)?, side(6)?, side(7)?]
                };
                let mode = match attributes.string("mode", "constant")?.as_str() {
                    "constant" => PadMode::Constant { value },
                    "edge" => PadMode::Edge,
                    "reflect" => PadMode::Reflect,
                    other => return unsupported(format!(": mode {other} is not")),
                };
                if pads == [0; 4] {
                    return Ok(Value::Dynamic(x));
                }
                simple(self, LayerSpec::Pad { pads, mode })
            }
            "PRelu" => {
                let x = dynamic(0)?;
                let slope = constant(1)?;
                // One slope, or one per channel: `[C, 1, 1]` or `[1, C, 1, 1]` for maps
                // (broadcast from the last axis), `[C]` for features.
                let ones_after = |k: usize| slope.dims[k + 1..].iter().all(|&d| d == 1);
                let leading = |k: usize| slope.dims[..k].iter().all(|&d| d == 1);
                let channels = x.shape.channels;
                let per_channel = (0..slope.dims.len()).any(|k| {
                    slope.dims[k] == channels
                        && leading(k)
                        && ones_after(k)
                        && slope.dims.len() as i64 - k as i64 == x.layout.rank() - 1
                });
                // Before opset 7 (no broadcasting yet) `[C]` meant one slope per channel.
                let per_channel = per_channel || (self.opset < 7 && slope.dims == [channels]);
                let shared = slope.len() == 1;
                if !shared && !per_channel {
                    return unsupported(format!(
                        ": slopes of shape {:?} are not (one, or one per channel)",
                        slope.dims
                    ));
                }
                Ok(Value::Dynamic(self.add(
                    &name,
                    LayerSpec::Prelu { shared },
                    vec![x],
                    vec![("weight", slope.floats())],
                )?))
            }
            "Identity" | "Dropout" => match input(0)? {
                Value::Constant(c) => Ok(Value::Constant(c.clone())),
                _ => {
                    let x = dynamic(0)?;
                    if node.op_type == "Dropout" {
                        Ok(Value::Dynamic(x))
                    } else {
                        simple(self, LayerSpec::Identity)
                    }
                }
            },
            "Softmax" => {
                let x = dynamic(0)?;
                let axis = attributes.int("axis", if self.opset >= 13 { -1 } else { 1 })?;
                if x.flat() && (axis == 1 || axis == -1) {
                    Ok(Value::Softmax(x))
                } else {
                    unsupported(": only a softmax over the features is")
                }
            }
            "Constant" => attributes.constant().map(Value::Constant),
            "ConstantOfShape" => {
                let dims = to_dims(
                    &constant(0)?
                        .ints()
                        .map_err(|e| Unsupported(format!(": {e}")))?,
                )?;
                let fill = match attributes.tensor_opt("value")? {
                    Some(t) => t,
                    None => Constant {
                        dims: vec![1],
                        data: Data::Float(vec![0.0]),
                    },
                };
                let len = created_len(&dims)?;
                let data = match fill.data {
                    Data::Float(v) => Data::Float(vec![v.first().copied().unwrap_or(0.0); len]),
                    Data::Int(v) => Data::Int(vec![v.first().copied().unwrap_or(0); len]),
                };
                Ok(Value::Constant(Constant { dims, data }))
            }
            "Shape" => {
                let dims: Vec<i64> = match input(0)? {
                    Value::Constant(c) => c.dims.iter().map(|&d| d as i64).collect(),
                    _ => {
                        let x = dynamic(0)?;
                        let dims = x.layout.dims(x.shape).into_iter().map(|d| d as i64);
                        std::iter::once(BATCH).chain(dims).collect()
                    }
                };
                let rank = dims.len() as i64;
                let (start, end) = (attributes.int("start", 0)?, attributes.int("end", rank)?);
                let clamp = |i: i64| (if i < 0 { i + rank } else { i }).clamp(0, rank) as usize;
                let dims = dims[clamp(start)..clamp(end).max(clamp(start))].to_vec();
                Ok(Value::Constant(Constant::int_vector(
                    vec![dims.len()],
                    dims,
                )))
            }
            "Gather" => {
                let data = constant(0)?;
                let indices = constant(1)?
                    .ints()
                    .map_err(|e| Unsupported(format!(": {e}")))?;
                gather_constant(
                    data,
                    &constant(1)?.dims,
                    &indices,
                    attributes.int("axis", 0)?,
                )
            }
            "Cast" => match input(0)? {
                Value::Constant(c) => Ok(Value::Constant(c.clone())),
                _ if attributes.int("to", 1)? == i64::from(data_type::FLOAT) => {
                    Ok(Value::Dynamic(dynamic(0)?))
                }
                _ => unsupported(": only casts to float are"),
            },
            _ => unsupported(""),
        }
    }

    /// An average pool whose padding (`begin`, `end`) differs before and after an axis or is
    /// over half the window, not counted in the divisor: zeros padded by a node before, the
    /// average over the whole window, then multiplied by the window's size over the pixels it
    /// covers of the input (a constant for each output position).
    fn average_without_padding(
        &mut self,
        name: &str,
        x: Dynamic,
        kernel: [usize; 2],
        stride: [usize; 2],
        begin: [usize; 2],
        end: [usize; 2],
    ) -> Outcome {
        let input = x.shape;
        let pads = [begin[0], begin[1], end[0], end[1]];
        let x = self.pad(name, x, pads, PadMode::Constant { value: 0.0 })?;
        let window = Window2d::new(kernel, stride, [0, 0]);
        let pooled = self.add(name, LayerSpec::AvgPool2d(window), vec![x], Vec::new())?;
        let out = pooled.shape;
        // Pixels of the input along one axis in the window starting at `i * stride - before`.
        let covered = |i: usize, a: usize, size: usize| {
            let start = (i * stride[a]) as isize - begin[a] as isize;
            let end = (start + kernel[a] as isize).min(size as isize);
            (end - start.max(0)).max(0) as f32
        };
        let whole = (kernel[0] * kernel[1]) as f32;
        let scale: Vec<f32> = (0..out.height)
            .flat_map(|y| (0..out.width).map(move |x| (y, x)))
            .map(|(y, x)| {
                let n = covered(y, 0, input.height) * covered(x, 1, input.width);
                if n > 0.0 {
                    whole / n
                } else {
                    0.0
                }
            })
            .collect();
        let op = LayerSpec::ConstantOp {
            op: BinaryOp::Mul,
            operand: [1, out.height, out.width],
        };
        let scaled = self.add(
            &format!("{name}.count"),
            op,
            vec![pooled],
            vec![("constant", scale)],
        )?;
        Ok(Value::Dynamic(scaled))
    }

    /// `x` padded by `pads` (`[top, left, bottom, right]`) in a node of its own, or `x` when
    /// there is nothing to pad.
    fn pad(
        &mut self,
        name: &str,
        x: Dynamic,
        pads: Pads,
        mode: PadMode,
    ) -> std::result::Result<Dynamic, Unsupported> {
        if pads == [0; 4] {
            return Ok(x);
        }
        self.add(
            &format!("{name}.pad"),
            LayerSpec::Pad { pads, mode },
            vec![x],
            Vec::new(),
        )
    }

    fn flatten(&mut self, name: &str, x: Dynamic) -> Outcome {
        if x.flat() {
            return Ok(Value::Dynamic(x));
        }
        Ok(Value::Dynamic(self.add(
            name,
            LayerSpec::Flatten,
            vec![x],
            Vec::new(),
        )?))
    }

    /// A reshape of a computed value (see [`Converter::restructure`]): the batch stays first.
    fn reshape(&mut self, name: &str, x: Dynamic, target: &[i64], allow_zero: bool) -> Outcome {
        let current: Vec<i64> = std::iter::once(BATCH)
            .chain(x.layout.dims(x.shape).into_iter().map(|d| d as i64))
            .collect();
        // Zero copies the dimension from the input (unless `allowzero`), -1 takes the rest.
        let resolved: Vec<i64> = target
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                if t == 0 && !allow_zero {
                    current.get(i).copied().unwrap_or(t)
                } else {
                    t
                }
            })
            .collect();
        let refused = || {
            unsupported(format!(
                ": reshaping {} values to {target:?} is not (the batch must stay first)",
                x.shape
            ))
        };
        let len = x.shape.len() as i64;
        let rest = match resolved.split_first() {
            Some((&BATCH, rest)) => rest.to_vec(),
            // A -1 first is the batch when the rest is known.
            Some((-1, rest)) if rest.iter().all(|&d| d > 0) => rest.to_vec(),
            _ => return refused(),
        };
        // The file's dimensions may multiply past i64: such a target is refused.
        let Some(known) = rest
            .iter()
            .filter(|&&d| d != -1)
            .try_fold(1i64, |product, &d| product.checked_mul(d))
        else {
            return refused();
        };
        let dims: Option<Vec<usize>> = rest
            .iter()
            .map(|&d| match d {
                -1 if known > 0 && len % known == 0 => Some((len / known) as usize),
                d if d > 0 => usize::try_from(d).ok(),
                _ => None,
            })
            .collect();
        match dims {
            Some(dims) if rest.iter().filter(|&&d| d == -1).count() <= 1 => {
                self.restructure(name, x, &dims)
            }
            _ => refused(),
        }
    }

    /// `x` as a value of ONNX dimensions `[N, dims...]`: the same values in the same order,
    /// held in the same shape (a new layout, no node), flattened to features or reshaped.
    fn restructure(&mut self, name: &str, x: Dynamic, dims: &[usize]) -> Outcome {
        let (layout, shape) = match *dims {
            [] => (Layout::Scalar, Shape::flat(1)),
            [features] => (Layout::Features, Shape::flat(features)),
            [channels, length] => (Layout::Sequence, Shape::new(channels, 1, length)),
            [channels, height, width] => (Layout::Maps, Shape::new(channels, height, width)),
            _ => {
                return unsupported(format!(
                    ": values of rank {} are not (2, 3 and 4 are)",
                    dims.len() + 1
                ))
            }
        };
        if shape == x.shape {
            return Ok(Value::Dynamic(Dynamic { layout, ..x }));
        }
        if shape.len() != x.shape.len() {
            return unsupported(format!(": {} values do not fit {dims:?}", x.shape));
        }
        if layout == Layout::Features {
            return self.flatten(name, x);
        }
        let [channels, height, width] = [shape.channels, shape.height, shape.width];
        let op = LayerSpec::Reshape {
            shape: [channels, height, width],
        };
        let out = self.add(name, op, vec![x], Vec::new())?;
        Ok(Value::Dynamic(Dynamic { layout, ..out }))
    }

    fn sum(&mut self, name: &str, values: Vec<Dynamic>) -> Outcome {
        if values.len() == 1 {
            return Ok(Value::Dynamic(values[0].clone()));
        }
        if values
            .iter()
            .any(|v| v.layout != values[0].layout || v.shape != values[0].shape)
        {
            return unsupported(": adding values of different shapes (broadcasting) is not");
        }
        Ok(Value::Dynamic(self.add(
            name,
            LayerSpec::Add,
            values,
            Vec::new(),
        )?))
    }

    /// `Add`: of two computed values, a residual connection; of a computed value and a
    /// constant, a bias (absorbed by the convolution or product before it), or GELU's `1 + erf`.
    fn add_values(&mut self, node: &NodeProto, name: &str, inputs: &[Option<Value>]) -> Outcome {
        let (Some(Some(a)), Some(Some(b))) = (inputs.first(), inputs.get(1)) else {
            return unsupported(": it needs two inputs");
        };
        let (computed, constant, computed_name) = match (a, b) {
            (Value::Dynamic(x), Value::Dynamic(y)) => {
                return self.sum(name, vec![x.clone(), y.clone()])
            }
            (Value::Gelu { x, step: 2, nodes }, Value::Constant(c))
            | (Value::Constant(c), Value::Gelu { x, step: 2, nodes })
                if c.len() == 1 && c.floats()[0] == 1.0 =>
            {
                return Ok(Value::Gelu {
                    x: x.clone(),
                    step: 3,
                    nodes: [nodes.clone(), vec![format!("Add ({name})")]].concat(),
                });
            }
            (Value::Dynamic(x), Value::Constant(c)) => (x, c, &node.input[0]),
            (Value::Constant(c), Value::Dynamic(x)) => (x, c, &node.input[1]),
            _ => return unsupported(": of these operands"),
        };
        // The bias of the convolution or product before, when nothing else reads its output.
        if let Some(producer) = self.sole_producer(computed_name, computed) {
            // One value per channel, or one for all, as NumPy broadcasts it.
            let values = constant.floats();
            let bias = match broadcast_operand(computed, constant) {
                Ok([1, 1, 1]) => Some(vec![values[0]; computed.shape.channels]),
                Ok([c, 1, 1]) if c == computed.shape.channels => Some(values),
                _ => None,
            };
            let built = &mut self.built[producer];
            let takes_bias = match &mut built.spec.op {
                LayerSpec::Conv2d(c) if !c.bias && !computed.flat() => Some(&mut c.bias),
                LayerSpec::Dense(d) if !d.bias => Some(&mut d.bias),
                _ => None,
            };
            if let (Some(flag), Some(bias)) = (takes_bias, bias) {
                *flag = true;
                built.params.push(("bias", bias));
                return Ok(Value::Dynamic(computed.clone()));
            }
        }
        self.constant_operand(name, BinaryOp::Add, inputs)
    }

    /// `Mul`: `x * sigmoid(x)` (SiLU), or a step of GELU.
    fn multiply(&mut self, node: &NodeProto, name: &str, inputs: &[Option<Value>]) -> Outcome {
        let (Some(Some(a)), Some(Some(b))) = (inputs.first(), inputs.get(1)) else {
            return unsupported(": it needs two inputs");
        };
        match (a, b) {
            (Value::Gelu { x, step: 3, nodes }, Value::Dynamic(y))
            | (Value::Dynamic(y), Value::Gelu { x, step: 3, nodes })
                if y.name == x.name =>
            {
                Ok(Value::Gelu {
                    x: x.clone(),
                    step: 4,
                    nodes: [nodes.clone(), vec![format!("Mul ({name})")]].concat(),
                })
            }
            (Value::Gelu { x, step: 4, .. }, Value::Constant(c))
            | (Value::Constant(c), Value::Gelu { x, step: 4, .. })
                if c.len() == 1 && c.floats()[0] == 0.5 =>
            {
                Ok(Value::Dynamic(self.add(
                    name,
                    LayerSpec::Gelu,
                    vec![x.clone()],
                    Vec::new(),
                )?))
            }
            (Value::Dynamic(first), Value::Dynamic(second)) => {
                let orders = [
                    (first, second, &node.input[1]),
                    (second, first, &node.input[0]),
                ];
                for (x, s, s_name) in orders {
                    let Some(k) = self.sole_producer(s_name, s) else {
                        continue;
                    };
                    let built = &mut self.built[k];
                    if built.spec.op == LayerSpec::Sigmoid && built.spec.inputs == [x.name.clone()]
                    {
                        built.spec.op = LayerSpec::Silu;
                        return Ok(Value::Dynamic(s.clone()));
                    }
                }
                // Broadcast as ONNX broadcasts: from the last axis, so only values of one rank.
                if first.layout != second.layout {
                    return unsupported(": multiplying values of different ranks is not");
                }
                let (a, b) = (first.clone(), second.clone());
                Ok(Value::Dynamic(self.add(
                    name,
                    LayerSpec::Mul,
                    vec![a, b],
                    Vec::new(),
                )?))
            }
            _ => self.constant_operand(name, BinaryOp::Mul, inputs),
        }
    }

    /// `x op c` or `c op x` with a constant `c` broadcast over the computed `x`.
    fn constant_operand(&mut self, name: &str, op: BinaryOp, inputs: &[Option<Value>]) -> Outcome {
        let (x, c, constant_first) = match (inputs.first(), inputs.get(1)) {
            (Some(Some(Value::Dynamic(x))), Some(Some(Value::Constant(c)))) => (x, c, false),
            (Some(Some(Value::Constant(c))), Some(Some(Value::Dynamic(x)))) => (x, c, true),
            (Some(Some(Value::Dynamic(_))), Some(Some(Value::Dynamic(_)))) => {
                return unsupported(": of two computed values, only adding (same shapes) is")
            }
            _ => return unsupported(": of these operands"),
        };
        let op = match (op, constant_first) {
            (BinaryOp::Sub, true) => BinaryOp::ReverseSub,
            (BinaryOp::Div, true) => BinaryOp::ReverseDiv,
            (op, _) => op,
        };
        let operand = broadcast_operand(x, c)?;
        Ok(Value::Dynamic(self.add(
            name,
            LayerSpec::ConstantOp { op, operand },
            vec![x.clone()],
            vec![("constant", c.floats())],
        )?))
    }
}

/// The sizes, `C x H x W`, of a constant `c` broadcast over `x` as NumPy broadcasts (from the
/// last axis), when that leaves `x`'s shape as it is and does not vary along the batch.
fn broadcast_operand(x: &Dynamic, c: &Constant) -> std::result::Result<[usize; 3], Unsupported> {
    let dims = x.layout.dims(x.shape);
    let misfit = || {
        unsupported(format!(
            ": a constant of shape {:?} does not broadcast over [N, {}] without changing its \
             shape",
            c.dims,
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    let (batch, rest) = c.dims.split_at(c.dims.len().saturating_sub(dims.len()));
    if batch.iter().any(|&d| d != 1) {
        return misfit();
    }
    let mut operand = vec![1; dims.len() - rest.len()];
    operand.extend_from_slice(rest);
    if operand.iter().zip(&dims).any(|(&o, &d)| o != 1 && o != d) {
        return misfit();
    }
    match (x.layout, operand.as_slice()) {
        (Layout::Scalar, &[]) => Ok([1, 1, 1]),
        (Layout::Features, &[f]) => Ok([f, 1, 1]),
        (Layout::Sequence, &[c, l]) => Ok([c, 1, l]),
        (Layout::Maps, &[c, h, w]) => Ok([c, h, w]),
        _ => misfit(),
    }
}

/// Padding `begin` and `end` per axis as what the op pads on both ends (at most `most`) and
/// what is left for a node before it, `[top, left, bottom, right]`.
fn split_padding(begin: [usize; 2], end: [usize; 2], most: [usize; 2]) -> ([usize; 2], Pads) {
    let both = [0, 1].map(|a| begin[a].min(end[a]).min(most[a]));
    let extra = [
        begin[0] - both[0],
        begin[1] - both[1],
        end[0] - both[0],
        end[1] - both[1],
    ];
    (both, extra)
}
