//! 2-D convolution: the seed's features sliding over the image.

use super::{BackwardPass, Conv2dConfig, Fusion, Layer, LayerScratch, LayerSpec, Mode};
use crate::arithmetic::{weighted_sum, Arithmetic, Cell, Window};
use crate::kernels::conv::{Conv2dKernel, ConvGeometry, ConvGrads};
use crate::kernels::simd::Isa;
use crate::kernels::Epilogue;
use crate::limits;
use crate::tensor::{Param, Shape, Tensor};
use crate::window::Window2d;

/// Parameters as PyTorch's `nn.Conv2d`: `weight` `[OC, C / groups, KH, KW]`, `bias` `[OC]`.
#[derive(Debug)]
pub struct Conv2d {
    config: Conv2dConfig,
    params: Vec<Param>,
    /// Shapes, algorithms and instruction set, and what the fast algorithms derive from the
    /// weights (told whenever they may change).
    kernel: Conv2dKernel,
}

impl Conv2d {
    pub fn new(config: Conv2dConfig, input: Shape, isa: Isa) -> Result<Self, String> {
        let window = Window2d::new(config.kernel, config.stride, config.padding);
        if config.out_channels == 0 {
            return Err("a convolution needs at least one output channel".into());
        }
        window.check()?;
        if config
            .dilation
            .iter()
            .any(|&d| d == 0 || d > limits::MAX_WINDOW)
        {
            return Err(format!(
                "the dilation must be from 1 to {}",
                limits::MAX_WINDOW
            ));
        }
        let groups = config.groups;
        if groups == 0
            || !input.channels.is_multiple_of(groups)
            || !config.out_channels.is_multiple_of(groups)
        {
            return Err(format!(
                "{groups} groups must divide both the {} input and the {} output channels",
                input.channels, config.out_channels
            ));
        }
        // A dilated kernel covers `d (k - 1) + 1` pixels: the window that must fit.
        let extent = [0, 1].map(|axis| config.dilation[axis] * (config.kernel[axis] - 1) + 1);
        let covered = Window2d::new(extent, config.stride, config.padding);
        let [out_height, out_width] = covered
            .output_size([input.height, input.width])
            .ok_or_else(|| {
                format!(
                    "a {}x{} window with padding {}x{} needs an input of at least {}x{} pixels",
                    extent[0],
                    extent[1],
                    window.padding[0],
                    window.padding[1],
                    extent[0].saturating_sub(2 * window.padding[0]).max(1),
                    extent[1].saturating_sub(2 * window.padding[1]).max(1),
                )
            })?;
        let output = Shape::new(config.out_channels, out_height, out_width);
        // Sizes checked before anything is allocated for them.
        limits::image_values(output)?;
        let weight = [
            config.out_channels,
            input.channels / groups,
            config.kernel[0],
            config.kernel[1],
        ];
        limits::parameter_values(&weight)?;
        limits::column_values(weight[1..].iter().product(), output.plane())?;
        let mut params = vec![Param::zeros("weight", weight.to_vec())];
        if config.bias {
            params.push(Param::zeros("bias", vec![config.out_channels]));
        }
        let geometry = ConvGeometry {
            dilation: config.dilation,
            groups,
            ..ConvGeometry::new(input, output, window)
        };
        Ok(Conv2d {
            config,
            params,
            kernel: Conv2dKernel::new(geometry, isa),
        })
    }

    pub fn geometry(&self) -> &ConvGeometry {
        self.kernel.geometry()
    }

    /// How this convolution is computed.
    pub fn kernel(&self) -> &Conv2dKernel {
        &self.kernel
    }

    fn bias(&self) -> Option<&[f32]> {
        self.params.get(1).map(|p| &p.value[..])
    }

