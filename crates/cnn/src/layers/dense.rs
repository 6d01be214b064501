//! Fully connected layer: scores each class (or hidden unit) from every input value.

use super::{BackwardPass, DenseConfig, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{weighted_sum, Arithmetic, Cell, Window};
use crate::kernels::gemm::{matmul, MatRef, Threading};
use crate::limits;
use crate::tensor::{Param, Shape, Tensor};

/// Parameters as PyTorch's `nn.Linear`: `weight` `[out, in]`, `bias` `[out]`.
#[derive(Debug)]
pub struct Dense {
    config: DenseConfig,
    input: Shape,
    params: Vec<Param>,
}

impl Dense {
    pub fn new(config: DenseConfig, input: Shape) -> Result<Self, String> {
        if !input.is_flat() {
            return Err(format!(
                "a dense layer takes a flat input of {} values: put `flatten` before it",
                input.len()
            ));
        }
        if config.out_features == 0 {
            return Err("a dense layer needs at least one output".into());
        }
        limits::image_values(Shape::flat(config.out_features))?;
        let weight = vec![config.out_features, input.len()];
        limits::parameter_values(&weight)?;
        let mut params = vec![Param::zeros("weight", weight)];
        if config.bias {
            params.push(Param::zeros("bias", vec![config.out_features]));
        }
        Ok(Dense {
            config,
            input,
            params,
        })
    }

    fn weight(&self) -> MatRef<'_> {
        MatRef::row_major(
            &self.params[0].value,
            self.config.out_features,
            self.input.len(),
        )
    }
}

impl Layer for Dense {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Dense(self.config)
    }

    fn output_shape(&self) -> Shape {
        Shape::flat(self.config.out_features)
    }

    fn params(&self) -> &[Param] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }

    fn kernel(&self) -> String {
        format!("gemm ({})", crate::kernels::gemm::isa())
    }

    fn flops_per_image(&self) -> u64 {
        (2 * self.input.len() * self.config.out_features) as u64
    }

    /// `[N, in]` to `[N, out]`: `y = x W^T + b`.
    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        let features = self.input.len();
        let row = cell.channel * features;
        let window = Window::gather(
            (0, inputs[0]),
            None,
            (1, features),
            (0..features)
                .map(|i| Some(Cell::at(i, self.input)))
                .collect(),
            self.params[0].value[row..row + features].to_vec(),
        );
        let bias = self.params.get(1).map(|b| b.value[cell.channel]);
        Some(weighted_sum(vec![window], bias))
    }

    fn forward(&self, inputs: &[&Tensor], output: &mut Tensor, _: Mode, _: &mut LayerScratch) {
        let input = inputs[0];
        let (batch, features_in) = (input.batch(), self.input.len());
        let out = output.data_mut();
        match self.params.get(1) {
            Some(bias) => out
                .chunks_mut(self.config.out_features)
                .for_each(|row| row.copy_from_slice(&bias.value)),
            None => out.fill(0.0),
        }
        let x = MatRef::row_major(input.data(), batch, features_in);
        matmul(out, x, self.weight().t(), true, Threading::Parallel);
    }

    fn backward(
        &self,
        mut pass: BackwardPass<'_, '_>,
        param_grads: &mut [Vec<f32>],
        _: &mut LayerScratch,
    ) {
        let (input, grad_output) = (pass.input(), pass.grad_output);
        let (batch, features_in) = (input.batch(), self.input.len());
        let dy = MatRef::row_major(grad_output.data(), batch, self.config.out_features);
        let x = MatRef::row_major(input.data(), batch, features_in);
        // dW[out, in] += dY^T[out, N] x X[N, in]
        matmul(&mut param_grads[0], dy.t(), x, true, Threading::Parallel);
        if let Some(grad_bias) = param_grads.get_mut(1) {
            for row in grad_output.data().chunks(self.config.out_features) {
                for (b, &g) in grad_bias.iter_mut().zip(row) {
                    *b += g;
                }
            }
        }
        // dX[N, in] = dY[N, out] x W[out, in]
        if let Some(grad_input) = pass.grad_input() {
            matmul(
                grad_input.data_mut(),
                dy,
                self.weight(),
                false,
                Threading::Parallel,
            );
        }
    }
}
