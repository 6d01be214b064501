//! Batch normalisation, dropout and global average pooling: gradient checks against finite
//! differences (in training mode, where batch normalisation uses the batch's own statistics),
//! and their distinct training and inference behaviour.
//!
//! The objective is `L = sum(output * R)` for a fixed random `R`, as in `gradients.rs`.

mod common;

use cnn::layers::{Layer, LayerScratch, SingleInput};
use cnn::{LayerSpec, Mode, Shape, Tensor};
use common::{assert_close, central_differences, input_differences, rng, tensor, uniform, widen};

const TOLERANCE: f64 = 1e-2;
const FLOOR: f64 = 1e-2;
const SEED: u64 = 7;

fn forward(layer: &dyn Layer, input: &Tensor, mode: Mode, scratch: &mut LayerScratch) -> Tensor {
    let mut output = Tensor::zeros(input.batch(), layer.output_shape());
    layer.forward_one(input, &mut output, mode, scratch);
    output
}

/// `L` for a forward pass in `mode` with a fixed dropout seed.
fn objective(layer: &dyn Layer, input: &Tensor, weights: &[f32], mode: Mode) -> f64 {
    let mut scratch = LayerScratch {
        seed: 99,
        ..LayerScratch::default()
    };
    forward(layer, input, mode, &mut scratch)
        .data()
        .iter()
        .zip(weights)
        .map(|(&y, &w)| f64::from(y) * f64::from(w))
        .sum()
}

/// Checks the input gradient and every parameter gradient of `spec` on a random batch, for a
/// forward pass in `mode` (inference: batch normalisation with random running statistics, as
/// attributions differentiate it); also that backward adds to parameter gradients (two calls
/// double them).
fn check_in(mode: Mode, spec: LayerSpec, shape: Shape, batch: usize, eps: f32) {
    let mut rng = rng(SEED);
    let mut layer = spec
        .build("0", &[shape], cnn::kernels::simd::Isa::from_env().unwrap())
        .unwrap();
    for param in layer.params_mut() {
        param.value = uniform(&mut rng, param.value.len(), 0.5, 1.5);
    }
    for buffer in layer.buffers_mut() {
        buffer.value = uniform(&mut rng, buffer.value.len(), 0.5, 1.5);
    }
    let input = tensor(
        batch,
        shape,
        uniform(&mut rng, batch * shape.len(), -2.0, 2.0),
    );
    let weights = uniform(&mut rng, batch * layer.output_shape().len(), -1.0, 1.0);
    let grad_output = tensor(batch, layer.output_shape(), weights.clone());

    let mut param_grads: Vec<Vec<f32>> = layer
        .params()
        .iter()
        .map(|p| vec![0.0; p.value.len()])
        .collect();
    let mut grad_input = Tensor::zeros(batch, shape);
    for _ in 0..2 {
        let mut scratch = LayerScratch {
            seed: 99,
            ..LayerScratch::default()
        };
        let output = forward(&*layer, &input, mode, &mut scratch);
        grad_input.data_mut().fill(f32::NAN);
        layer.backward_one(
            &input,
            &output,
            &grad_output,
            Some(&mut grad_input),
            &mut param_grads,
            &mut scratch,
        );
    }

    let numeric = input_differences(&input, eps, |nudged| {
        objective(&*layer, nudged, &weights, mode)
    });
    assert_close(
        &format!("{spec} on {batch} x {shape}: input gradient"),
        &widen(grad_input.data()),
        &numeric,
        FLOOR,
        TOLERANCE,
    );
    for (p, twice) in param_grads.iter().enumerate() {
        let values = layer.params()[p].value.clone();
        let numeric = central_differences(&values, eps, |i, v| {
            layer.params_mut()[p].value[i] = v;
            let loss = objective(&*layer, &input, &weights, mode);
            layer.params_mut()[p].value[i] = values[i];
            loss
        });
        let doubled: Vec<f64> = numeric.iter().map(|g| 2.0 * g).collect();
        assert_close(
            &format!(
                "{spec}: {} gradient (two backward calls)",
                layer.params()[p].name
            ),
            &widen(twice),
            &doubled,
            FLOOR,
            TOLERANCE,
        );
    }
}

fn check(spec: LayerSpec, shape: Shape, batch: usize, eps: f32) {
    check_in(Mode::Train, spec, shape, batch, eps);
}

#[test]
fn batchnorm_gradients_match_finite_differences() {
    check(LayerSpec::BatchNorm2d, Shape::new(3, 4, 5), 4, 1e-2);
    // On flat features it is PyTorch's BatchNorm1d.
    check(LayerSpec::BatchNorm2d, Shape::flat(6), 5, 1e-2);
}

#[test]
fn batchnorm_inference_gradients_match_finite_differences() {
    check_in(
        Mode::Infer,
        LayerSpec::BatchNorm2d,
        Shape::new(3, 4, 5),
        2,
        1e-2,
    );
    check_in(
        Mode::Infer,
        LayerSpec::Dropout { rate: 0.5 },
        Shape::new(2, 3, 3),
        2,
        0.1,
    );
}

