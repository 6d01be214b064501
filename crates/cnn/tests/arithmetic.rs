//! Every cell's arithmetic, checked against hand computation: a convolution's window at the
//! border (the padding counts 0), the ReLU after it, a max-pooling window and its winner, an
//! average over the pixels inside the input, a dense output.

mod common;

use cnn::arithmetic::{explain_cell, Arithmetic, Cell, CellExplanation};
use cnn::{arch, Mode, Network, Shape, Workspace};
use common::tensor;

/// The 4x4 picture of these tests.
const PICTURE: [f32; 16] = [
    1.0, 2.0, 0.0, -1.0, //
    0.0, 1.0, 3.0, 1.0, //
    -2.0, 0.0, 1.0, 2.0, //
    1.0, -1.0, 0.0, 1.0,
];

/// `notation` on the 1x4x4 picture with its parameters set to `params` (in order), then
/// explains `cell` of node `node`.
fn explain(
    notation: &str,
    shape: Shape,
    input: &[f32],
    params: &[&[f32]],
    node: usize,
    cell: Cell,
) -> CellExplanation {
    let architecture = arch::parse(notation, 2).unwrap();
    let mut network = Network::new(&architecture, shape).unwrap();
    let mut values = params.iter();
    for param in network.params_mut() {
        param.value = values.next().expect("a value for every parameter").to_vec();
    }
    let input = tensor(1, shape, input.to_vec());
    let mut workspace = Workspace::new();
    network
        .forward(&input, &mut workspace, Mode::Infer)
        .unwrap();
    let explained = explain_cell(&network, &input, &workspace, node, cell).unwrap();
    assert_eq!(
        explained.arithmetic.result(),
        explained.value,
        "the engine computed the same"
    );
    explained
}

const FEATURE_0: [f32; 9] = [0.0, 1.0, 0.0, 1.0, -1.0, 1.0, 0.0, 1.0, 0.0];
const FEATURE_1: [f32; 9] = [1.0, 0.0, -1.0, 0.0, 2.0, 0.0, -1.0, 0.0, 1.0];
const BIASES: [f32; 2] = [-1.0, 0.5];
const CONV: &str = "conv 2@3x3 pad=1, relu, maxpool 2";

/// `cell` of node `node` of [`CONV`] with the two features and biases on the picture.
fn explain_conv(node: usize, cell: Cell) -> CellExplanation {
    let weights = [FEATURE_0, FEATURE_1].concat();
    explain(
        CONV,
        Shape::new(1, 4, 4),
        &PICTURE,
        &[&weights, &BIASES],
        node,
        cell,
    )
}

/// Feature 1 at the top-left corner: the window's first row and column lie in the padding.
/// Inside: picture (0,0)=1, (0,1)=2, (1,0)=0, (1,1)=1 times weights 2, 0, 0, 1: products
/// 2, 0, 0, 1, sum 3, plus the bias 0.5: 3.5; the ReLU after it keeps 3.5.
#[test]
fn a_convolution_cell_at_the_border() {
    let cell = Cell {
        channel: 1,
        y: 0,
        x: 0,
    };
    let e = explain_conv(0, cell);
    let Arithmetic::WeightedSum {
        windows,
        bias,
        result,
    } = &e.arithmetic
    else {
        panic!("{:?}", e.arithmetic)
    };
    assert_eq!(windows.len(), 1, "one input channel");
    let w = &windows[0];
    assert_eq!((w.height, w.width, w.channel), (3, 3, Some(0)));
    assert_eq!(w.values, [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 1.0]);
    assert_eq!(
        w.cells.iter().filter(|c| c.is_none()).count(),
        5,
        "5 in the padding"
    );
    assert_eq!(
        w.cells[8],
        Some(Cell {
            channel: 0,
            y: 1,
            x: 1
        })
    );
    assert_eq!(w.weights, FEATURE_1);
    assert_eq!(w.products, [0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0]);
    assert_eq!(w.sum, 3.0);
    assert_eq!(*bias, Some(0.5));
    assert_eq!(*result, 3.5);
    let then = e.then.as_ref().expect("the ReLU after it");
    assert_eq!((then.node.as_str(), then.layer.as_str()), ("1", "relu"));
    assert_eq!(
        then.arithmetic,
        Arithmetic::Function {
            name: "relu",
            formula: "max(0, x)",
            input: 3.5,
            result: 3.5
        }
    );
}

/// Max pooling's top-left window over the ReLU of feature 0. Feature 0 (a plus: +1 above,
/// left, right and below, -1 at the centre) with bias -1 at (0,0): 2 - 1 - 1 = 0; at (0,1):
/// 1 - 2 + 0 + 1 - 1 = -1; at (1,0): 1 + 0 + 1 - 2 - 1 = -1; at (1,1): 2 + 0 - 1 + 3 + 0 - 1 =
/// 3. After the ReLU: 0, 0, 0, 3; the window's largest is the fourth, 3.
#[test]
fn a_max_pooling_cell_and_its_winner() {
    let cell = Cell {
        channel: 0,
        y: 0,
        x: 0,
    };
    let e = explain_conv(2, cell);
    let Arithmetic::Pool {
        max,
        window,
        winner,
        result,
    } = &e.arithmetic
    else {
        panic!("{:?}", e.arithmetic)
    };
    assert!(*max);
    assert_eq!(window.values, [0.0, 0.0, 0.0, 3.0]);
    assert_eq!(*winner, Some(3));
    assert_eq!(
        window.cells[3],
        Some(Cell {
            channel: 0,
            y: 1,
            x: 1
        })
    );
    assert_eq!(*result, 3.0);
    assert_eq!(e.inputs, ["1"]);
    assert!(e.then.is_none(), "nothing reads the pooled maps");
}