    /// The windows of output `cell`: one per input channel of its group, each with the kernel
    /// slice of output channel `cell.channel` for that input channel.
    fn windows(&self, input: &Tensor, cell: Cell) -> Vec<Window> {
        let shape = input.shape();
        let c = &self.config;
        let group_inputs = shape.channels / c.groups;
        let group = cell.channel / (c.out_channels / c.groups);
        let [kh, kw] = c.kernel;
        let weights = &self.params[0].value;
        let at = |out: usize, k: usize, axis: usize, len: usize| {
            let i =
                (out * c.stride[axis] + k * c.dilation[axis]) as isize - c.padding[axis] as isize;
            (0..len as isize).contains(&i).then_some(i as usize)
        };
        (0..group_inputs)
            .map(|k| {
                let channel = group * group_inputs + k;
                let mut cells = Vec::with_capacity(kh * kw);
                for ky in 0..kh {
                    for kx in 0..kw {
                        let y = at(cell.y, ky, 0, shape.height);
                        let x = at(cell.x, kx, 1, shape.width);
                        cells.push(y.zip(x).map(|(y, x)| Cell { channel, y, x }));
                    }
                }
                let slice = (cell.channel * group_inputs + k) * kh * kw;
                let kernel = weights[slice..slice + kh * kw].to_vec();
                Window::gather((0, input), Some(channel), (kh, kw), cells, kernel)
            })
            .collect()
    }

    fn forward_with(
        &self,
        input: &Tensor,
        output: &mut Tensor,
        fused: Fusion,
        scratch: &mut LayerScratch,
    ) {
        self.kernel.forward(
            input,
            &self.params[0].value,
            Epilogue {
                bias: self.bias(),
                accumulate: fused.accumulate,
                relu: fused.relu,
                max_pool: fused.max_pool,
            },
            output,
            &mut scratch.kernel,
        );
    }
}

impl Layer for Conv2d {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Conv2d(self.config)
    }

    fn output_shape(&self) -> Shape {
        self.geometry().output
    }

    fn params(&self) -> &[Param] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [Param] {
        self.kernel.weights_changed();
        &mut self.params
    }

    /// `avx2 winograd`, or `avx2 direct (input gradient: im2col)` when the input gradient
    /// goes another way.
    fn kernel(&self) -> String {
        let (forward, backward) = (
            self.kernel.forward_algorithm(),
            self.kernel.input_gradient_algorithm(),
        );
        let mut name = format!("{} {}", self.kernel.isa(), forward.name());
        if backward != forward {
            name += &format!(" (input gradient: {})", backward.name());
        }
        name
    }

    fn flops_per_image(&self) -> u64 {
        let g = self.geometry();
        (2 * g.patch_len() * g.output.len()) as u64
    }

    /// `[N, C, H, W]` to `[N, OC, OH, OW]`.
    fn arithmetic(&self, inputs: &[&Tensor], cell: Cell) -> Option<Arithmetic> {
        let windows = self.windows(inputs[0], cell);
        let bias = self.bias().map(|b| b[cell.channel]);
        Some(weighted_sum(windows, bias))
    }

    fn forward(
        &self,
        inputs: &[&Tensor],
        output: &mut Tensor,
        _: Mode,
        scratch: &mut LayerScratch,
    ) {
        self.forward_with(inputs[0], output, Fusion::default(), scratch);
    }

    fn forward_fused(
        &self,
        inputs: &[&Tensor],
        output: &mut Tensor,
        _: Mode,
        fused: Fusion,
        scratch: &mut LayerScratch,
    ) -> bool {
        self.forward_with(inputs[0], output, fused, scratch);
        true
    }

    fn trains_with_relu(&self) -> bool {
        true
    }

    /// After a fused ReLU, the output gradient gated by the output once, for the weight, bias
    /// and input gradients that each read it.
    fn backward(
        &self,
        mut pass: BackwardPass<'_, '_>,
        param_grads: &mut [Vec<f32>],
        scratch: &mut LayerScratch,
    ) {
        let input = pass.input();
        let grad_output = if pass.relu {
            let gated = &mut scratch.gated;
            gated.reshape(pass.grad_output.batch(), pass.grad_output.shape());
            crate::kernels::relu_gradient(
                pass.grad_output.data(),
                pass.output.data(),
                gated.data_mut(),
            );
            &scratch.gated
        } else {
            pass.grad_output
        };
        let (grad_weight, rest) = param_grads
            .split_first_mut()
            .expect("a convolution has a weight");
        self.kernel.backward(
            input,
            &self.params[0].value,
            grad_output,
            ConvGrads {
                input: pass.grad_input(),
                weight: grad_weight,
                bias: rest.first_mut().map(|g| &mut g[..]),
            },
            &mut scratch.kernel,
        );
    }
}
