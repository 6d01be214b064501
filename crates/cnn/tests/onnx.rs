//! ONNX export and import: a model written as ONNX reads back as the same network, and files
//! that are malformed or hostile are refused with a message, never a panic or a huge allocation.
//! (ONNX Runtime and `onnx.checker` read the exported files in `.ci/run`:
//! `interop/check_onnx.py`; the ONNX project's own test cases run in `interop/onnx_conformance.py`.)

use cnn::onnx::proto::{
    attribute_type, data_type, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};
use cnn::onnx::{self, ExportOptions};
use cnn::preprocess::Preprocessing;
use cnn::rng::{seeded, Stream};
use cnn::{arch, Model, Network, Shape, Tensor, Workspace};
use prost::Message;
use rand::Rng;

/// Every op of the engine, in a graph with a residual addition and a concatenation.
const EVERY_OP: &str = "pad 2 1 0 1 reflect, stem: conv 8@3 pad=1, gelu, pad 1 0 0 1 edge, conv 8@2, lrn 3 0.5 0.75 2, \
    b: (add(conv 8@3 pad=1 nobias, batchnorm, leakyrelu 0.1, conv 8@3 pad=1 nobias, batchnorm | ), relu), se: mul( | gap, dense 4, relu, dense 8, sigmoid), \
    avgpool 3 stride=2 pad=1 ceil, \
    m: concat(conv 4@1, sigmoid | conv 4@3 pad=2 dilation=2 groups=2, silu | maxpool 3 stride=1 pad=1, tanh | conv 4@1, hardswish, clip -inf 0.5 | conv 2@1, relu6, hardsigmoid 0.2 0.5), prelu, constant sub 22x1x1, constant div 1x1x1, \
    identity, gmp, flatten, reshape 11x2x1, pad 1 value=0.5, flatten, dense 16, prelu shared, constant rsub 16x1x1, dropout 0.3, dense classes";

/// A model of `notation` with random weights and batch-norm statistics.
fn random_model(notation: &str, shape: Shape, classes: usize, seed: u64) -> Model {
    let architecture = arch::parse(notation, classes).unwrap();
    let mut network = Network::new(&architecture, shape).unwrap();
    network.init_kaiming(&mut seeded(seed, Stream::WeightInit));
    let mut rng = seeded(seed, Stream::Shuffle);
    for node in network.nodes_mut() {
        let layer = node.layer_mut();
        for param in layer.params_mut() {
            if param.dims.len() == 1 {
                param
                    .value
                    .iter_mut()
                    .for_each(|v| *v = rng.random_range(0.5..1.5));
            }
        }
        for buffer in layer.buffers_mut() {
            match buffer.name {
                "running_mean" => buffer
                    .value
                    .iter_mut()
                    .for_each(|v| *v = rng.random_range(-0.5..0.5)),
                "running_var" | "constant" => buffer
                    .value
                    .iter_mut()
                    .for_each(|v| *v = rng.random_range(0.5..2.0)),
                _ => {}
            }
        }
    }
    let names = (0..classes).map(|c| format!("class {c}")).collect();
    Model::new(network, names, Preprocessing::identity(shape.channels)).unwrap()
}

fn random_batch(batch: usize, shape: Shape, seed: u64) -> Tensor {
    let mut rng = seeded(seed, Stream::Augment);
    let mut input = Tensor::zeros(batch, shape);
    input
        .data_mut()
        .iter_mut()
        .for_each(|v| *v = rng.random_range(-1.0..1.0));
    input
}

fn logits(model: &Model, input: &Tensor) -> Vec<f32> {
    model
        .network
        .infer(input, &mut Workspace::new())
        .unwrap()
        .data()
        .to_vec()
}

