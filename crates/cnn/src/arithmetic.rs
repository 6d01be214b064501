//! Every cell's arithmetic: for one output value of a node, the numbers it was computed from,
//! as the article shows them for its example. A convolution's window over each input channel,
//! the kernel slice, the products and their sums, the bias; a pooling window and which input
//! won; a dense layer's inputs and weights; an activation's input and formula.
//!
//! Each layer writes out its own arithmetic ([`crate::layers::Layer::arithmetic`]) with plain
//! loops in f64, apart from the fast kernels, so the result it shows is a check of the value the
//! engine computed, which [`CellExplanation::value`] holds.

use crate::error::{Error, Result};
use crate::kernels::pool::PoolKind;
use crate::network::{Network, Workspace};
use crate::tensor::{Shape, Tensor};
use serde::Serialize;

/// A position in a node's output: channel, row, column (`0, 0` for the `channel`-th value of a
/// flat output).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cell {
    pub channel: usize,
    pub y: usize,
    pub x: usize,
}

impl Cell {
    /// The cell's offset in one sample of `shape`.
    pub fn offset(self, shape: Shape) -> usize {
        (self.channel * shape.height + self.y) * shape.width + self.x
    }

    /// The cell at `offset` of one sample of `shape`.
    pub fn at(offset: usize, shape: Shape) -> Cell {
        let plane = shape.plane().max(1);
        let width = shape.width.max(1);
        Cell {
            channel: offset / plane,
            y: offset % plane / width,
            x: offset % width,
        }
    }
}

/// How one output value was computed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Arithmetic {
    /// Convolution and dense: `sum(window * weights) + bias`, one window per input channel (one
    /// window of every input for a dense layer).
    WeightedSum {
        windows: Vec<Window>,
        bias: Option<f32>,
        result: f32,
    },
    /// Max or average pooling over a window (a whole map for global pooling). `winner`: the
    /// index in the window of the largest value (the first, if several tie); the average
    /// divides by the pixels inside the input.
    Pool {
        max: bool,
        window: Window,
        winner: Option<usize>,
        result: f32,
    },
    /// An activation: `formula` applied to `input`.
    Function {
        name: &'static str,
        formula: &'static str,
        input: f32,
        result: f32,
    },
    /// Batch normalisation with the running statistics:
    /// `(input - mean) / sqrt(variance + epsilon) * weight + bias`.
    Normalize {
        input: f32,
        mean: f32,
        variance: f32,
        epsilon: f32,
        weight: f32,
        bias: f32,
        result: f32,
    },
    /// A residual addition: the same cell of every input, summed.
    Sum { terms: Vec<f32>, result: f32 },
    /// A value passed on unchanged (flatten, concatenation, dropout at inference, identity):
    /// from `cell` of input `input`.
    Copy {
        input: usize,
        cell: Cell,
        result: f32,
    },
}

impl Arithmetic {
    pub fn result(&self) -> f32 {
        match self {
            Arithmetic::WeightedSum { result, .. }
            | Arithmetic::Pool { result, .. }
            | Arithmetic::Function { result, .. }
            | Arithmetic::Normalize { result, .. }
            | Arithmetic::Sum { result, .. }
            | Arithmetic::Copy { result, .. } => *result,
        }
    }
}

/// One window of input values: a kernel-sized patch of one input channel (positions in the
/// padding hold 0 and no position), or the whole input of a dense layer, with the weights it is
/// multiplied by (none for pooling), the products and their sum.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Window {
    /// Which input the values come from (a node may read several).
    pub input: usize,
    /// The input channel, for a convolution or a pooling window.
    pub channel: Option<usize>,
    pub height: usize,
    pub width: usize,
    /// Each value's cell in the input, `None` in the padding.
    pub cells: Vec<Option<Cell>>,
    pub values: Vec<f32>,
    pub weights: Vec<f32>,
    pub products: Vec<f32>,
    /// `sum(products)`, accumulated in f64.
    pub sum: f32,
}

impl Window {
    /// A window of `cells` of `input` (sample 0 of a `shape` tensor), multiplied by `weights`
    /// when there are any.
    pub fn gather(
        input: (usize, &Tensor),
        channel: Option<usize>,
        (height, width): (usize, usize),
        cells: Vec<Option<Cell>>,
        weights: Vec<f32>,
    ) -> Window {
        let (index, tensor) = input;
        let sample = tensor.sample(0);
        let shape = tensor.shape();
        let values: Vec<f32> = cells
            .iter()
            .map(|c| c.map_or(0.0, |c| sample[c.offset(shape)]))
            .collect();
        let products: Vec<f32> = values.iter().zip(&weights).map(|(v, w)| v * w).collect();
        // Pooling windows have no weights: the sum of the values inside the input.
        let sum = if weights.is_empty() {
            values
                .iter()
                .zip(&cells)
                .filter(|(_, c)| c.is_some())
                .map(|(&v, _)| f64::from(v))
                .sum::<f64>()
        } else {
            values
                .iter()
                .zip(&weights)
                .map(|(&v, &w)| f64::from(v) * f64::from(w))
                .sum::<f64>()
        } as f32;
        Window {
            input: index,
            channel,
            height,
            width,
            cells,
            values,
            weights,
            products,
            sum,
        }
    }
}

