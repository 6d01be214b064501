//! Data sets: images kept compact as bytes, converted to normalised f32 one batch at a time.

pub mod xo;

use crate::error::{Error, Result};
use crate::preprocess::Preprocessing;
use crate::tensor::{Shape, Tensor};

/// Labelled images of one shape, stored as `u8` pixels in NCHW order.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    shape: Shape,
    classes: Vec<String>,
    images: Vec<u8>,
    labels: Vec<u16>,
}

impl Dataset {
    /// `images` holds `labels.len()` images of `shape`; every label names one of `classes`.
    pub fn new(
        shape: Shape,
        classes: Vec<String>,
        images: Vec<u8>,
        labels: Vec<u16>,
    ) -> Result<Self> {
        if images.len() != labels.len() * shape.len() {
            return Err(Error::Invalid(format!(
                "{} labels need {} pixels of {shape} images, got {}",
                labels.len(),
                labels.len() * shape.len(),
                images.len()
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&l| usize::from(l) >= classes.len()) {
            return Err(Error::Invalid(format!(
                "label {bad} out of range for {} classes",
                classes.len()
            )));
        }
        Ok(Dataset {
            shape,
            classes,
            images,
            labels,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn image(&self, index: usize) -> &[u8] {
        let len = self.shape.len();
        &self.images[index * len..(index + 1) * len]
    }

    pub fn label(&self, index: usize) -> usize {
        usize::from(self.labels[index])
    }

    /// Loads the images at `indices` into `batch` (`[indices.len(), shape]`, normalised as
    /// `preprocessing` says) and their labels into `labels`. Reuses both buffers.
    pub fn fill_batch(
        &self,
        indices: &[usize],
        preprocessing: &Preprocessing,
        batch: &mut Tensor,
        labels: &mut Vec<usize>,
    ) {
        batch.reshape(indices.len(), self.shape);
        labels.clear();
        for (slot, &index) in indices.iter().enumerate() {
            preprocessing.normalize(self.image(index), self.shape, batch.sample_mut(slot));
            labels.push(self.label(index));
        }
    }
}

/// Which data a command reads, as written on the command line (`--data`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSpec {
    /// The built-in X/O letters at `size x size` pixels: `xo` or `xo:SIZE`.
    Xo { size: usize },
}

/// How many images each X/O split holds.
pub const XO_TRAIN_IMAGES: usize = 8000;
pub const XO_VALIDATION_IMAGES: usize = 1000;
pub const XO_TEST_IMAGES: usize = 2000;

impl DataSpec {
    pub fn parse(text: &str) -> Result<Self> {
        let (kind, argument) = match text.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (text, None),
        };
        match kind {
            "xo" => {
                let size = match argument {
                    None => 28,
                    Some(a) => a.parse().map_err(|_| {
                        Error::Invalid(format!("--data xo:SIZE needs an image size, not `{a}`"))
                    })?,
                };
                Ok(DataSpec::Xo { size })
            }
            _ => Err(Error::Invalid(format!(
                "unknown data set `{text}` (known: xo, xo:SIZE)"
            ))),
        }
    }

    /// The spec as written on the command line.
    pub fn to_arg(&self) -> String {
        match self {
            DataSpec::Xo { size: 28 } => "xo".into(),
            DataSpec::Xo { size } => format!("xo:{size}"),
        }
    }

    /// Training and held-out validation splits.
    pub fn load_training(&self, seed: u64) -> Result<(Dataset, Dataset)> {
        match *self {
            DataSpec::Xo { size } => Ok((
                xo::generate(
                    xo::XoConfig {
                        size,
                        count: XO_TRAIN_IMAGES,
                        seed,
                    },
                    xo::Split::Train,
                )?,
                xo::generate(
                    xo::XoConfig {
                        size,
                        count: XO_VALIDATION_IMAGES,
                        seed,
                    },
                    xo::Split::Validation,
                )?,
            )),
        }
    }

    /// The test split, never seen in training.
    pub fn load_test(&self, seed: u64) -> Result<Dataset> {
        match *self {
            DataSpec::Xo { size } => xo::generate(
                xo::XoConfig {
                    size,
                    count: XO_TEST_IMAGES,
                    seed,
                },
                xo::Split::Test,
            ),
        }
    }

    /// How images of this data set are turned into network inputs.
    pub fn preprocessing(&self) -> Preprocessing {
        match self {
            DataSpec::Xo { .. } => Preprocessing::seed_convention(),
        }
    }
}