#[test]
fn an_exported_model_imports_as_the_same_network() {
    for (notation, shape) in [
        (EVERY_OP, Shape::new(3, 13, 11)),
        (&arch::preset("resnet20").unwrap(), Shape::new(3, 16, 16)),
        (&arch::preset("separable").unwrap(), Shape::new(1, 12, 12)),
        (&arch::preset("lenet5").unwrap(), Shape::new(1, 28, 28)),
    ] {
        let model = random_model(notation, shape, 5, 7);
        let bytes = onnx::to_bytes(&model, ExportOptions { softmax: true }).unwrap();
        assert_eq!(
            bytes,
            onnx::to_bytes(&model, ExportOptions { softmax: true }).unwrap()
        );
        let back = onnx::from_bytes(&bytes, &Default::default()).unwrap();
        assert_eq!(back.classes, model.classes, "{notation}");
        assert_eq!(back.preprocessing, model.preprocessing);
        assert_eq!(back.network.input_shape(), shape);
        assert_eq!(
            back.network.param_count(),
            model.network.param_count(),
            "{notation}"
        );
        let ops = |m: &Model| -> Vec<String> {
            m.network
                .nodes()
                .iter()
                .map(|n| n.layer().spec().to_string())
                .collect()
        };
        // Dropout is left out of the file (it does nothing at inference).
        let expected: Vec<String> = ops(&model)
            .into_iter()
            .filter(|o| !o.starts_with("dropout"))
            .collect();
        assert_eq!(ops(&back), expected, "{notation}");
        let input = random_batch(3, shape, 1);
        assert_eq!(logits(&back, &input), logits(&model, &input), "{notation}");
    }
}

#[test]
fn state_dict_names_survive_the_round_trip() {
    let model = random_model(
        &arch::preset("resnet20").unwrap(),
        Shape::new(3, 8, 8),
        10,
        3,
    );
    let bytes = onnx::to_bytes(&model, ExportOptions::default()).unwrap();
    let file = ModelProto::decode(&bytes[..]).unwrap();
    let graph = file.graph.unwrap();
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    for name in [
        "conv1.weight",
        "bn1.running_var",
        "layer2.0.downsample.0.weight",
        "fc.bias",
    ] {
        assert!(
            initializers.contains(&name),
            "{name} missing from {initializers:?}"
        );
    }
    let back = onnx::from_bytes(&bytes, &Default::default()).unwrap();
    let names: Vec<String> = back
        .network
        .params()
        .map(|(node, p)| format!("{node}.{}", p.name))
        .collect();
    let original: Vec<String> = model
        .network
        .params()
        .map(|(node, p)| format!("{node}.{}", p.name))
        .collect();
    assert_eq!(names, original);
}

// ---------------------------------------------------------------------------------------------
// Files written by hand: what other exporters write, and hostile files.

fn tensor_type(dims: &[Option<i64>], elem_type: i32) -> Option<TypeProto> {
    Some(TypeProto {
        tensor_type: Some(TensorTypeProto {
            elem_type,
            shape: Some(TensorShapeProto {
                dim: dims
                    .iter()
                    .map(|d| Dimension {
                        dim_value: *d,
                        dim_param: d.is_none().then(|| "N".to_string()),
                    })
                    .collect(),
            }),
        }),
    })
}

fn value(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: tensor_type(dims, data_type::FLOAT),
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: name.into(),
        op_type: op.into(),
        domain: String::new(),
        attribute,
    }
}

fn floats(name: &str, dims: &[i64], values: Vec<f32>) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        float_data: values,
        name: name.into(),
        ..TensorProto::default()
    }
}

fn ints(name: &str, values: Vec<i64>) -> TensorProto {
    TensorProto {
        dims: vec![values.len() as i64],
        data_type: data_type::INT64,
        int64_data: values,
        name: name.into(),
        ..TensorProto::default()
    }
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i: value,
        ..AttributeProto::default()
    }
}

fn file(
    nodes: Vec<NodeProto>,
    initializer: Vec<TensorProto>,
    input: [i64; 3],
    output: &str,
) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(GraphProto {
            node: nodes,
            name: "g".into(),
            initializer,
            input: vec![value(
                "x",
                &[None, Some(input[0]), Some(input[1]), Some(input[2])],
            )],
            output: vec![value(output, &[None, None])],
            ..GraphProto::default()
        }),
        ..ModelProto::default()
    }
}

fn import(model: &ModelProto) -> Result<Model, String> {
    onnx::from_bytes(&model.encode_to_vec(), &Default::default())
}