#[test]
fn global_average_pooling_gradients_match_finite_differences() {
    check(LayerSpec::GlobalAvgPool, Shape::new(4, 3, 5), 3, 0.1);
}

#[test]
fn dropout_gradients_match_finite_differences_for_a_fixed_mask() {
    check(
        LayerSpec::Dropout { rate: 0.5 },
        Shape::new(2, 3, 3),
        3,
        0.1,
    );
}

#[test]
fn batchnorm_normalises_batches_and_tracks_running_statistics() {
    let shape = Shape::new(2, 3, 3);
    let mut layer = LayerSpec::BatchNorm2d
        .build("0", &[shape], cnn::kernels::simd::Isa::from_env().unwrap())
        .unwrap();
    let names: Vec<_> = layer
        .params()
        .iter()
        .chain(layer.buffers())
        .map(|p| (p.name, p.dims.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("weight", vec![2]),
            ("bias", vec![2]),
            ("running_mean", vec![2]),
            ("running_var", vec![2]),
            ("num_batches_tracked", vec![]),
        ]
    );
    let mut rng = rng(SEED);
    let input = tensor(4, shape, uniform(&mut rng, 4 * shape.len(), 1.0, 5.0));
    let mut scratch = LayerScratch::default();
    let output = forward(&*layer, &input, Mode::Train, &mut scratch);
    // Each channel of the output has mean 0 and (biased) variance 1 over the batch.
    for c in 0..2 {
        let values: Vec<f64> = (0..4)
            .flat_map(|n| output.plane(n, c).iter().map(|&v| f64::from(v)))
            .collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
        assert!(mean.abs() < 1e-5, "channel {c} mean {mean}");
        assert!(
            (variance - 1.0).abs() < 1e-3,
            "channel {c} variance {variance}"
        );
    }
    // Running statistics move 10% of the way to the batch's (unbiased variance), as PyTorch.
    layer.update_running_statistics(&scratch);
    let values: Vec<f64> = (0..4)
        .flat_map(|n| input.plane(n, 0).iter().map(|&v| f64::from(v)))
        .collect();
    let count = values.len() as f64;
    let mean = values.iter().sum::<f64>() / count;
    let unbiased = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (count - 1.0);
    let buffers = layer.buffers();
    assert!((f64::from(buffers[0].value[0]) - 0.1 * mean).abs() < 1e-5);
    assert!((f64::from(buffers[1].value[0]) - (0.9 + 0.1 * unbiased)).abs() < 1e-4);
    assert_eq!(buffers[2].value, [1.0]);
    // Inference uses the running statistics: a different answer from training.
    let inferred = forward(&*layer, &input, Mode::Infer, &mut LayerScratch::default());
    let expected = (input.data()[0] - buffers[0].value[0]) / (buffers[1].value[0] + 1e-5).sqrt();
    assert!((inferred.data()[0] - expected).abs() < 1e-5);
    assert_ne!(inferred.data(), output.data());
}

#[test]
fn dropout_is_the_identity_in_inference_and_seeded_in_training() {
    let shape = Shape::flat(10_000);
    let layer = LayerSpec::Dropout { rate: 0.3 }
        .build("0", &[shape], cnn::kernels::simd::Isa::from_env().unwrap())
        .unwrap();
    let input = tensor(1, shape, vec![1.0; shape.len()]);
    let inferred = forward(&*layer, &input, Mode::Infer, &mut LayerScratch::default());
    assert_eq!(inferred.data(), input.data());
    let with_seed = |seed| {
        let mut scratch = LayerScratch {
            seed,
            ..LayerScratch::default()
        };
        forward(&*layer, &input, Mode::Train, &mut scratch)
    };
    let first = with_seed(1);
    assert_eq!(first.data(), with_seed(1).data(), "same seed, same mask");
    assert_ne!(
        first.data(),
        with_seed(2).data(),
        "another seed, another mask"
    );
    let dropped = first.data().iter().filter(|&&v| v == 0.0).count() as f64 / 10_000.0;
    assert!((dropped - 0.3).abs() < 0.02, "dropped {dropped}");
    let kept = first.data().iter().find(|&&v| v != 0.0).unwrap();
    assert!((kept - 1.0 / 0.7).abs() < 1e-6);
}

#[test]
fn notation_reads_and_writes_the_new_layers() {
    let layers = cnn::arch::parse(
        "conv 4@3, batchnorm, relu, dropout 0.2, gap, dense classes",
        3,
    )
    .unwrap();
    let kinds: Vec<_> = layers.nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(
        kinds,
        [
            "conv2d",
            "batchnorm2d",
            "relu",
            "dropout",
            "gap",
            "flatten",
            "dense"
        ]
    );
    assert_eq!(
        cnn::arch::parse(&cnn::arch::to_notation(&layers), 3).unwrap(),
        layers
    );
    for (text, expected) in [
        ("dropout 1.5", "not a dropout rate"),
        ("batchnorm 3", "unexpected `3`"),
        ("gap 2", "unexpected `2`"),
    ] {
        let error = cnn::arch::parse(text, 2).unwrap_err().to_string();
        assert!(error.contains(expected), "{text}: {error}");
    }
}