/// A 3x3 average with stride 2 and padding 1 at the corner: the 4 pixels inside, 1 + 2 + 0 + 1,
/// divided by 4 (padding is not counted): 1.
#[test]
fn an_average_pooling_cell_counts_only_the_pixels_inside() {
    let cell = Cell {
        channel: 0,
        y: 0,
        x: 0,
    };
    let e = explain(
        "avgpool 3 stride=2 pad=1",
        Shape::new(1, 4, 4),
        &PICTURE,
        &[],
        0,
        cell,
    );
    let Arithmetic::Pool {
        max,
        window,
        winner,
        result,
    } = &e.arithmetic
    else {
        panic!("{:?}", e.arithmetic)
    };
    assert!(!*max);
    assert_eq!(*winner, None);
    assert_eq!(window.sum, 4.0);
    assert_eq!(*result, 1.0);
}

/// A dense output: inputs 2, 1, -4 times weights 1, -2, 0.5: products 2, -2, -2, sum -2, plus
/// the bias 0.25: -1.75.
#[test]
fn a_dense_output() {
    let cell = Cell {
        channel: 1,
        y: 0,
        x: 0,
    };
    let e = explain(
        "dense 2",
        Shape::flat(3),
        &[2.0, 1.0, -4.0],
        &[&[9.0, 9.0, 9.0, 1.0, -2.0, 0.5], &[0.0, 0.25]],
        // After the flatten the notation puts before a dense layer.
        1,
        cell,
    );
    let Arithmetic::WeightedSum {
        windows,
        bias,
        result,
    } = &e.arithmetic
    else {
        panic!("{:?}", e.arithmetic)
    };
    assert_eq!(windows[0].products, [2.0, -2.0, -2.0]);
    assert_eq!(windows[0].sum, -2.0);
    assert_eq!(*bias, Some(0.25));
    assert_eq!(*result, -1.75);
}

/// A cell outside the node's output, or a node that does not exist, gets a clear error.
#[test]
fn cells_outside_the_output_are_refused() {
    let architecture = arch::parse(CONV, 2).unwrap();
    let network = Network::new(&architecture, Shape::new(1, 4, 4)).unwrap();
    let input = tensor(1, Shape::new(1, 4, 4), PICTURE.to_vec());
    let mut workspace = Workspace::new();
    network
        .forward(&input, &mut workspace, Mode::Infer)
        .unwrap();
    let error = explain_cell(
        &network,
        &input,
        &workspace,
        2,
        Cell {
            channel: 0,
            y: 2,
            x: 0,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("node 2 outputs 2x2x2: it has channels 0 to 1, rows 0 to 1, columns 0 to 1"),
        "{error}"
    );
    let error = explain_cell(
        &network,
        &input,
        &workspace,
        3,
        Cell {
            channel: 0,
            y: 0,
            x: 0,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("no node 3"), "{error}");
}

/// On a network with every kind of node (residual addition, strided, dilated, depthwise and
/// grouped convolutions, batch normalisation with running statistics, concatenation, global
/// pooling, the smooth activations, dense), the arithmetic of every node's cells gives the
/// value the engine's fast kernels computed, to 1e-5 relative.
#[test]
fn every_nodes_arithmetic_gives_the_engines_value() {
    use rand::{Rng, SeedableRng};
    let shape = Shape::new(2, 8, 7);
    let architecture = arch::parse(
        "stem: conv 4@3 pad=1, relu, \
         block: (add(conv1: conv 4@3 pad=1, tanh, conv2: conv 4@3 pad=1 | ), relu), \
         down: (add(conv1: conv 6@3 stride=2 pad=1 nobias, bn1: batchnorm, gelu | \
                    shortcut: (conv 6@1 stride=2 nobias, batchnorm)), silu), \
         mixed: concat(a: conv 2@1 | b: (conv 2@3 pad=2 dilation=2, sigmoid)), \
         dw: conv 4@3 pad=1 groups=4, grouped: conv 4@1 groups=2, leakyrelu 0.1, \
         maxpool 3 stride=2 pad=1 ceil, avgpool 2 ceil, \
         pool: concat(gap | gmp), dropout 0.5, head: dense classes",
        3,
    )
    .unwrap();
    let mut network = Network::new(&architecture, shape).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for node in network.nodes_mut() {
        for param in node.layer_mut().params_mut() {
            param
                .value
                .iter_mut()
                .for_each(|v| *v = rng.random_range(-1.0..1.0));
        }
        for buffer in node.layer_mut().buffers_mut() {
            buffer
                .value
                .iter_mut()
                .for_each(|v| *v = rng.random_range(0.5..1.5));
        }
    }
    let input = tensor(
        1,
        shape,
        (0..shape.len())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect(),
    );
    let mut workspace = Workspace::new();
    network
        .forward(&input, &mut workspace, Mode::Infer)
        .unwrap();
    let mut checked = 0;
    for (index, node) in network.nodes().iter().enumerate() {
        let out = node.layer().output_shape();
        for offset in (0..out.len()).step_by(out.len().div_ceil(7)) {
            let cell = Cell::at(offset, out);
            let e = explain_cell(&network, &input, &workspace, index, cell).unwrap();
            let (a, v) = (e.arithmetic.result(), e.value);
            assert!(
                (a - v).abs() <= 1e-5 * v.abs().max(1.0),
                "node {} ({}) at {cell:?}: the arithmetic gives {a}, the engine {v}",
                e.node,
                e.layer
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked}");
}
