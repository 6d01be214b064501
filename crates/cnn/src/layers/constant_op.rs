//! Arithmetic with a constant tensor, broadcast over the input as NumPy and ONNX broadcast:
//! `x - mean` and `x / std` inside a network, a scale, a shift. The constant is saved with the
//! weights (the buffer `constant`) but not learnt. Its shape is `C x H x W` with each axis the
//! input's size or 1 (`[F]` or `[1]` for features).

use super::{BackwardPass, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{Arithmetic, Cell};
use crate::kernels::for_each_item_run;
use crate::tensor::{Param, Shape, Tensor};
use serde::{Deserialize, Serialize};

/// `x op c`, or with the `Reverse` ones `c op x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `c - x`.
    ReverseSub,
    /// `c / x`.
    ReverseDiv,
}

impl BinaryOp {
    pub const ALL: [BinaryOp; 6] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::ReverseSub,
        BinaryOp::ReverseDiv,
    ];

    /// The name in the notation (PyTorch's `rsub`, and `rdiv` alike).
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::ReverseSub => "rsub",
            BinaryOp::ReverseDiv => "rdiv",
        }
    }

    pub fn formula(self) -> &'static str {
        match self {
            BinaryOp::Add => "x + c",
            BinaryOp::Sub => "x - c",
            BinaryOp::Mul => "x * c",
            BinaryOp::Div => "x / c",
            BinaryOp::ReverseSub => "c - x",
            BinaryOp::ReverseDiv => "c / x",
        }
    }

    /// The ONNX op, and whether the constant is its first operand.
    pub fn onnx(self) -> (&'static str, bool) {
        match self {
            BinaryOp::Add => ("Add", false),
            BinaryOp::Sub => ("Sub", false),
            BinaryOp::Mul => ("Mul", false),
            BinaryOp::Div => ("Div", false),
            BinaryOp::ReverseSub => ("Sub", true),
            BinaryOp::ReverseDiv => ("Div", true),
        }
    }

    #[inline]
    fn apply(self, x: f32, c: f32) -> f32 {
        match self {
            BinaryOp::Add => x + c,
            BinaryOp::Sub => x - c,
            BinaryOp::Mul => x * c,
            BinaryOp::Div => x / c,
            BinaryOp::ReverseSub => c - x,
            BinaryOp::ReverseDiv => c / x,
        }
    }

    /// dy/dx at `x`, `c`, with output `y`.
    #[inline]
    fn derivative(self, x: f32, c: f32, y: f32) -> f32 {
        match self {
            BinaryOp::Add | BinaryOp::Sub => 1.0,
            BinaryOp::ReverseSub => -1.0,
            BinaryOp::Mul => c,
            BinaryOp::Div => 1.0 / c,
            BinaryOp::ReverseDiv => -y / x,
        }
    }
}

#[derive(Debug)]
pub struct ConstantOp {
    op: BinaryOp,
    input: Shape,
    /// The constant's size along each of the input's axes: the input's or 1.
    operand: [usize; 3],
    buffers: [Param; 1],
}

impl ConstantOp {
    pub fn new(op: BinaryOp, operand: [usize; 3], input: Shape) -> Result<Self, String> {
        let sizes = [input.channels, input.height, input.width];
        if operand.iter().zip(sizes).any(|(&o, s)| o != 1 && o != s) {
            return Err(format!(
                "a constant of {} does not broadcast over it",
                Shape::new(operand[0], operand[1], operand[2])
            ));
        }
        // As NumPy broadcasts it: `[F]` over features, `[C, H, W]` over maps.
        let dims = if input.is_flat() {
            vec![operand[0]]
        } else {
            operand.to_vec()
        };
        // Until the model's values replace it, the constant leaves `x` as it is (or, for
        // `c - x`, negates it).
        let mut constant = Param::zeros("constant", dims);
        if matches!(op, BinaryOp::Mul | BinaryOp::Div | BinaryOp::ReverseDiv) {
            constant.value.fill(1.0);
        }
        Ok(ConstantOp {
            op,
            input,
            operand,
            buffers: [constant],
        })
    }

    /// The constant's index for each input position of one channel row `(c, h)`: `(start,
    /// step)` along the width.
    fn row(&self, c: usize, h: usize) -> (usize, usize) {
        let [oc, oh, ow] = self.operand;
        let start = ((c % oc) * oh + h % oh) * ow;
        (start, usize::from(ow > 1))
    }

    /// `f(x, c, slot)` for every value of one sample, `slot` its index.
    #[inline(always)]
    fn each(&self, mut f: impl FnMut(usize, f32)) {
        let constant = &self.buffers[0].value;
        let (height, width) = (self.input.height, self.input.width);
        for c in 0..self.input.channels {
            for h in 0..height {
                let (start, step) = self.row(c, h);
                let base = (c * height + h) * width;
                for w in 0..width {
                    f(base + w, constant[start + w * step]);
                }
            }
        }
    }
}

impl Layer for ConstantOp {
    fn spec(&self) -> LayerSpec {
        LayerSpec::ConstantOp {
            op: self.op,
            operand: self.operand,
        }
    }

    fn output_shape(&self) -> Shape {
        self.input
    }

    fn buffers(&self) -> &[Param] {
        &self.buffers
    }

    fn buffers_mut(&mut self) -> &mut [Param] {
        &mut self.buffers
    }

    fn flops_per_image(&self) -> u64 {
        self.input.len() as u64
    }

    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        let input = inputs[0].sample(0)[cell.offset(self.input)];
        let (start, step) = self.row(cell.channel, cell.y);
        let c = self.buffers[0].value[start + cell.x * step];
        Some(Arithmetic::Function {
            name: self.op.name(),
            formula: self.op.formula(),
            input,
            result: self.op.apply(input, c),
        })
    }

    fn forward(&self, inputs: &[&Tensor], output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        let (input, len) = (inputs[0], self.input.len());
        let constant = &self.buffers[0].value;
        let (height, width) = (self.input.height, self.input.width);
        for_each_item_run(output.data_mut(), len, len, |first, out| {
            for (k, y) in out.chunks_mut(len).enumerate() {
                let x = input.sample(first + k);
                // Row by row: the constant's row, or one value for the whole row.
                for (r, (y, x)) in y.chunks_mut(width).zip(x.chunks(width)).enumerate() {
                    let (start, step) = self.row(r / height, r % height);
                    if step == 1 {
                        let c = &constant[start..start + width];
                        for ((y, &x), &c) in y.iter_mut().zip(x).zip(c) {
                            *y = self.op.apply(x, c);
                        }
                    } else {
                        let c = constant[start];
                        for (y, &x) in y.iter_mut().zip(x) {
                            *y = self.op.apply(x, c);
                        }
                    }
                }
            }
        });
    }

    fn backward(&self, mut pass: BackwardPass<'_, '_>, _: &mut [Vec<f32>], _: &mut LayerScratch) {
        let (input, output, grad_output) = (pass.input(), pass.output, pass.grad_output);
        if let Some(grad_input) = pass.grad_input() {
            for n in 0..input.batch() {
                let (x, y, dy) = (input.sample(n), output.sample(n), grad_output.sample(n));
                let dx = grad_input.sample_mut(n);
                self.each(|i, c| dx[i] = dy[i] * self.op.derivative(x[i], c, y[i]));
            }
        }
    }
}
