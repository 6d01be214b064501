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
    /// [`Dataset::fill_batch`] with each image changed as `augment` says, `rng` drawing the
    /// changes: shifted by up to `augment.shift` pixels each way and, when `augment.flip`,
    /// mirrored half of the time (the uncovered border filled with zero bytes); rotated and
    /// zoomed about the centre (bilinear sampling); a square cut out; noise added. `pixels` is
    /// a reusable buffer.
    ///
    /// Per image the draws are, in order: the shift (rows, then columns), the flip, then only
    /// for the changes asked for: the angle, the zoom, the cutout's centre (row, column), one
    /// normal value per pixel. A run with only shift and flip draws what it always drew.
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
        let shift = augment.shift as i64;
        batch.reshape(indices.len(), shape);
        labels.clear();
        pixels.resize(shape.len(), 0);
        for (slot, &index) in indices.iter().enumerate() {
            let dy = rng.random_range(-shift..=shift) as f32;
            let dx = rng.random_range(-shift..=shift) as f32;
            let flip = augment.flip && rng.random_bool(0.5);
            let angle = if augment.rotate > 0.0 {
                rng.random_range(-augment.rotate..=augment.rotate)
                    .to_radians()
            } else {
                0.0
            };
            let zoom = if augment.scale > 0.0 {
                rng.random_range(1.0 - augment.scale..=1.0 + augment.scale)
            } else {
                1.0
            };
            let transform = Transform {
                shift: (dx, dy),
                flip,
                angle,
                zoom,
            };
            let source = self.image(index);
            if angle == 0.0 && zoom == 1.0 {
                transform.apply_whole_pixels(source, shape, pixels);
            } else {
                transform.apply_bilinear(source, shape, pixels);
            }
            if augment.cutout > 0 {
                let cy = rng.random_range(0..shape.height);
                let cx = rng.random_range(0..shape.width);
                cut_out(pixels, shape, (cy, cx), augment.cutout);
            }
            let out = batch.sample_mut(slot);
            if augment.noise > 0.0 {
                add_noise_and_normalize(pixels, shape, preprocessing, augment.noise, rng, out);
            } else {
                preprocessing.normalize(pixels, shape, out);
            }
            labels.push(self.label(index));
        }
    }
}

/// The geometric changes to one training image: output pixel `(x, y)` shows the source at the
/// point found by mirroring (when `flip`), moving by `shift`, then rotating by `angle` and
/// zooming by `zoom` about the image's centre.
struct Transform {
    shift: (f32, f32),
    flip: bool,
    angle: f32,
    zoom: f32,
}

impl Transform {
    /// Whole-pixel shifts and flips only: each byte copied, zero outside the source.
    fn apply_whole_pixels(&self, source: &[u8], shape: Shape, pixels: &mut [u8]) {
        let (height, width) = (shape.height as isize, shape.width as isize);
        let (dx, dy) = (self.shift.0 as isize, self.shift.1 as isize);
        for channel in 0..shape.channels {
            let plane = channel * shape.plane();
            for y in 0..height {
                for x in 0..width {
                    let (sy, sx) = (y + dy, if self.flip { width - 1 - x } else { x } + dx);
                    let inside = (0..height).contains(&sy) && (0..width).contains(&sx);
                    pixels[plane + (y * width + x) as usize] = if inside {
                        source[plane + (sy * width + sx) as usize]
                    } else {
                        0
                    };
                }
            }
        }
    }