/// `x.view(x.size(0), -1)` as PyTorch exports it: `Shape`, `Gather`, `Unsqueeze` and `Concat`
/// computing the target of a `Reshape`, then `MatMul` and `Add` for a linear layer without
/// `Gemm`. All of it folds into a flatten and a dense layer with its bias.
#[test]
fn shape_arithmetic_and_matmul_with_add_fold_into_flatten_and_dense() {
    let weights: Vec<f32> = (0..12 * 3).map(|i| (i as f32 * 0.37).sin()).collect();
    let bias = vec![0.5, -1.0, 2.0];
    let model = file(
        vec![
            node("Relu", "/act/Relu", &["x"], "r", vec![]),
            node("Shape", "/Shape", &["r"], "s", vec![]),
            node(
                "Gather",
                "/Gather",
                &["s", "zero"],
                "n",
                vec![int_attribute("axis", 0)],
            ),
            node("Unsqueeze", "/Unsqueeze", &["n", "axes"], "n1", vec![]),
            node(
                "Concat",
                "/Concat",
                &["n1", "minus_one"],
                "target",
                vec![int_attribute("axis", 0)],
            ),
            node("Reshape", "/Reshape", &["r", "target"], "flat", vec![]),
            node("MatMul", "/fc/MatMul", &["flat", "fc.weight"], "y0", vec![]),
            node("Add", "/fc/Add", &["y0", "fc.bias"], "y", vec![]),
        ],
        vec![
            TensorProto {
                dims: vec![],
                ..ints("zero", vec![0])
            },
            ints("axes", vec![0]),
            ints("minus_one", vec![-1]),
            floats("fc.weight", &[12, 3], weights.clone()),
            floats("fc.bias", &[3], bias.clone()),
        ],
        [3, 2, 2],
        "y",
    );
    let imported = import(&model).unwrap();
    let kinds = kinds(&imported.network);
    assert_eq!(kinds, ["relu", "flatten", "dense"]);
    let input = random_batch(2, Shape::new(3, 2, 2), 5);
    let out = logits(&imported, &input);
    for n in 0..2 {
        for o in 0..3 {
            let expected: f32 = bias[o]
                + (0..12)
                    .map(|i| input.sample(n)[i].max(0.0) * weights[i * 3 + o])
                    .sum::<f32>();
            assert!(
                (out[n * 3 + o] - expected).abs() < 1e-5,
                "{} vs {expected}",
                out[n * 3 + o]
            );
        }
    }
}

/// The kind of each of the network's nodes, in order.
fn kinds(network: &Network) -> Vec<&'static str> {
    network
        .nodes()
        .iter()
        .map(|n| n.layer().spec().kind())
        .collect()
}

fn refused(model: &ModelProto) -> String {
    import(model).expect_err("a file that must be refused")
}

#[test]
fn every_unsupported_op_is_listed_in_one_error() {
    let model = file(
        vec![
            node("Relu", "a", &["x"], "a", vec![]),
            node("Softplus", "soft1", &["a"], "b", vec![]),
            node("Relu", "c", &["b"], "c", vec![]),
            node("Elu", "elu7", &["c"], "d", vec![]),
            node("Flatten", "f", &["d"], "y", vec![]),
        ],
        vec![],
        [1, 4, 4],
        "y",
    );
    let error = refused(&model);
    assert!(error.contains("not supported"), "{error}");
    assert!(
        error.contains("Softplus (`soft1`)") && error.contains("Elu (`elu7`)"),
        "{error}"
    );
}

