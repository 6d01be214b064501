//! What a model file, a checkpoint, a data set or a flag may ask for, and the checked size
//! arithmetic the limits are enforced with.
//!
//! Every file is untrusted: an architecture, an input shape or an IDX header can declare sizes
//! that overflow `usize` or that no machine can hold. They are checked here, before anything
//! is allocated for them, and the error names the limit. The limits are generous for real
//! use (ImageNet-size inputs, a few hundred million parameters) and fixed, so that the same
//! file is accepted or refused on every machine; only the thread limit depends on the cores.

use crate::error::{Error, Result};
use crate::layers::Layer;
use crate::network::Network;
use crate::tensor::Shape;

/// Learnable values of a network, all layers together: 2 GiB of f32 (VGG-16 has 138 million).
pub const MAX_PARAMETERS: usize = 1 << 29;
/// Values one image takes through a network: the input and every layer's output (what
/// training keeps for the backward pass), 512 MiB of f32. VGG-16 on a 224x224 picture, every
/// ReLU and pooling output counted, needs 30 million.
pub const MAX_IMAGE_VALUES: usize = 1 << 27;
/// Values of one batch's activations (a batch times [`MAX_IMAGE_VALUES`] at most): 16 GiB.
pub const MAX_BATCH_VALUES: usize = 1 << 32;
/// Floating-point operations of one image's forward pass (VGG-16 at 224x224: 3.1e10).
pub const MAX_FLOPS_PER_IMAGE: u64 = 1 << 38;
/// Kernel, stride and padding of a sliding window, per axis.
pub const MAX_WINDOW: usize = 1 << 16;
/// Layers of a network.
pub const MAX_LAYERS: usize = 10_000;
/// Classes of a model or a data set (labels are stored as `u16`).
pub const MAX_CLASSES: usize = u16::MAX as usize;
/// Passes over the training data; a resumed run replays one shuffle per epoch done.
pub const MAX_EPOCHS: usize = 10_000;
/// Images per mini-batch.
pub const MAX_BATCH: usize = 65_536;
/// Worker threads per core: more only makes the threads wait for each other.
pub const MAX_THREADS_PER_CORE: usize = 8;

/// Bytes of a model file: every parameter as f32, and the safetensors header (at most
/// 100 MB, the `safetensors` crate's own limit).
pub const MAX_MODEL_FILE_BYTES: u64 = 4 * MAX_PARAMETERS as u64 + (100 << 20);
/// Bytes of a checkpoint: the model file, and Adam's two moments per parameter.
pub const MAX_CHECKPOINT_FILE_BYTES: u64 = 3 * MAX_MODEL_FILE_BYTES;
/// Bytes of a picture file (PNG, JPEG...).
pub const MAX_PICTURE_FILE_BYTES: u64 = 256 << 20;
/// Pixels of a decoded picture: 64 megapixels (8192 x 8192).
pub const MAX_PICTURE_PIXELS: u64 = 1 << 26;
/// Pixel bytes of a whole data set in memory (Fashion-MNIST's training set is 47 MB).
pub const MAX_DATASET_BYTES: u64 = 1 << 32;
/// Bytes of a text file: an architecture in the notation, CIFAR-10's class names.
pub const MAX_TEXT_FILE_BYTES: u64 = 1 << 20;

/// `factors` multiplied, or `None` when the product overflows `usize`.
pub fn product(factors: &[usize]) -> Option<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
}

/// Values in one image of `shape`, checked against [`MAX_IMAGE_VALUES`].
pub fn image_values(shape: Shape) -> std::result::Result<usize, String> {
    product(&[shape.channels, shape.height, shape.width])
        .filter(|&n| n <= MAX_IMAGE_VALUES)
        .ok_or_else(|| format!("{shape} values per image is over the limit of {MAX_IMAGE_VALUES}"))
}

