//! One criterion benchmark per layer kind, forward and backward, at the shapes of the presets,
//! and a whole training step, so that a regression in any kernel shows.
//! Run: `cargo bench -p cnn --bench layers`.

use cnn::arch;
use cnn::layers::{Layer, LayerScratch, LayerSpec, Mode, SingleInput};
use cnn::optim::{Optimizer, OptimizerConfig};
use cnn::rng::{seeded, Stream};
use cnn::train::{train_step, StepSettings};
use cnn::{Gradients, Network, Shape, Tensor, Workspace};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::Rng;
use std::time::Duration;

const BATCH: usize = 64;

fn random(batch: usize, shape: Shape, seed: u64) -> Tensor {
    let mut rng = seeded(seed, Stream::WeightInit);
    let data = (0..batch * shape.len())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Tensor::from_vec(batch, shape, data).unwrap()
}

fn bench_layer(c: &mut Criterion, name: &str, notation: &str, input: Shape) {
    let spec: LayerSpec = arch::parse(notation, 10).unwrap().nodes.pop().unwrap().op;
    let mut layer = spec
        .build("0", &[input], cnn::kernels::simd::Isa::from_env().unwrap())
        .unwrap();
    for (i, p) in layer.params_mut().iter_mut().enumerate() {
        let r = random(1, Shape::flat(p.value.len()), i as u64);
        p.value.copy_from_slice(r.data());
    }
    let layer: Box<dyn Layer> = layer;
    let x = random(BATCH, input, 7);
    let mut y = Tensor::zeros(BATCH, layer.output_shape());
    let mut scratch = LayerScratch::default();
    c.bench_function(&format!("{name} forward"), |b| {
        b.iter(|| layer.forward_one(&x, &mut y, Mode::Train, &mut scratch))
    });
    let dy = random(BATCH, layer.output_shape(), 8);
    let mut dx = Tensor::zeros(BATCH, input);
    let mut grads: Vec<Vec<f32>> = layer
        .params()
        .iter()
        .map(|p| vec![0.0; p.value.len()])
        .collect();
    c.bench_function(&format!("{name} backward"), |b| {
        b.iter(|| layer.backward_one(&x, &y, &dy, Some(&mut dx), &mut grads, &mut scratch))
    });
}

fn layers(c: &mut Criterion) {
    bench_layer(
        c,
        "conv lenet5.0 6@5x5 on 1x28x28",
        "conv 6@5x5 pad=2",
        Shape::new(1, 28, 28),
    );
    bench_layer(
        c,
        "conv lenet5.3 16@5x5 on 6x14x14",
        "conv 16@5x5",
        Shape::new(6, 14, 14),
    );
    bench_layer(
        c,
        "conv cnn4.0 32@3x3 on 1x28x28",
        "conv 32@3x3 pad=1",
        Shape::new(1, 28, 28),
    );
    bench_layer(
        c,
        "conv cnn4.2 32@3x3 on 32x28x28",
        "conv 32@3x3 pad=1",
        Shape::new(32, 28, 28),
    );
    bench_layer(
        c,
        "conv cnn4.7 64@3x3 on 64x14x14",
        "conv 64@3x3 pad=1",
        Shape::new(64, 14, 14),
    );
    bench_layer(
        c,
        "maxpool 2 on 32x28x28",
        "maxpool 2",
        Shape::new(32, 28, 28),
    );
    bench_layer(
        c,
        "avgpool 2 on 32x28x28",
        "avgpool 2",
        Shape::new(32, 28, 28),
    );
    bench_layer(c, "relu on 32x28x28", "relu", Shape::new(32, 28, 28));
    bench_layer(c, "dense 128 on 3136", "dense 128", Shape::flat(3136));
}

fn training_step(c: &mut Criterion) {
    for preset in ["lenet5", "cnn4"] {
        let layers = arch::parse(&arch::preset(preset).unwrap(), 10).unwrap();
        let mut network = Network::new(&layers, Shape::new(1, 28, 28)).unwrap();
        network.init_kaiming(&mut seeded(1, Stream::WeightInit));
        let x = random(BATCH, Shape::new(1, 28, 28), 3);
        let labels: Vec<usize> = (0..BATCH).map(|i| i % 10).collect();
        let mut workspace = Workspace::new();
        let mut grads = Gradients::new(&network);
        let mut optimizer = Optimizer::new(OptimizerConfig::sgd(), &network);
        c.bench_function(&format!("{preset} training step, batch {BATCH}"), |b| {
            b.iter(|| {
                train_step(
                    &mut network,
                    (&mut workspace, &mut grads),
                    &mut optimizer,
                    (&x, &labels),
                    StepSettings {
                        learning_rate: 1e-6,
                        ..StepSettings::default()
                    },
                )
                .unwrap();
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    targets = layers, training_step
}
criterion_main!(benches);