#[test]
fn malformed_and_hostile_files_are_refused() {
    let good = file(
        vec![
            node("Flatten", "f", &["x"], "f", vec![]),
            node(
                "Gemm",
                "fc",
                &["f", "w"],
                "y",
                vec![int_attribute("transB", 1)],
            ),
        ],
        vec![floats("w", &[2, 4], vec![0.1; 8])],
        [1, 2, 2],
        "y",
    );
    import(&good).unwrap();
    let bytes = good.encode_to_vec();
    for cut in [1, 7, bytes.len() / 2, bytes.len() - 1] {
        let error = onnx::from_bytes(&bytes[..cut], &Default::default()).unwrap_err();
        assert!(!error.is_empty(), "cut at {cut}");
    }
    assert!(onnx::from_bytes(b"", &Default::default())
        .unwrap_err()
        .contains("empty"));
    assert!(onnx::from_bytes(b"\xff\xff\xff\xff", &Default::default())
        .unwrap_err()
        .contains("not a valid ONNX file"));

    let edited = |edit: &dyn Fn(&mut GraphProto)| {
        let mut model = good.clone();
        edit(model.graph.as_mut().unwrap());
        refused(&model)
    };
    // Declared sizes far beyond the data: refused before anything is allocated for them.
    let error = edited(&|g| g.initializer[0].dims = vec![1 << 40, 1 << 20]);
    assert!(error.contains("too large"), "{error}");
    let error = edited(&|g| g.initializer[0].dims = vec![2, 5]);
    assert!(error.contains("call for 10 values"), "{error}");
    let error = edited(&|g| g.initializer[0].dims = vec![-2, 4]);
    assert!(error.contains("negative"), "{error}");
    let error = edited(&|g| g.initializer[0].data_location = 1);
    assert!(error.contains("external data"), "{error}");
    // A cycle: the first node reads the output of the last.
    let error = edited(&|g| g.node[0].input[0] = "y".into());
    assert!(error.contains("cycle"), "{error}");
    let error = edited(&|g| g.node.swap(0, 1));
    assert!(error.contains("cycle"), "{error}");
    // Wrong types.
    let error = edited(&|g| {
        g.input[0].r#type = tensor_type(&[None, Some(1), Some(2), Some(2)], data_type::INT64)
    });
    assert!(error.contains("not float32"), "{error}");
    let error = edited(&|g| g.initializer[0].data_type = 8);
    assert!(error.contains("element type 8"), "{error}");
    let error = edited(&|g| g.node[1].attribute[0].r#type = attribute_type::FLOAT);
    assert!(error.contains("wrong type"), "{error}");
    let error = edited(&|g| g.initializer[0].float_data[3] = f32::NAN);
    assert!(error.contains("NaN"), "{error}");
    // Shapes that do not fit.
    let error = edited(&|g| g.initializer[0].dims = vec![4, 2]);
    assert!(error.contains("features"), "{error}");
    let error = edited(&|g| {
        g.input[0].r#type = tensor_type(
            &[None, Some(1 << 40), Some(1 << 40), Some(2)],
            data_type::FLOAT,
        )
    });
    assert!(error.contains("too large"), "{error}");
    let error = edited(&|g| g.input.clear());
    assert!(error.contains("no input"), "{error}");
    let error = edited(&|g| g.output[0].name = "nowhere".into());
    assert!(error.contains("nowhere"), "{error}");
    // A few bytes asking for billions of values at load: `ConstantOfShape` and broadcasting.
    let error = edited(&|g| {
        g.initializer
            .push(ints("huge_shape", vec![1 << 12, 1 << 13]));
        g.node.insert(
            0,
            node("ConstantOfShape", "fill", &["huge_shape"], "filled", vec![]),
        );
        g.node[2].input.push("filled".into());
    });
    assert!(error.contains("computed at load"), "{error}");
    let error = edited(&|g| {
        g.initializer
            .push(floats("column", &[1 << 13, 1], vec![1.0; 1 << 13]));
        g.initializer
            .push(floats("row", &[1, 1 << 13], vec![1.0; 1 << 13]));
        g.node
            .insert(0, node("Mul", "outer", &["column", "row"], "outer", vec![]));
        g.node[2].input.push("outer".into());
    });
    assert!(error.contains("computed at load"), "{error}");
    let mut opset = good.clone();
    opset.opset_import[0].version = 99;
    assert!(refused(&opset).contains("opset 99"));
    // Too many nodes for a network.
    let error = edited(&|g| {
        let relu = node("Relu", "r", &["x"], "r", vec![]);
        g.node = vec![relu; 20_000];
    });
    assert!(error.contains("nodes"), "{error}");
}

/// A network whose output is feature maps runs (`cnn run`), but is not a classifier.
#[test]
fn maps_out_are_a_network_but_not_a_model() {
    let model = file(
        vec![node("Relu", "r", &["x"], "y", vec![])],
        vec![],
        [2, 3, 3],
        "y",
    );
    let bytes = model.encode_to_vec();
    let imported = onnx::import::network_from_bytes(&bytes).unwrap();
    assert_eq!(
        imported.main_output().layout,
        cnn::onnx::import::Layout::Maps
    );
    assert_eq!(imported.network.output_shape(), Shape::new(2, 3, 3));
    assert!(refused(&model).contains("feature maps"));
}

