//! The product of two values, broadcast as NumPy broadcasts (each axis of the same size or 1 in
//! one of them): a squeeze-and-excitation block scales each channel of its maps by a gate
//! computed from them (`x * sigmoid(fc(gap(x)))`, `[C, H, W]` times `[C, 1, 1]`).

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::kernels::for_each_item_run;
use crate::tensor::{Shape, Tensor};

#[derive(Debug)]
pub struct Multiply {
    inputs: [Shape; 2],
    output: Shape,
}

fn sizes(s: Shape) -> [usize; 3] {
    [s.channels, s.height, s.width]
}

impl Multiply {
    pub fn new(inputs: &[Shape]) -> Result<Self, String> {
        let &[a, b] = inputs else {
            return Err(format!("a product takes two inputs, not {}", inputs.len()));
        };
        let mut out = [0; 3];
        for (k, (x, y)) in sizes(a).into_iter().zip(sizes(b)).enumerate() {
            out[k] = match (x, y) {
                _ if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => return Err(format!("{a} and {b} do not broadcast")),
            };
        }
        Ok(Multiply {
            inputs: [a, b],
            output: Shape::new(out[0], out[1], out[2]),
        })
    }

    /// For every output position of one sample, in order, the index read from each input.
    fn each(&self, mut f: impl FnMut(usize, usize, usize)) {
        let [c, h, w] = sizes(self.output);
        let strides = self.inputs.map(|s| {
            let [sc, sh, sw] = sizes(s);
            // A broadcast axis does not move through the input.
            [
                if sc > 1 { sh * sw } else { 0 },
                if sh > 1 { sw } else { 0 },
                usize::from(sw > 1),
            ]
        });
        let mut out = 0;
        for ci in 0..c {
            for hi in 0..h {
                for wi in 0..w {
                    let at = |s: [usize; 3]| ci * s[0] + hi * s[1] + wi * s[2];
                    f(out, at(strides[0]), at(strides[1]));
                    out += 1;
                }
            }
        }
    }
}

impl Layer for Multiply {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Mul
    }

    fn output_shape(&self) -> Shape {
        self.output
    }

    fn flops_per_image(&self) -> u64 {
        self.output.len() as u64
    }

    fn forward(&self, inputs: &[&Tensor], output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        let len = self.output.len();
        for_each_item_run(output.data_mut(), len, len, |first, out| {
            for (n, y) in out.chunks_mut(len).enumerate() {
                let (a, b) = (inputs[0].sample(first + n), inputs[1].sample(first + n));
                self.each(|i, j, k| y[i] = a[j] * b[k]);
            }
        });
    }

    fn backward(&self, pass: BackwardPass<'_, '_>, _: &mut [Vec<f32>], _: &mut LayerScratch) {
        let BackwardPass {
            inputs,
            grad_output,
            grad_inputs,
            ..
        } = pass;
        // Each input's gradient: the other input times dy, summed over what was broadcast.
        for (which, grad) in grad_inputs.iter_mut().enumerate() {
            let Some(grad) = grad.as_deref_mut() else {
                continue;
            };
            grad.data_mut().fill(0.0);
            let other = inputs[1 - which];
            for n in 0..grad_output.batch() {
                let (dy, other) = (grad_output.sample(n), other.sample(n));
                let dx = grad.sample_mut(n);
                self.each(|i, j, k| {
                    let (mine, theirs) = if which == 0 { (j, k) } else { (k, j) };
                    dx[mine] += dy[i] * other[theirs];
                });
            }
        }
    }
}
