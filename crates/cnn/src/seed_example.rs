//! The seed article's worked example, number for number: a 9x9 X (or O), the three 3x3
//! features `\`, `X`, `/`, convolution as the mean of the window products, ReLU, and 2x2
//! pooling with stride 2 that keeps partial windows. It runs through the same layers as
//! training: the mean is a convolution whose kernel is the feature scaled by 1/9.
//!
//! The article stops at pooling; the verdict, X or O, takes one more layer (its sequel's
//! "fully connected layer", in which every pooled value votes). Here that is a dense layer
//! whose weights are set by hand rather than learnt: class c's weights are the pooled maps of
//! the standard letter c, scaled to length 1. A class's score is then the picture's pooled
//! values measured along the standard letter's: pooled maps shaped like the standard c's
//! score highest for c, and the standard letters themselves are always told apart (by
//! Cauchy-Schwarz, a vector is longest along its own direction).

use crate::error::Result;
use crate::graph::Architecture;
use crate::kernels::pool::PoolKind;
use crate::layers::{Conv2dConfig, DenseConfig, LayerSpec, Mode};
use crate::network::{Network, Workspace};
use crate::tensor::{Shape, Tensor};
use crate::window::Window2d;
use serde::Serialize;

/// A 2-D grid of values, as a list of rows.
pub type Map = Vec<Vec<f32>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Letter {
    X,
    O,
}

/// The seed's features, in its order, rows top to bottom.
pub const FEATURES: [(&str, [[f32; 3]; 3]); 3] = [
    ("\\", [[1., -1., -1.], [-1., 1., -1.], [-1., -1., 1.]]),
    ("X", [[1., -1., 1.], [-1., 1., -1.], [1., -1., 1.]]),
    ("/", [[-1., -1., 1.], [-1., 1., -1.], [1., -1., -1.]]),
];

/// The seed's 9x9 images: -1 background, +1 stroke.
pub fn image(letter: Letter) -> Map {
    let mut grid = vec![vec![-1.0; 9]; 9];
    match letter {
        Letter::X => {
            for i in 1..=7 {
                grid[i][i] = 1.0;
                grid[i][8 - i] = 1.0;
            }
        }
        Letter::O => {
            for (r, c) in [
                (1, 3),
                (1, 4),
                (1, 5),
                (2, 2),
                (2, 6),
                (3, 1),
                (3, 7),
                (4, 1),
                (4, 7),
                (5, 1),
                (5, 7),
                (6, 2),
                (6, 6),
                (7, 3),
                (7, 4),
                (7, 5),
            ] {
                grid[r][c] = 1.0;
            }
        }
    }
    grid
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Feature {
    pub name: String,
    pub weights: Map,
}

/// Every stage of the example: one map per feature at each of conv, relu and pool, then the
/// verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeedExample {
    pub image: Map,
    pub features: Vec<Feature>,
    pub conv: Vec<Map>,
    pub relu: Vec<Map>,
    pub pool: Vec<Map>,
    pub verdict: Verdict,
}

/// The dense layer's decision: per class (`X`, `O`), the weights it gives each pooled value
/// (one map per feature, as `pool`) and the score, `sum(pooled * weights)`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub classes: Vec<String>,
    pub weights: Vec<Vec<Map>>,
    pub scores: Vec<f32>,
    pub class: String,
}

const CLASSES: [(&str, Letter); 2] = [("X", Letter::X), ("O", Letter::O)];

/// The layers of the example: conv (3 features, no bias), ReLU, 2x2 pooling, stride 2, ceil.
pub fn architecture(stride: usize, pool: PoolKind) -> Vec<LayerSpec> {
    let window = Window2d {
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0, 0],
        ceil_mode: true,
    };
    vec![
        LayerSpec::Conv2d(Conv2dConfig {
            stride: [stride, stride],
            bias: false,
            ..Conv2dConfig::new(FEATURES.len(), [3, 3])
        }),
        LayerSpec::Relu,
        match pool {
            PoolKind::Max => LayerSpec::MaxPool2d(window),
            PoolKind::Average => LayerSpec::AvgPool2d(window),
        },
    ]
}

/// Runs the example with convolution stride `stride` (1 in the article, or 2).
pub fn run(letter: Letter, stride: usize, pool: PoolKind) -> Result<SeedExample> {
    let head = [
        LayerSpec::Flatten,
        LayerSpec::Dense(DenseConfig {
            out_features: CLASSES.len(),
            bias: false,
        }),
    ];
    let layers = Architecture::sequential(&[&architecture(stride, pool)[..], &head].concat());
    let mut network = Network::new(&layers, Shape::new(1, 9, 9))?;
    // The mean of the 9 products is the sum with every weight divided by 9.
    let weight = &mut network.nodes_mut()[0].layer_mut().params_mut()[0].value;
    for (w, v) in weight
        .iter_mut()
        .zip(FEATURES.iter().flat_map(|(_, f)| f.iter().flatten()))
    {
        *w = v / 9.0;
    }
    let mut workspace = Workspace::new();
    let mut pooled = |network: &Network, letter: Letter| -> Result<Vec<f32>> {
        let input = Tensor::from_vec(1, Shape::new(1, 9, 9), image(letter).concat())?;
        network.forward(&input, &mut workspace, Mode::Infer)?;
        Ok(workspace.activations()[2].sample(0).to_vec())
    };
    // Each class's votes: the standard letter's pooled values, scaled to length 1.
    let mut votes = Vec::new();
    for (_, standard) in CLASSES {
        let values = pooled(&network, standard)?;
        let length = values.iter().map(|v| v * v).sum::<f32>().sqrt();
        votes.extend(values.iter().map(|v| v / length.max(f32::MIN_POSITIVE)));
    }
    let dense = network.nodes().len() - 1;
    network.nodes_mut()[dense].layer_mut().params_mut()[0].value = votes;
    let picture = image(letter);
    let input = Tensor::from_vec(1, Shape::new(1, 9, 9), picture.concat())?;
    network.forward(&input, &mut workspace, Mode::Infer)?;
    let maps = |stage: usize| {
        let t = &workspace.activations()[stage];
        let s = t.shape();
        (0..s.channels)
            .map(|c| t.plane(0, c).chunks(s.width).map(<[f32]>::to_vec).collect())
            .collect()
    };
    let pooled_shape = network.nodes()[2].layer().output_shape();
    let weights = network.nodes()[dense].layer().params()[0]
        .value
        .chunks(pooled_shape.len())
        .map(|class| {
            class
                .chunks(pooled_shape.plane())
                .map(|plane| {
                    plane
                        .chunks(pooled_shape.width)
                        .map(<[f32]>::to_vec)
                        .collect()
                })
                .collect()
        })
        .collect();
    let scores = workspace.output().sample(0).to_vec();
    let best = crate::loss::argmax(&scores);
    let verdict = Verdict {
        classes: CLASSES.iter().map(|(name, _)| name.to_string()).collect(),
        weights,
        scores,
        class: CLASSES[best].0.to_string(),
    };
    Ok(SeedExample {
        image: picture,
        features: FEATURES
            .iter()
            .map(|(name, w)| Feature {
                name: name.to_string(),
                weights: w.iter().map(|r| r.to_vec()).collect(),
            })
            .collect(),
        conv: maps(0),
        relu: maps(1),
        pool: maps(2),
        verdict,
    })
}