/// A convolution's or dense layer's arithmetic from its windows: the sums of the windows, plus
/// the bias.
pub fn weighted_sum(windows: Vec<Window>, bias: Option<f32>) -> Arithmetic {
    let total = windows.iter().map(|w| f64::from(w.sum)).sum::<f64>() + bias.map_or(0.0, f64::from);
    Arithmetic::WeightedSum {
        windows,
        bias,
        result: total as f32,
    }
}

/// A pooling window's arithmetic: its first largest value, or the mean of the values inside
/// the input (padding is not counted, as [`crate::kernels::pool`] pools).
pub fn pool(kind: PoolKind, window: Window) -> Arithmetic {
    let inside: Vec<usize> = (0..window.cells.len())
        .filter(|&i| window.cells[i].is_some())
        .collect();
    let (winner, result) = match kind {
        PoolKind::Max => {
            let best = inside.iter().copied().reduce(|b, i| {
                if window.values[i] > window.values[b] {
                    i
                } else {
                    b
                }
            });
            (best, best.map_or(0.0, |b| window.values[b]))
        }
        PoolKind::Average => (None, window.sum / inside.len().max(1) as f32),
    };
    Arithmetic::Pool {
        max: kind == PoolKind::Max,
        window,
        winner,
        result,
    }
}

/// One cell of one node explained: the arithmetic, the value the engine computed there, and
/// when the node's only reader is an activation of the same shape (the ReLU after a
/// convolution), that activation's arithmetic for the same cell.
#[derive(Clone, Debug, Serialize)]
pub struct CellExplanation {
    pub node: String,
    pub index: usize,
    pub layer: String,
    /// The names of the values the node reads (`input` for the network's input).
    pub inputs: Vec<String>,
    pub cell: Cell,
    pub value: f32,
    pub arithmetic: Arithmetic,
    pub then: Option<Box<CellExplanation>>,
}

/// Explains `cell` of node `index` for the first picture of the last [`Network::forward`]
/// through `workspace` (with `input`, the network's input of that pass).
pub fn explain_cell(
    network: &Network,
    input: &Tensor,
    workspace: &Workspace,
    index: usize,
    cell: Cell,
) -> Result<CellExplanation> {
    let nodes = network.nodes();
    let node = nodes.get(index).ok_or_else(|| {
        Error::Invalid(format!(
            "no node {index}: the network has nodes 0 to {}",
            nodes.len().saturating_sub(1)
        ))
    })?;
    let shape = node.layer().output_shape();
    let fits = if shape.is_flat() {
        cell.channel < shape.channels && cell.y == 0 && cell.x == 0
    } else {
        cell.channel < shape.channels && cell.y < shape.height && cell.x < shape.width
    };
    if !fits {
        let range = if shape.is_flat() {
            format!("values 0 to {}", shape.channels.saturating_sub(1))
        } else {
            format!(
                "channels 0 to {}, rows 0 to {}, columns 0 to {}",
                shape.channels.saturating_sub(1),
                shape.height.saturating_sub(1),
                shape.width.saturating_sub(1)
            )
        };
        return Err(Error::Invalid(format!(
            "node {} outputs {shape}: it has {range}",
            node.name()
        )));
    }
    let activations = workspace.activations();
    if activations.len() != nodes.len() {
        return Err(Error::Invalid("run a forward pass first".into()));
    }
    let value_of = |v: usize| if v == 0 { input } else { &activations[v - 1] };
    let inputs: Vec<&Tensor> = node.inputs().iter().map(|&v| value_of(v)).collect();
    let arithmetic = node.layer().arithmetic(&inputs, cell).ok_or_else(|| {
        Error::Invalid(format!(
            "node {} ({}) cannot show its arithmetic",
            node.name(),
            node.layer().spec()
        ))
    })?;
    let name_of = |v: usize| {
        if v == 0 {
            "input".to_string()
        } else {
            nodes[v - 1].name().to_string()
        }
    };
    // The activation after it, when the node's value goes nowhere else.
    let readers: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].inputs().contains(&(index + 1)))
        .collect();
    let then = match readers[..] {
        [reader]
            if nodes[reader].inputs().len() == 1
                && nodes[reader].layer().output_shape() == shape
                && matches!(
                    nodes[reader]
                        .layer()
                        .arithmetic(&[value_of(index + 1)], cell),
                    Some(Arithmetic::Function { .. })
                ) =>
        {
            Some(Box::new(explain_cell(
                network, input, workspace, reader, cell,
            )?))
        }
        _ => None,
    };
    Ok(CellExplanation {
        node: node.name().to_string(),
        index,
        layer: node.layer().spec().to_string(),
        inputs: node.inputs().iter().map(|&v| name_of(v)).collect(),
        cell,
        value: activations[index].sample(0)[cell.offset(shape)],
        arithmetic,
        then,
    })
}
