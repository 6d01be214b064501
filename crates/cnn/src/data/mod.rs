//! Data sets: images kept compact as bytes, converted to normalised f32 one batch at a time.

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod xo;

use crate::error::{Error, Result};
use crate::preprocess::{Background, Preprocessing};
use crate::rng::{seeded, Stream};
use crate::tensor::{Shape, Tensor};
use crate::train::Augment;
use rand::seq::SliceRandom;
use rand::Rng;
use std::path::PathBuf;

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

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.shape.len());
        for &index in indices {
            images.extend_from_slice(self.image(index));
        }
        Dataset {
            shape: self.shape,
            classes: self.classes.clone(),
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// The first `count` images (all of them when there are fewer).
    pub fn truncated(&self, count: usize) -> Dataset {
        let indices: Vec<usize> = (0..count.min(self.len())).collect();
        self.subset(&indices)
    }

    /// Splits off a random `fraction` of the images (chosen by `seed`) as a validation set;
    /// returns `(rest, validation)`, each in the original order.
    pub fn split_validation(&self, fraction: f32, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(Error::Invalid(format!(
                "--val-split must be between 0 and 1, not {fraction}"
            )));
        }
        let held_out = ((self.len() as f64 * f64::from(fraction)).round() as usize).max(1);
        if held_out >= self.len() {
            return Err(Error::Invalid(format!(
                "--val-split {fraction} leaves no training images out of {}",
                self.len()
            )));
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut seeded(seed, Stream::ValidationSplit));
        let (mut validation, mut rest) = (order[..held_out].to_vec(), order[held_out..].to_vec());
        validation.sort_unstable();
        rest.sort_unstable();
        Ok((self.subset(&rest), self.subset(&validation)))
    }

    /// Per channel, the mean and standard deviation of `pixel / 255` over every image.
    pub fn channel_statistics(&self) -> (Vec<f32>, Vec<f32>) {
        let plane = self.shape.plane();
        let mut sums = vec![(0u64, 0u64); self.shape.channels];
        for image in self.images.chunks_exact(self.shape.len().max(1)) {
            for (channel, pixels) in image.chunks_exact(plane).enumerate() {
                for &p in pixels {
                    sums[channel].0 += u64::from(p);
                    sums[channel].1 += u64::from(p) * u64::from(p);
                }
            }
        }
        let count = (self.len() * plane).max(1) as f64;
        sums.iter()
            .map(|&(sum, squares)| {
                let mean = sum as f64 / count / 255.0;
                let variance = (squares as f64 / count / (255.0 * 255.0) - mean * mean).max(0.0);
                (
                    mean as f32,
                    (variance.sqrt() as f32).max(crate::preprocess::MIN_STD),
                )
            })
            .unzip()
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

impl Dataset {
    /// [`Dataset::fill_batch`] with each image shifted by up to `augment.shift` pixels each way
    /// (the uncovered border filled with zero bytes) and, when `augment.flip`, mirrored half of
    /// the time; `rng` draws the changes. `pixels` is a reusable buffer.
    #[allow(clippy::too_many_arguments)]
    pub fn fill_batch_augmented(
        &self,
        indices: &[usize],
        preprocessing: &Preprocessing,
        augment: Augment,
        rng: &mut impl Rng,
        pixels: &mut Vec<u8>,
        batch: &mut Tensor,
        labels: &mut Vec<usize>,
    ) {
        let shape = self.shape;
        let (height, width) = (shape.height as isize, shape.width as isize);
        let shift = augment.shift as isize;
        batch.reshape(indices.len(), shape);
        labels.clear();
        pixels.resize(shape.len(), 0);
        for (slot, &index) in indices.iter().enumerate() {
            let dy = rng.random_range(-shift as i64..=shift as i64) as isize;
            let dx = rng.random_range(-shift as i64..=shift as i64) as isize;
            let flip = augment.flip && rng.random_bool(0.5);
            let source = self.image(index);
            for channel in 0..shape.channels {
                let plane = channel * shape.plane();
                for y in 0..height {
                    for x in 0..width {
                        let (sy, sx) = (y + dy, if flip { width - 1 - x } else { x } + dx);
                        let inside = (0..height).contains(&sy) && (0..width).contains(&sx);
                        pixels[plane + (y * width + x) as usize] = if inside {
                            source[plane + (sy * width + sx) as usize]
                        } else {
                            0
                        };
                    }
                }
            }
            preprocessing.normalize(pixels, shape, batch.sample_mut(slot));
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
    /// Fashion-MNIST from `/usr/share/datasets/fashion-mnist`: `fashion-mnist`.
    FashionMnist,
    /// The four standard IDX files in a folder (MNIST and the like): `idx:DIR`.
    Idx { dir: PathBuf },
    /// An image-folder tree: `folder:DIR`.
    Folder { dir: PathBuf },
    /// CIFAR-10 binary batches: `cifar10:DIR`.
    Cifar10 { dir: PathBuf },
}

/// How many images each X/O split holds.
pub const XO_TRAIN_IMAGES: usize = 8000;
pub const XO_VALIDATION_IMAGES: usize = 1000;
pub const XO_TEST_IMAGES: usize = 2000;

/// Fashion-MNIST's training-set mean and standard deviation of `pixel / 255`.
const FASHION_MNIST_MEAN: f32 = 0.2860;
const FASHION_MNIST_STD: f32 = 0.3530;

impl DataSpec {
    pub fn parse(text: &str) -> Result<Self> {
        let (kind, argument) = match text.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (text, None),
        };
        let dir = |what: &str| -> Result<PathBuf> {
            match argument {
                Some(a) if !a.is_empty() => Ok(PathBuf::from(a)),
                _ => Err(Error::Invalid(format!(
                    "--data {what}:DIR needs a folder, e.g. `{what}:data/{what}`"
                ))),
            }
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
            "fashion-mnist" | "fashion_mnist" if argument.is_none() => Ok(DataSpec::FashionMnist),
            "idx" => Ok(DataSpec::Idx { dir: dir("idx")? }),
            "folder" => Ok(DataSpec::Folder {
                dir: dir("folder")?,
            }),
            "cifar10" => Ok(DataSpec::Cifar10 {
                dir: dir("cifar10")?,
            }),
            _ => Err(Error::Invalid(format!(
                "unknown data set `{text}` (known: xo, xo:SIZE, fashion-mnist, idx:DIR, \
                 folder:DIR, cifar10:DIR)"
            ))),
        }
    }

    /// The spec as written on the command line.
    pub fn to_arg(&self) -> String {
        match self {
            DataSpec::Xo { size: 28 } => "xo".into(),
            DataSpec::Xo { size } => format!("xo:{size}"),
            DataSpec::FashionMnist => "fashion-mnist".into(),
            DataSpec::Idx { dir } => format!("idx:{}", dir.display()),
            DataSpec::Folder { dir } => format!("folder:{}", dir.display()),
            DataSpec::Cifar10 { dir } => format!("cifar10:{}", dir.display()),
        }
    }

    /// Whether a mirrored image shows the same class (clothes, objects, X and O: yes; digits:
    /// no), so horizontal flips may augment the data.
    pub fn allows_flip(&self) -> bool {
        !matches!(self, DataSpec::Idx { .. })
    }

    /// The training images, and a held-out validation split: `val_split` of the training
    /// images (chosen by `seed`) when it is above 0, none otherwise. The X/O data has its own
    /// generated validation split. With `limit`, only the first `limit` training images are
    /// kept (after the validation split is taken); the X/O generator draws no more than those.
    pub fn load_training(
        &self,
        seed: u64,
        val_split: f32,
        limit: Option<usize>,
    ) -> Result<(Dataset, Option<Dataset>)> {
        if limit == Some(0) {
            return Err(Error::Invalid("--limit must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&val_split) {
            return Err(Error::Invalid(format!(
                "--val-split must be from 0 to 1 (excluded), not {val_split}"
            )));
        }
        let limited = |set: Dataset| match limit {
            Some(limit) if limit < set.len() => set.truncated(limit),
            _ => set,
        };
        let train = match self {
            DataSpec::Xo { size } => {
                let config = |count| xo::XoConfig {
                    size: *size,
                    count,
                    seed,
                };
                // The first N images drawn are the first N of the whole split: one stream.
                let count = limit.map_or(XO_TRAIN_IMAGES, |l| l.min(XO_TRAIN_IMAGES));
                return Ok((
                    xo::generate(config(count), xo::Split::Train)?,
                    Some(xo::generate(
                        config(XO_VALIDATION_IMAGES),
                        xo::Split::Validation,
                    )?),
                ));
            }
            DataSpec::FashionMnist => idx::load(
                std::path::Path::new(idx::FASHION_MNIST_DIR),
                idx::IdxSplit::Train,
                &self.class_names(),
            )
            .map_err(fashion_mnist_hint)?,
            DataSpec::Idx { dir } => idx::load(dir, idx::IdxSplit::Train, &idx::digit_classes())?,
            DataSpec::Folder { dir } => {
                folder::load(dir, folder::FolderSplit::Train, folder::probe_shape(dir)?)?
            }
            DataSpec::Cifar10 { dir } => cifar::load(dir, cifar::CifarSplit::Train)?,
        };
        if val_split > 0.0 {
            let (rest, validation) = train.split_validation(val_split, seed)?;
            Ok((limited(rest), Some(validation)))
        } else {
            Ok((limited(train), None))
        }
    }

    /// The test split, never seen in training.
    pub fn load_test(&self, seed: u64) -> Result<Dataset> {
        match self {
            DataSpec::Xo { size } => xo::generate(
                xo::XoConfig {
                    size: *size,
                    count: XO_TEST_IMAGES,
                    seed,
                },
                xo::Split::Test,
            ),
            DataSpec::FashionMnist => idx::load(
                std::path::Path::new(idx::FASHION_MNIST_DIR),
                idx::IdxSplit::Test,
                &self.class_names(),
            )
            .map_err(fashion_mnist_hint),
            DataSpec::Idx { dir } => idx::load(dir, idx::IdxSplit::Test, &idx::digit_classes()),
            DataSpec::Folder { dir } => {
                folder::load(dir, folder::FolderSplit::Test, folder::probe_shape(dir)?)
            }
            DataSpec::Cifar10 { dir } => cifar::load(dir, cifar::CifarSplit::Test),
        }
    }

    fn class_names(&self) -> Vec<String> {
        idx::FASHION_MNIST_CLASSES
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    /// How images of this data set are turned into network inputs: fixed for the built-in
    /// data sets, measured on the training images for the others.
    pub fn preprocessing(&self, train: &Dataset) -> Preprocessing {
        match self {
            DataSpec::Xo { .. } => Preprocessing::seed_convention(),
            DataSpec::FashionMnist => Preprocessing {
                mean: vec![FASHION_MNIST_MEAN],
                std: vec![FASHION_MNIST_STD],
                background: Background::Dark,
                autocontrast: false,
            },
            DataSpec::Idx { .. } | DataSpec::Folder { .. } | DataSpec::Cifar10 { .. } => {
                let (mean, std) = train.channel_statistics();
                let background = match self {
                    DataSpec::Idx { .. } => Background::Dark,
                    _ => Background::Any,
                };
                Preprocessing {
                    mean,
                    std,
                    background,
                    autocontrast: false,
                }
            }
        }
    }
}

fn fashion_mnist_hint(error: Error) -> Error {
    match error {
        Error::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => Error::file(
            path,
            "missing: install Fashion-MNIST with `apt-get install dataset-fashion-mnist`",
        ),
        Error::File { path, message } if message.starts_with("no IDX file") => Error::file(
            path,
            format!(
                "{message}: install Fashion-MNIST with `apt-get install dataset-fashion-mnist`"
            ),
        ),
        other => other,
    }
}