/// Values of a parameter tensor of `dims`, checked against [`MAX_PARAMETERS`]: call before
/// allocating it.
pub fn parameter_values(dims: &[usize]) -> std::result::Result<usize, String> {
    product(dims)
        .filter(|&n| n <= MAX_PARAMETERS)
        .ok_or_else(|| {
            format!("a weight of shape {dims:?} is over the limit of {MAX_PARAMETERS} parameters")
        })
}

/// Values of a convolution's column matrix for one image (`patch x positions`: every window
/// unfolded), checked against [`MAX_IMAGE_VALUES`].
pub fn column_values(patch: usize, positions: usize) -> std::result::Result<usize, String> {
    product(&[patch, positions])
        .filter(|&n| n <= MAX_IMAGE_VALUES)
        .ok_or_else(|| {
            format!(
                "its windows unfold into {patch} x {positions} values per image, over the \
                 limit of {MAX_IMAGE_VALUES}"
            )
        })
}

/// What a network asks for so far, layer by layer, checked against the limits as each layer
/// is built: [`MAX_LAYERS`], [`MAX_PARAMETERS`], [`MAX_IMAGE_VALUES`] (the input and every
/// output together) and [`MAX_FLOPS_PER_IMAGE`].
#[derive(Debug)]
pub struct NetworkBudget {
    parameters: usize,
    values: usize,
    flops: u64,
}

impl NetworkBudget {
    /// The budget of a network of `layers` nodes taking images of `input`.
    pub fn new(layers: usize, input: Shape) -> Result<Self> {
        if layers > MAX_LAYERS {
            return Err(Error::Architecture(format!(
                "{layers} layers is over the limit of {MAX_LAYERS}"
            )));
        }
        let values =
            image_values(input).map_err(|e| Error::Invalid(format!("input shape: {e}")))?;
        Ok(NetworkBudget {
            parameters: 0,
            values,
            flops: 0,
        })
    }

    /// Adds node `node`, just built on inputs of `inputs`, to the totals; the error names it
    /// and the limit it crosses.
    pub fn add(&mut self, node: &str, inputs: &[Shape], layer: &dyn Layer) -> Result<()> {
        let refuse = |reason: String| Error::Shape {
            node: node.to_string(),
            kind: layer.spec().to_string(),
            input: inputs
                .iter()
                .map(Shape::to_string)
                .collect::<Vec<_>>()
                .join(" and "),
            reason,
        };
        let output = image_values(layer.output_shape()).map_err(refuse)?;
        let parameters: usize = layer.params().iter().map(|p| p.value.len()).sum();
        self.parameters = self
            .parameters
            .checked_add(parameters)
            .filter(|&n| n <= MAX_PARAMETERS)
            .ok_or_else(|| {
                refuse(format!(
                    "the network's parameters would pass the limit of {MAX_PARAMETERS}"
                ))
            })?;
        self.values = self
            .values
            .checked_add(output)
            .filter(|&n| n <= MAX_IMAGE_VALUES)
            .ok_or_else(|| {
                refuse(format!(
                    "the input and the layers' outputs would pass the limit of \
                     {MAX_IMAGE_VALUES} values per image"
                ))
            })?;
        self.flops = self
            .flops
            .checked_add(layer.flops_per_image())
            .filter(|&n| n <= MAX_FLOPS_PER_IMAGE)
            .ok_or_else(|| {
                refuse(format!(
                    "the network's work would pass the limit of {MAX_FLOPS_PER_IMAGE} FLOPs \
                     per image"
                ))
            })?;
        Ok(())
    }
}

/// Values one image takes through `network`: its input and every node's output.
pub fn activation_values(network: &Network) -> usize {
    network.input_shape().len()
        + network
            .nodes()
            .iter()
            .map(|n| n.layer().output_shape().len())
            .sum::<usize>()
}

/// The largest batch up to `wanted` whose activations through `network` stay within
/// [`MAX_BATCH_VALUES`] (at least 1): for batches the engine chooses itself.
pub fn batch_that_fits(wanted: usize, network: &Network) -> usize {
    let per_image = activation_values(network).max(1);
    wanted.clamp(1, (MAX_BATCH_VALUES / per_image).max(1))
}

