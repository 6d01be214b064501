//! Batched f32 tensors in NCHW layout.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The shape of one image, or of one feature vector (`channels` features, `height = width = 1`).
/// Every activation in a network is a batch of these, so one type serves conv and dense layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Shape {
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Shape {
            channels,
            height,
            width,
        }
    }

    /// A flat vector of `features` values.
    pub const fn flat(features: usize) -> Self {
        Shape::new(features, 1, 1)
    }

    /// Number of values in one image of this shape.
    pub const fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub const fn is_flat(&self) -> bool {
        self.height == 1 && self.width == 1
    }

    pub const fn plane(&self) -> usize {
        self.height * self.width
    }
}

impl fmt::Display for Shape {
    /// `16x5x5` (channels x height x width) for images, `120` for flat vectors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_flat() {
            write!(f, "{}", self.channels)
        } else {
            write!(f, "{}x{}x{}", self.channels, self.height, self.width)
        }
    }
}

/// A batch of `batch` images of one `shape`, stored contiguously as `[batch, C, H, W]`.
#[derive(Debug)]
pub struct Tensor {
    batch: usize,
    shape: Shape,
    /// At least `batch * shape.len()` values, the rest left from a larger shape (see
    /// [`Tensor::reshape`]).
    data: Vec<f32>,
}

impl Clone for Tensor {
    fn clone(&self) -> Self {
        Tensor {
            batch: self.batch,
            shape: self.shape,
            data: self.data().to_vec(),
        }
    }
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Self) -> bool {
        self.batch == other.batch && self.shape == other.shape && self.data() == other.data()
    }
}

impl Tensor {
    pub fn zeros(batch: usize, shape: Shape) -> Self {
        Tensor {
            batch,
            shape,
            data: vec![0.0; batch * shape.len()],
        }
    }

    /// Wraps `data`, which must hold exactly `batch * shape.len()` values.
    pub fn from_vec(batch: usize, shape: Shape, data: Vec<f32>) -> crate::Result<Self> {
        if data.len() != batch * shape.len() {
            return Err(crate::Error::Invalid(format!(
                "tensor of {batch} x {shape} needs {} values, got {}",
                batch * shape.len(),
                data.len()
            )));
        }
        Ok(Tensor { batch, shape, data })
    }

    /// Empty tensor, to be sized by [`Tensor::reshape`] before use.
    pub fn empty() -> Self {
        Tensor {
            batch: 0,
            shape: Shape::flat(0),
            data: Vec::new(),
        }
    }

    /// Changes the batch and shape, keeping the allocation when it is large enough, so that
    /// buffers reused from batch to batch (and from layer to layer) allocate and clear memory
    /// only once. Values are left unspecified: callers overwrite them.
    pub fn reshape(&mut self, batch: usize, shape: Shape) {
        self.batch = batch;
        self.shape = shape;
        if self.data.len() < self.len() {
            self.data.resize(self.len(), 0.0);
        }
    }

    /// Values held: `batch * shape.len()`.
    pub fn len(&self) -> usize {
        self.batch * self.shape.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data[..self.len()]
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        let len = self.len();
        &mut self.data[..len]
    }

    pub fn into_vec(mut self) -> Vec<f32> {
        self.data.truncate(self.len());
        self.data
    }

    /// The values of image `index` of the batch: `[C, H, W]`.
    pub fn sample(&self, index: usize) -> &[f32] {
        let len = self.shape.len();
        &self.data()[index * len..(index + 1) * len]
    }

    pub fn sample_mut(&mut self, index: usize) -> &mut [f32] {
        let len = self.shape.len();
        &mut self.data_mut()[index * len..(index + 1) * len]
    }

    /// Channel `channel` of image `index`: `[H, W]`, row-major.
    pub fn plane(&self, index: usize, channel: usize) -> &[f32] {
        let plane = self.shape.plane();
        let start = index * self.shape.len() + channel * plane;
        &self.data()[start..start + plane]
    }
}

/// A learnable tensor with its PyTorch name (`weight`, `bias`) and PyTorch dimensions.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: &'static str,
    pub dims: Vec<usize>,
    pub value: Vec<f32>,
}

impl Param {
    pub fn zeros(name: &'static str, dims: Vec<usize>) -> Self {
        let len = dims.iter().product();
        Param {
            name,
            dims,
            value: vec![0.0; len],
        }
    }
}
