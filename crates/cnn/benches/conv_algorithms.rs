//! Every algorithm that computes a layer's forward pass or its input gradient, on every
//! instruction set this CPU has, side by side in one process: what `Conv2dKernel::new` chooses
//! from is measured here. Rounds
//! alternate the algorithms (this machine's speed drifts within minutes), and each line gives
//! the median over rounds and the time relative to im2col's.
//!
//! Run: `cargo bench -p cnn --bench conv_algorithms` (one thread; `THREADS=2` for more,
//! `ROUNDS=9` for more rounds).

use cnn::kernels::conv::{Conv2dKernel, ConvAlgorithm, ConvGeometry, ConvGrads};
use cnn::kernels::simd::Isa;
use cnn::kernels::{Epilogue, Scratch};
use cnn::window::Window2d;
use cnn::{Shape, Tensor};
use std::time::Instant;

/// A square convolution with bias and ReLU, and whether 2x2 max pooling follows.
struct Layer {
    what: &'static str,
    /// `[C, H, W]`.
    input: [usize; 3],
    channels_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    max_pool: bool,
}

const LAYERS: &[Layer] = &[
    Layer {
        what: "lenet5 conv 6@5x5 +relu+pool",
        input: [1, 28, 28],
        channels_out: 6,
        kernel: 5,
        stride: 1,
        padding: 2,
        max_pool: true,
    },
    Layer {
        what: "lenet5 conv 16@5x5 +relu+pool",
        input: [6, 14, 14],
        channels_out: 16,
        kernel: 5,
        stride: 1,
        padding: 0,
        max_pool: true,
    },
    Layer {
        what: "cnn4 conv 32@3x3 +relu",
        input: [1, 28, 28],
        channels_out: 32,
        kernel: 3,
        stride: 1,
        padding: 1,
        max_pool: false,
    },
    Layer {
        what: "colour conv 16@3x3 +relu",
        input: [3, 32, 32],
        channels_out: 16,
        kernel: 3,
        stride: 1,
        padding: 1,
        max_pool: false,
    },
    Layer {
        what: "resnet conv 16@3x3 on 28x28 +relu",
        input: [16, 28, 28],
        channels_out: 16,
        kernel: 3,
        stride: 1,
        padding: 1,
        max_pool: false,
    },
    Layer {
        what: "resnet conv 32@3x3 on 14x14 +relu",
        input: [32, 14, 14],
        channels_out: 32,
        kernel: 3,
        stride: 1,
        padding: 1,
        max_pool: false,
    },
    Layer {
        what: "resnet conv 64@3x3 on 7x7 +relu",
        input: [64, 7, 7],
        channels_out: 64,
        kernel: 3,
        stride: 1,
        padding: 1,
        max_pool: false,
    },
    Layer {
        what: "resnet conv 32@3x3 stride 2 +relu",
        input: [16, 28, 28],
        channels_out: 32,
        kernel: 3,
        stride: 2,
        padding: 1,
        max_pool: false,
    },
    Layer {
        what: "resnet conv 32@1x1 stride 2 +relu",
        input: [16, 28, 28],
        channels_out: 32,
        kernel: 1,
        stride: 2,
        padding: 0,
        max_pool: false,
    },
];

/// What is timed: the forward pass by each algorithm, or the backward pass (weight, bias and
/// input gradients) with the input gradient by each algorithm.
#[derive(Clone, Copy)]
enum Pass {
    Forward,
    Backward,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::Backward => "backward (input gradient by each)",
        }
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn filled(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 + seed * 104729) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn main() {
    let threads = env_or("THREADS", 1);
    let rounds = env_or("ROUNDS", 5);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    println!("{threads} thread(s), median of {rounds} alternating rounds");
    for layer in LAYERS {
        let Layer {
            what,
            input: [c, h, w],
            channels_out: oc,
            kernel: k,
            stride,
            padding: pad,
            max_pool,
        } = *layer;
        let size = |x: usize| (x + 2 * pad - k) / stride + 1;
        let out = Shape::new(oc, size(h), size(w));
        let g = ConvGeometry::new(
            Shape::new(c, h, w),
            out,
            Window2d::new([k, k], [stride, stride], [pad, pad]),
        );
        let weight = filled(oc * g.patch_len(), 1);
        let bias = filled(oc, 2);
        let epilogue = Epilogue {
            bias: Some(&bias),
            accumulate: false,
            relu: true,
            max_pool,
        };
        for batch in [1, 64] {
            let input =
                Tensor::from_vec(batch, g.input, filled(batch * g.input.len(), 3)).expect("input");
            let mut output = Tensor::zeros(batch, epilogue.output_shape(out));
            let grad_output =
                Tensor::from_vec(batch, out, filled(batch * out.len(), 4)).expect("gradient");
            let mut grad_input = Tensor::zeros(batch, g.input);
            let (mut grad_weight, mut grad_bias) = (vec![0.0; weight.len()], vec![0.0; oc]);
            for pass in [Pass::Forward, Pass::Backward] {
                let mut kernels = Vec::new();
                for isa in Isa::supported() {
                    for algorithm in ConvAlgorithm::ALL {
                        let kernel = match pass {
                            Pass::Forward => Conv2dKernel::with_algorithms(
                                g,
                                isa,
                                algorithm,
                                ConvAlgorithm::Im2col,
                            ),
                            Pass::Backward => Conv2dKernel::with_algorithms(
                                g,
                                isa,
                                ConvAlgorithm::Im2col,
                                algorithm,
                            ),
                        };
                        kernels.extend(kernel.map(|kernel| (isa, algorithm, kernel, Vec::new())));
                    }
                }
                pool.install(|| {
                    let mut scratch = Scratch::default();
                    let mut run = |kernel: &Conv2dKernel| match pass {
                        Pass::Forward => {
                            kernel.forward(&input, &weight, epilogue, &mut output, &mut scratch)
                        }
                        Pass::Backward => kernel.backward(
                            &input,
                            &weight,
                            &grad_output,
                            ConvGrads {
                                input: Some(&mut grad_input),
                                weight: &mut grad_weight,
                                bias: Some(&mut grad_bias),
                            },
                            &mut scratch,
                        ),
                    };
                    for _ in 0..rounds {
                        for (_, _, kernel, times) in kernels.iter_mut() {
                            run(kernel);
                            // Calls for at least 20 ms.
                            let (start, mut calls) = (Instant::now(), 0);
                            while calls == 0 || start.elapsed().as_secs_f64() < 0.02 {
                                run(kernel);
                                calls += 1;
                            }
                            times.push(start.elapsed().as_secs_f64() * 1e6 / calls as f64);
                        }
                    }
                });
                let median = |times: &mut Vec<f64>| {
                    times.sort_by(f64::total_cmp);
                    times[times.len() / 2]
                };
                let medians: Vec<(Isa, ConvAlgorithm, f64)> = kernels
                    .iter_mut()
                    .map(|(isa, algorithm, _, times)| (*isa, *algorithm, median(times)))
                    .collect();
                println!("{what}, batch {batch}, {}:", pass.name());
                for &(isa, algorithm, us) in &medians {
                    let im2col = medians
                        .iter()
                        .find(|m| m.0 == isa && m.1 == ConvAlgorithm::Im2col)
                        .map_or(f64::NAN, |m| m.2);
                    println!(
                        "  {:<8} {:<14} {us:>9.1} us  {:.2}x im2col",
                        isa.name(),
                        algorithm.name(),
                        us / im2col
                    );
                }
            }
        }
    }
}