    /// Any transform, sampled bilinearly at pixel centres; zero outside the source.
    fn apply_bilinear(&self, source: &[u8], shape: Shape, pixels: &mut [u8]) {
        let (height, width) = (shape.height, shape.width);
        let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
        // The rotation maps output onto source, so it turns the other way.
        let (sin, cos) = (-self.angle).sin_cos();
        let at = |plane: &[u8], x: isize, y: isize| -> f32 {
            if (0..width as isize).contains(&x) && (0..height as isize).contains(&y) {
                f32::from(plane[y as usize * width + x as usize])
            } else {
                0.0
            }
        };
        for channel in 0..shape.channels {
            let range = channel * shape.plane()..(channel + 1) * shape.plane();
            let (plane, out) = (&source[range.clone()], &mut pixels[range]);
            for y in 0..height {
                for x in 0..width {
                    let column = if self.flip { width - 1 - x } else { x };
                    let u = column as f32 + 0.5 + self.shift.0;
                    let v = y as f32 + 0.5 + self.shift.1;
                    let (px, py) = ((u - cx) / self.zoom, (v - cy) / self.zoom);
                    let sx = cos * px - sin * py + cx - 0.5;
                    let sy = sin * px + cos * py + cy - 0.5;
                    let (x0, y0) = (sx.floor(), sy.floor());
                    let (fx, fy) = (sx - x0, sy - y0);
                    let (x0, y0) = (x0 as isize, y0 as isize);
                    let value = (1.0 - fy)
                        * ((1.0 - fx) * at(plane, x0, y0) + fx * at(plane, x0 + 1, y0))
                        + fy * ((1.0 - fx) * at(plane, x0, y0 + 1)
                            + fx * at(plane, x0 + 1, y0 + 1));
                    out[y * width + x] = value.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
}

/// Zeroes the `size x size` square centred at `(row, column)` (clipped to the image), in every
/// channel: cutout (DeVries and Taylor, 2017).
fn cut_out(pixels: &mut [u8], shape: Shape, (row, column): (usize, usize), size: usize) {
    let top = row.saturating_sub(size / 2);
    let left = column.saturating_sub(size / 2);
    let bottom = (top + size).min(shape.height);
    let right = (left + size).min(shape.width);
    for channel in 0..shape.channels {
        let plane = &mut pixels[channel * shape.plane()..(channel + 1) * shape.plane()];
        for y in top..bottom {
            plane[y * shape.width + left..y * shape.width + right].fill(0);
        }
    }
}

/// [`Preprocessing::normalize`] after adding normal noise of standard deviation `noise` (in
/// units of the full pixel range) to each value, clipped to [0, 1].
fn add_noise_and_normalize(
    pixels: &[u8],
    shape: Shape,
    preprocessing: &Preprocessing,
    noise: f32,
    rng: &mut impl Rng,
    out: &mut [f32],
) {
    let plane = shape.plane();
    for (channel, (src, dst)) in pixels.chunks(plane).zip(out.chunks_mut(plane)).enumerate() {
        let (mean, std) = (preprocessing.mean[channel], preprocessing.std[channel]);
        for (d, &p) in dst.iter_mut().zip(src) {
            let normal: f32 = rng.sample(rand_distr::StandardNormal);
            let value = (f32::from(p) / 255.0 + noise * normal).clamp(0.0, 1.0);
            *d = (value - mean) / std;
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
    /// generated validation split (and refuses `val_split`). With `limit`, only the first
    /// `limit` training images are kept (after the validation split is taken); the X/O
    /// generator draws no more than those.
    pub fn load_training(
        &self,
        seed: u64,
        val_split: f32,
        limit: Option<usize>,
    ) -> Result<(Dataset, Option<Dataset>)> {
        let (train, validation, _) = self.load_training_as(seed, val_split, limit, None)?;
        Ok((train, validation))
    }

    /// [`DataSpec::load_training`], with `folder:` images converted to `shape` instead of the
    /// first image's (other data sets have one shape and ignore it), and the number of
    /// training images there were before the `limit`.
    pub fn load_training_as(
        &self,
        seed: u64,
        val_split: f32,
        limit: Option<usize>,
        shape: Option<Shape>,
    ) -> Result<(Dataset, Option<Dataset>, usize)> {
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
            DataSpec::Xo { .. } if val_split != 0.0 => {
                return Err(Error::Invalid(format!(
                    "--val-split {val_split}: the X/O data has a validation split of its own \
                     ({XO_VALIDATION_IMAGES} images)"
                )))
            }
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
                    XO_TRAIN_IMAGES,
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
                let shape = match shape {
                    Some(shape) => shape,
                    None => folder::probe_shape(dir)?,
                };
                folder::load(dir, folder::FolderSplit::Train, shape)?
            }
            DataSpec::Cifar10 { dir } => cifar::load(dir, cifar::CifarSplit::Train)?,
        };
        if val_split > 0.0 {
            let (rest, validation) = train.split_validation(val_split, seed)?;
            let available = rest.len();
            Ok((limited(rest), Some(validation), available))
        } else {
            let available = train.len();
            Ok((limited(train), None, available))
        }
    }

    /// The test split, never seen in training.
    pub fn load_test(&self, seed: u64) -> Result<Dataset> {
        self.load_test_as(seed, None)
    }

    /// [`DataSpec::load_test`], with `folder:` images converted to `shape` (a model's input)
    /// instead of the first training image's.
    pub fn load_test_as(&self, seed: u64, shape: Option<Shape>) -> Result<Dataset> {
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
                let shape = match shape {
                    Some(shape) => shape,
                    None => folder::probe_shape(dir)?,
                };
                folder::load(dir, folder::FolderSplit::Test, shape)
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
            DataSpec::FashionMnist => Preprocessing::new(
                vec![FASHION_MNIST_MEAN],
                vec![FASHION_MNIST_STD],
                Background::Dark,
                false,
            ),
            DataSpec::Idx { .. } | DataSpec::Folder { .. } | DataSpec::Cifar10 { .. } => {
                let (mean, std) = train.channel_statistics();
                let background = match self {
                    DataSpec::Idx { .. } => Background::Dark,
                    _ => Background::Any,
                };
                Preprocessing::new(mean, std, background, false)
            }
        }
    }
}

fn fashion_mnist_hint(error: Error) -> Error {
    match error {
        Error::Io { path, error } if error.kind() == std::io::ErrorKind::NotFound => Error::file(
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
