//! The seed article's worked example, number for number: a 9x9 X (or O), the three 3x3
//! features `\`, `X`, `/`, convolution as the mean of the window products, ReLU, and 2x2
//! pooling with stride 2 that keeps partial windows. It runs through the same layers as
//! training: the mean is a convolution whose kernel is the feature scaled by 1/9.

use crate::error::Result;
use crate::graph::Architecture;
use crate::kernels::pool::PoolKind;
use crate::layers::{Conv2dConfig, LayerSpec, Mode};
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

/// Every stage of the example: one map per feature at each of conv, relu and pool.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeedExample {
    pub image: Map,
    pub features: Vec<Feature>,
    pub conv: Vec<Map>,
    pub relu: Vec<Map>,
    pub pool: Vec<Map>,
}

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
    let layers = Architecture::sequential(&architecture(stride, pool));
    let mut network = Network::new(&layers, Shape::new(1, 9, 9))?;
    // The mean of the 9 products is the sum with every weight divided by 9.
    let weight = &mut network.nodes_mut()[0].layer_mut().params_mut()[0].value;
    for (w, v) in weight
        .iter_mut()
        .zip(FEATURES.iter().flat_map(|(_, f)| f.iter().flatten()))
    {
        *w = v / 9.0;
    }
    let picture = image(letter);
    let input = Tensor::from_vec(1, Shape::new(1, 9, 9), picture.concat())?;
    let mut workspace = Workspace::new();
    network.forward(&input, &mut workspace, Mode::Infer)?;
    let maps = |stage: usize| {
        let t = &workspace.activations()[stage];
        let s = t.shape();
        (0..s.channels)
            .map(|c| t.plane(0, c).chunks(s.width).map(<[f32]>::to_vec).collect())
            .collect()
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
    })
}