/// Checks a batch size asked for by the user or a checkpoint (`flag` names it): from 1 to
/// [`MAX_BATCH`], and its activations through `network` within [`MAX_BATCH_VALUES`].
pub fn check_batch(flag: &str, batch: usize, network: &Network) -> Result<()> {
    check_batch_size(flag, batch)?;
    let values = activation_values(network);
    if batch.saturating_mul(values) > MAX_BATCH_VALUES {
        return Err(Error::Invalid(format!(
            "{flag} {batch}: {batch} images of {values} values each (input and every \
             layer's output) is over the limit of {MAX_BATCH_VALUES} values; use a smaller \
             batch"
        )));
    }
    Ok(())
}

/// Checks a batch size alone (`flag` names it): from 1 to [`MAX_BATCH`].
pub fn check_batch_size(flag: &str, batch: usize) -> Result<()> {
    if !(1..=MAX_BATCH).contains(&batch) {
        return Err(Error::Invalid(format!(
            "{flag} must be from 1 to {MAX_BATCH}, not {batch}"
        )));
    }
    Ok(())
}

/// Checks an epoch count: from 1 to [`MAX_EPOCHS`].
pub fn check_epochs(epochs: usize) -> Result<()> {
    if !(1..=MAX_EPOCHS).contains(&epochs) {
        return Err(Error::Invalid(format!(
            "--epochs must be from 1 to {MAX_EPOCHS}, not {epochs}"
        )));
    }
    Ok(())
}

/// The number of worker threads: `requested`, or one per core when `None`. Refuses 0 and
/// more than [`MAX_THREADS_PER_CORE`] per core.
pub fn threads(requested: Option<usize>) -> Result<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = cores * MAX_THREADS_PER_CORE;
    match requested {
        None => Ok(cores),
        Some(n) if (1..=most).contains(&n) => Ok(n),
        Some(n) => Err(Error::Invalid(format!(
            "--threads must be from 1 to {most} ({MAX_THREADS_PER_CORE} per core on this \
             machine's {cores}), not {n}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_that_overflow_are_none() {
        assert_eq!(product(&[3, 4, 5]), Some(60));
        assert_eq!(product(&[]), Some(1));
        assert_eq!(product(&[usize::MAX, 2]), None);
        assert_eq!(product(&[1 << 32, 1 << 32]), None);
    }

    #[test]
    fn sizes_over_the_limits_are_refused_with_the_limit_named() {
        assert_eq!(image_values(Shape::new(3, 224, 224)), Ok(3 * 224 * 224));
        let error = image_values(Shape::new(1, 100_000, 100_000)).unwrap_err();
        assert!(error.contains(&MAX_IMAGE_VALUES.to_string()), "{error}");
        assert!(image_values(Shape::new(usize::MAX, 2, 1)).is_err());
        assert!(parameter_values(&[4_294_967_295, 1, 3, 3]).is_err());
        assert!(parameter_values(&[1 << 40, 1 << 40]).is_err());
        assert_eq!(parameter_values(&[120, 400]), Ok(48_000));
        assert!(column_values(1 << 20, 1 << 20).is_err());
        assert!(check_epochs(0).is_err() && check_epochs(MAX_EPOCHS + 1).is_err());
        assert!(check_epochs(MAX_EPOCHS).is_ok());
        assert!(check_batch_size("--batch", usize::MAX).is_err());
        assert!(check_batch_size("--batch", 64).is_ok());
    }

    #[test]
    fn threads_are_bounded_by_the_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(threads(None).unwrap(), cores);
        assert_eq!(threads(Some(1)).unwrap(), 1);
        assert!(threads(Some(0)).is_err());
        assert!(threads(Some(cores * MAX_THREADS_PER_CORE + 1)).is_err());
        assert!(threads(Some(100_000))
            .unwrap_err()
            .to_string()
            .contains("--threads"));
    }
}