fn ints_attribute(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: values.to_vec(),
        ..AttributeProto::default()
    }
}

/// A `[N, C, L]` input through a 1-D convolution (stride 2, padding 1) and a 1-D max pool, then
/// `Unsqueeze` and `Squeeze` of the spatial axis (no node: the values are held alike): the
/// network computes what the loops below do, and its output is `[N, C, L]` again.
#[test]
fn one_dimensional_ops_on_sequences() {
    let (channels, length, out_channels) = (2usize, 9usize, 3usize);
    let weights: Vec<f32> = (0..out_channels * channels * 3)
        .map(|i| (i as f32 * 0.61).cos())
        .collect();
    let bias = vec![0.25, -0.5, 0.125];
    let mut model = file(
        vec![
            node(
                "Conv",
                "/conv/Conv",
                &["x", "conv.weight", "conv.bias"],
                "c",
                vec![
                    ints_attribute("kernel_shape", &[3]),
                    ints_attribute("strides", &[2]),
                    ints_attribute("pads", &[1, 1]),
                ],
            ),
            node(
                "MaxPool",
                "/pool/MaxPool",
                &["c"],
                "p",
                vec![
                    ints_attribute("kernel_shape", &[2]),
                    ints_attribute("strides", &[2]),
                ],
            ),
            node("Unsqueeze", "/Unsqueeze", &["p", "axes"], "u", vec![]),
            node("Squeeze", "/Squeeze", &["u", "axes"], "y", vec![]),
        ],
        vec![
            floats(
                "conv.weight",
                &[out_channels as i64, channels as i64, 3],
                weights.clone(),
            ),
            floats("conv.bias", &[3], bias.clone()),
            ints("axes", vec![2]),
        ],
        [0, 0, 0],
        "y",
    );
    let graph = model.graph.as_mut().unwrap();
    graph.input = vec![value("x", &[None, Some(2), Some(9)])];
    graph.output = vec![value("y", &[None, Some(3), Some(2)])];
    let imported = onnx::import::network_from_bytes(&model.encode_to_vec()).unwrap();
    assert_eq!(imported.input_layout, onnx::import::Layout::Sequence);
    assert_eq!(
        imported.main_output().layout,
        onnx::import::Layout::Sequence
    );
    let kinds = kinds(&imported.network);
    assert_eq!(kinds, ["conv2d", "maxpool2d"]);
    let network = &imported.network;
    assert_eq!(network.input_shape(), Shape::new(2, 1, 9));
    // Convolution: 9 + 2 - 3 = 8, stride 2: 5 values; pooling by 2: 2.
    assert_eq!(network.output_shape(), Shape::new(3, 1, 2));
    let input = random_batch(2, network.input_shape(), 3);
    let mut workspace = Workspace::new();
    let output = network.infer(&input, &mut workspace).unwrap();
    for n in 0..2 {
        let x = input.sample(n);
        let at = |c: usize, i: isize| {
            if (0..length as isize).contains(&i) {
                x[c * length + i as usize]
            } else {
                0.0
            }
        };
        for o in 0..out_channels {
            let conv: Vec<f32> = (0..5)
                .map(|j| {
                    bias[o]
                        + (0..channels)
                            .flat_map(|c| (0..3).map(move |k| (c, k)))
                            .map(|(c, k)| {
                                weights[(o * channels + c) * 3 + k]
                                    * at(c, 2 * j as isize + k as isize - 1)
                            })
                            .sum::<f32>()
                })
                .collect();
            for j in 0..2 {
                let expected = conv[2 * j].max(conv[2 * j + 1]);
                let got = output.sample(n)[o * 2 + j];
                assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
            }
        }
    }
}

