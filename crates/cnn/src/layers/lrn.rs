//! Local response normalisation across channels (AlexNet, GoogLeNet; ONNX's `LRN`, PyTorch's
//! `nn.LocalResponseNorm`): `y = x / (k + alpha / size * sum of x^2 over nearby channels)^beta`,
//! the channels `c - (size - 1) / 2` to `c + size / 2` (rounded down: ONNX's window; PyTorch's
//! is the same for odd sizes).

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{Arithmetic, Cell};
use crate::tensor::{Shape, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrnConfig {
    pub size: usize,
    pub alpha: f32,
    pub beta: f32,
    /// PyTorch's `k`, ONNX's `bias`.
    pub bias: f32,
}

impl LrnConfig {
    /// PyTorch's defaults for a window of `size` channels.
    pub fn new(size: usize) -> Self {
        LrnConfig {
            size,
            alpha: 1e-4,
            beta: 0.75,
            bias: 1.0,
        }
    }

    /// Channels in the window before and after its centre.
    pub fn reach(&self) -> (usize, usize) {
        ((self.size - 1) / 2, self.size / 2)
    }
}

#[derive(Debug)]
pub struct Lrn {
    config: LrnConfig,
    shape: Shape,
}

impl Lrn {
    pub fn new(config: LrnConfig, shape: Shape) -> Result<Self, String> {
        let LrnConfig {
            size,
            alpha,
            beta,
            bias,
        } = config;
        if size == 0 || size > crate::limits::MAX_WINDOW {
            return Err(format!("a window of {size} channels"));
        }
        if !(alpha.is_finite() && beta.is_finite() && bias.is_finite()) {
            return Err("alpha, beta and k must be finite".into());
        }
        Ok(Lrn { config, shape })
    }

    /// The channels whose window holds channel `c`, or which channel `c`'s window holds (the
    /// same set turned round): `c - before ..= c + after` within the maps.
    fn window(&self, c: usize, before: usize, after: usize) -> std::ops::Range<usize> {
        c.saturating_sub(before)..(c + after + 1).min(self.shape.channels)
    }

    /// `k + alpha / size * sum x^2` for every value of one sample.
    fn scales(&self, x: &[f32], scale: &mut [f32]) {
        let plane = self.shape.plane();
        let (before, after) = self.config.reach();
        let factor = self.config.alpha / self.config.size as f32;
        for c in 0..self.shape.channels {
            let out = &mut scale[c * plane..(c + 1) * plane];
            out.fill(0.0);
            for near in self.window(c, before, after) {
                for (s, &v) in out.iter_mut().zip(&x[near * plane..(near + 1) * plane]) {
                    *s += v * v;
                }
            }
            out.iter_mut()
                .for_each(|s| *s = self.config.bias + factor * *s);
        }
    }
}

impl Layer for Lrn {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Lrn(self.config)
    }

    fn output_shape(&self) -> Shape {
        self.shape
    }

    fn flops_per_image(&self) -> u64 {
        (self.shape.len() * (2 * self.config.size + 4)) as u64
    }

    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        let x = inputs[0].sample(0);
        let mut scale = vec![0.0; x.len()];
        self.scales(x, &mut scale);
        let offset = cell.offset(self.shape);
        Some(Arithmetic::Function {
            name: "lrn",
            formula: "x / (k + alpha / size * sum of x^2 over nearby channels)^beta",
            input: x[offset],
            result: x[offset] / scale[offset].powf(self.config.beta),
        })
    }

    fn forward(&self, inputs: &[&Tensor], output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        let input = inputs[0];
        let mut scale = vec![0.0; self.shape.len()];
        for n in 0..input.batch() {
            let (x, y) = (input.sample(n), output.sample_mut(n));
            self.scales(x, &mut scale);
            for ((y, &x), &s) in y.iter_mut().zip(x).zip(&scale) {
                *y = x / s.powf(self.config.beta);
            }
        }
    }

    /// `dx_j = dy_j s_j^-beta - 2 alpha beta / size * x_j * sum over the windows i holding j of
    /// dy_i x_i s_i^(-beta - 1)`.
    fn backward(&self, mut pass: BackwardPass<'_, '_>, _: &mut [Vec<f32>], _: &mut LayerScratch) {
        let (input, grad_output) = (pass.input(), pass.grad_output);
        let Some(grad_input) = pass.grad_input() else {
            return;
        };
        let LrnConfig {
            size, alpha, beta, ..
        } = self.config;
        let plane = self.shape.plane();
        let (before, after) = self.config.reach();
        let factor = 2.0 * alpha * beta / size as f32;
        let mut scale = vec![0.0; self.shape.len()];
        let mut weighted = vec![0.0; self.shape.len()];
        for n in 0..input.batch() {
            let (x, dy) = (input.sample(n), grad_output.sample(n));
            self.scales(x, &mut scale);
            for (((w, &dy), &x), &s) in weighted.iter_mut().zip(dy).zip(x).zip(&scale) {
                *w = dy * x * s.powf(-beta - 1.0);
            }
            let dx = grad_input.sample_mut(n);
            for c in 0..self.shape.channels {
                let range = c * plane..(c + 1) * plane;
                for (k, j) in range.clone().enumerate() {
                    dx[j] = dy[j] * scale[j].powf(-beta);
                    // Channel c lies in the windows of channels c - after ..= c + before.
                    let sum: f32 = self
                        .window(c, after, before)
                        .map(|i| weighted[i * plane + k])
                        .sum();
                    dx[j] -= factor * x[j] * sum;
                }
            }
        }
    }
}