/// A `Reshape` target whose dimensions multiply past i64 (found by the fuzzer, which panicked
/// on the overflow) is refused, not a panic.
#[test]
fn reshape_to_a_target_past_i64_is_refused() {
    let model = file(
        vec![
            node("Relu", "/act/Relu", &["x"], "a", vec![]),
            node("Reshape", "/huge/Reshape", &["a", "target"], "y", vec![]),
        ],
        vec![ints("target", vec![-1, (1 << 62) + 1, 4])],
        [2, 3, 4],
        "y",
    );
    let error = refused(&model);
    assert!(error.contains("reshaping"), "{error}");
}

/// `Squeeze` of an axis past the rank, or of one whose dimension is not 1, is an error in ONNX:
/// refused with the node named, not skipped.
#[test]
fn squeeze_of_a_wrong_axis_is_refused() {
    for axis in [4, -5, 1] {
        let model = file(
            vec![
                node("Relu", "/act/Relu", &["x"], "a", vec![]),
                node("Squeeze", "/bad/Squeeze", &["a", "axes"], "y", vec![]),
            ],
            vec![ints("axes", vec![axis])],
            [2, 3, 4],
            "y",
        );
        let error = refused(&model);
        assert!(
            error.contains("/bad/Squeeze") && error.contains(&format!("axis {axis}")),
            "axis {axis}: {error}"
        );
    }
}

/// Arithmetic with constants broadcast as NumPy broadcasts them: `(x - mean) / std` per channel
/// (`[1, C, 1, 1]` and `[C, 1, 1]`), a scale per column (`[W]`), `1 - x`, and a constant added
/// after a ReLU (no bias to fold it into). Checked against the same arithmetic in loops.
#[test]
fn constants_broadcast_over_computed_values() {
    let (c, h, w) = (2usize, 3usize, 4usize);
    let mean = vec![0.5, -0.25];
    let std = vec![2.0, 0.5];
    let column: Vec<f32> = (0..w).map(|i| 1.0 + i as f32 * 0.5).collect();
    let model = file(
        vec![
            node("Sub", "/norm/Sub", &["x", "mean"], "a", vec![]),
            node("Div", "/norm/Div", &["a", "std"], "b", vec![]),
            node("Mul", "/scale/Mul", &["b", "column"], "d", vec![]),
            node("Sub", "/flip/Sub", &["one", "d"], "e", vec![]),
            node("Relu", "/act/Relu", &["e"], "f", vec![]),
            node("Add", "/shift/Add", &["f", "shift"], "y", vec![]),
        ],
        vec![
            floats("mean", &[1, 2, 1, 1], mean.clone()),
            floats("std", &[2, 1, 1], std.clone()),
            floats("column", &[4], column.clone()),
            floats("one", &[], vec![1.0]),
            floats("shift", &[1], vec![0.75]),
        ],
        [2, 3, 4],
        "y",
    );
    let imported = onnx::import::network_from_bytes(&model.encode_to_vec()).unwrap();
    let ops: Vec<String> = imported
        .network
        .nodes()
        .iter()
        .map(|n| n.layer().spec().to_string())
        .collect();
    assert_eq!(
        ops,
        [
            "constant sub 2x1x1",
            "constant div 2x1x1",
            "constant mul 1x1x4",
            "constant rsub 1x1x1",
            "relu",
            "constant add 1x1x1"
        ]
    );
    let shape = Shape::new(c, h, w);
    let input = random_batch(2, shape, 9);
    let mut workspace = Workspace::new();
    let output = imported.network.infer(&input, &mut workspace).unwrap();
    for n in 0..2 {
        for (i, (&x, &y)) in input.sample(n).iter().zip(output.sample(n)).enumerate() {
            let (channel, column_index) = (i / (h * w), i % w);
            let scaled = (x - mean[channel]) / std[channel] * column[column_index];
            let expected = (1.0 - scaled).max(0.0) + 0.75;
            assert_eq!(y, expected, "value {i} of image {n}");
        }
    }
    // A constant that varies along the batch, or would grow the value, is refused.
    for dims in [vec![2, 1, 1, 1], vec![2, 3, 5]] {
        let len = dims.iter().product::<i64>() as usize;
        let model = file(
            vec![node("Mul", "m", &["x", "k"], "y", vec![])],
            vec![floats("k", &dims, vec![1.0; len])],
            [2, 3, 4],
            "y",
        );
        let error = refused(&model);
        assert!(error.contains("does not broadcast"), "{dims:?}: {error}");
    }
}
