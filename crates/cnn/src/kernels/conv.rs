//! Convolution: which algorithm computes each pass ([`Conv2dKernel`]), and the general one,
//! lowered to matrix products (im2col): each image is unfolded into a matrix whose columns are
//! its windows, so the whole convolution is `weights x columns`, one SGEMM. The batch is split
//! into one chunk per thread; each chunk reuses its own column buffer.

use super::direct;
use super::gemm::{matmul, MatRef, Threading};
use super::packed::{self, Starts};
use super::simd::{Isa, Kernel, Simd};
use super::team::for_each_chunk_pair_mut;
use super::weight_gradient;
use super::winograd;
use super::{batch_chunks, depthwise, scratch_prefix, Epilogue, Scratch};
use crate::tensor::{Shape, Tensor};
use crate::window::Window2d;
use std::sync::OnceLock;

/// Shapes of one convolution: `input` is `C x H x W`, `output` is `OC x OH x OW`. Output
/// channel group `g` of `groups` reads input channel group `g` only (depthwise when `groups` is
/// the channel count); the kernel's taps are `dilation` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub input: Shape,
    pub output: Shape,
    pub window: Window2d,
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl ConvGeometry {
    /// An ungrouped, undilated convolution.
    pub fn new(input: Shape, output: Shape, window: Window2d) -> Self {
        ConvGeometry {
            input,
            output,
            window,
            dilation: [1, 1],
            groups: 1,
        }
    }

    /// Rows of the column matrix: `C / groups * KH * KW`, one per weight of an output channel.
    pub fn patch_len(&self) -> usize {
        self.input.channels / self.groups.max(1) * self.window.kernel[0] * self.window.kernel[1]
    }

    /// Columns of the column matrix: `OH * OW`, one per window position.
    pub fn positions(&self) -> usize {
        self.output.plane()
    }

    /// Neither grouped nor dilated: what every algorithm but im2col and the depthwise kernel
    /// requires.
    pub fn is_plain(&self) -> bool {
        self.groups == 1 && self.dilation == [1, 1]
    }

    /// The convolution of one group of channels (`C / groups` to `OC / groups`).
    pub fn group(&self) -> ConvGeometry {
        let groups = self.groups.max(1);
        ConvGeometry {
            input: Shape::new(
                self.input.channels / groups,
                self.input.height,
                self.input.width,
            ),
            output: Shape::new(
                self.output.channels / groups,
                self.output.height,
                self.output.width,
            ),
            groups: 1,
            ..*self
        }
    }

    /// The convolution that carries output gradients back to the input: same kernel size,
    /// dilation and groups, input and output swapped, padding `D * (K - 1) - P`. It exists
    /// for stride 1 with that padding non-negative; a strided convolution's input gradient is
    /// not a convolution of the output gradient.
    pub fn transposed(&self) -> Option<ConvGeometry> {
        let w = &self.window;
        let reach = |axis: usize| self.dilation[axis] * (w.kernel[axis] - 1);
        let padding = [
            reach(0).checked_sub(w.padding[0])?,
            reach(1).checked_sub(w.padding[1])?,
        ];
        (w.stride == [1, 1]).then(|| ConvGeometry {
            input: self.output,
            output: self.input,
            window: Window2d::new(w.kernel, w.stride, padding),
            ..*self
        })
    }
}

/// The weights of [`ConvGeometry::transposed`] for a plain convolution: `W'[c, oc, i, j] =
/// W[oc, c, KH - 1 - i, KW - 1 - j]` (input and output channels swapped, each kernel flipped,
/// which reverses the order of its taps).
pub fn flipped_transposed(g: &ConvGeometry, weight: &[f32]) -> Vec<f32> {
    let (channels, channels_out) = (g.input.channels, g.output.channels);
    let taps = g.window.kernel[0] * g.window.kernel[1];
    assert_eq!(weight.len(), channels_out * channels * taps);
    let mut flipped = vec![0.0; weight.len()];
    for (c, out) in flipped.chunks_exact_mut(channels_out * taps).enumerate() {
        for (oc, kernel) in out.chunks_exact_mut(taps).enumerate() {
            let source = &weight[(oc * channels + c) * taps..][..taps];
            for (to, &from) in kernel.iter_mut().zip(source.iter().rev()) {
                *to = from;
            }
        }
    }
    flipped
}

/// How a convolution's forward pass, or its input gradient, is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConvAlgorithm {
    /// Stride 1, few input channels (a first layer): [`direct`].
    Direct,
    /// 3x3, stride 1, at least 8 input channels: [`winograd`].
    Winograd,
    /// Stride 1: [`packed::product`] of the weights and the padded image read in place, each
    /// kernel tap a shifted view of it, over the padded width (the columns past the output
    /// width are computed and dropped); no column matrix.
    ImplicitGemm,
    /// One group per channel, stride 1: [`depthwise`].
    Depthwise,
    /// Other grouped convolutions: each group's channels gathered into a batch of their own
    /// and computed by the group's own kernel (chosen for its shape), then scattered back.
    Grouped,
    /// Any ungrouped convolution (dilated too): im2col and SGEMM.
    Im2col,
}

impl ConvAlgorithm {
    /// Every algorithm, fastest first where several apply.
    pub const ALL: [ConvAlgorithm; 6] = [
        ConvAlgorithm::Direct,
        ConvAlgorithm::Winograd,
        ConvAlgorithm::ImplicitGemm,
        ConvAlgorithm::Depthwise,
        ConvAlgorithm::Grouped,
        ConvAlgorithm::Im2col,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ConvAlgorithm::Direct => "direct",
            ConvAlgorithm::Winograd => "winograd",
            ConvAlgorithm::ImplicitGemm => "implicit-gemm",
            ConvAlgorithm::Depthwise => "depthwise",
            ConvAlgorithm::Grouped => "grouped",
            ConvAlgorithm::Im2col => "im2col",
        }
    }

    /// Whether this algorithm computes the forward pass of `g`.
    pub fn supports_forward(self, g: &ConvGeometry) -> bool {
        match self {
            ConvAlgorithm::Direct => g.is_plain() && direct::supports(g),
            ConvAlgorithm::Winograd => g.is_plain() && winograd::supports(g),
            ConvAlgorithm::ImplicitGemm => g.is_plain(),
            ConvAlgorithm::Depthwise => depthwise::supports(g),
            ConvAlgorithm::Grouped => g.groups > 1,
            ConvAlgorithm::Im2col => g.groups == 1,
        }
    }

    /// Whether this algorithm computes the input gradient of `g` (the weight gradient is
    /// im2col's, or for a depthwise or grouped convolution, theirs).
    pub fn supports_input_gradient(self, g: &ConvGeometry) -> bool {
        match self {
            ConvAlgorithm::Direct => false,
            ConvAlgorithm::Winograd => g.is_plain() && winograd::supports_input_gradient(g),
            // As the forward pass of [`ConvGeometry::transposed`].
            ConvAlgorithm::ImplicitGemm => g.is_plain() && g.transposed().is_some(),
            ConvAlgorithm::Depthwise | ConvAlgorithm::Grouped | ConvAlgorithm::Im2col => {
                self.supports_forward(g)
            }
        }
    }
}

/// One convolution as it will be computed: its shapes, the algorithm of each pass and the
/// instruction set, chosen once when the layer is built, and what the fast algorithms derive
/// from the weights (Winograd's transformed weights, the direct kernel's blocked copy...),
/// computed once per set of weights and shared by every pass and thread until
/// [`Conv2dKernel::weights_changed`].
#[derive(Debug)]
pub struct Conv2dKernel {
    geometry: ConvGeometry,
    isa: Isa,
    forward: ConvAlgorithm,
    input_gradient: ConvAlgorithm,
    /// The padded image's layout, when the forward pass is an implicit GEMM.
    implicit_gemm: Option<ImplicitGemm>,
    /// The kernel of the input gradient when that is the forward pass of
    /// [`ConvGeometry::transposed`] (Winograd or the implicit GEMM), run with the weights
    /// flipped and transposed.
    transposed: Option<Box<Conv2dKernel>>,
    /// One kernel per group, for [`ConvAlgorithm::Grouped`].
    groups: Vec<Conv2dKernel>,
    derived: DerivedWeights,
}

#[derive(Debug, Default)]
struct DerivedWeights {
    winograd: OnceLock<Vec<f32>>,
    direct_blocks: OnceLock<Vec<f32>>,
    implicit_gemm: OnceLock<Vec<f32>>,
    /// For [`Conv2dKernel::transposed`]: see [`flipped_transposed`].
    flipped_transposed: OnceLock<Vec<f32>>,
    depthwise_flipped: OnceLock<Vec<f32>>,
}

impl Conv2dKernel {
    /// The fastest algorithms for `geometry`, with `isa`'s instructions. Forward: the direct
    /// kernel where [`direct::preferred`] (with AVX-512), else Winograd where it applies, else
    /// an implicit GEMM where [`implicit_gemm_preferred`] (with AVX-512 or AVX2), else im2col; a
    /// grouped convolution depthwise where it applies, else group by group. Input gradient:
    /// Winograd where it applies, else the implicit GEMM where
    /// [`implicit_gemm_input_gradient_preferred`] (with AVX2), else im2col, depthwise or group
    /// by group.
    pub fn new(geometry: ConvGeometry, isa: Isa) -> Self {
        let g = &geometry;
        let (forward, input_gradient) = if g.groups > 1 {
            let algorithm = if depthwise::supports(g) {
                ConvAlgorithm::Depthwise
            } else {
                ConvAlgorithm::Grouped
            };
            (algorithm, algorithm)
        } else {
            let forward = if g.is_plain() && direct::preferred(isa, g) {
                ConvAlgorithm::Direct
            } else if ConvAlgorithm::Winograd.supports_forward(g) {
                ConvAlgorithm::Winograd
            } else if g.is_plain() && implicit_gemm_preferred(isa, g) {
                ConvAlgorithm::ImplicitGemm
            } else {
                ConvAlgorithm::Im2col
            };
            let input_gradient = if ConvAlgorithm::Winograd.supports_input_gradient(g) {
                ConvAlgorithm::Winograd
            } else if implicit_gemm_input_gradient_preferred(isa, g) {
                ConvAlgorithm::ImplicitGemm
            } else {
                ConvAlgorithm::Im2col
            };
            (forward, input_gradient)
        };
        Conv2dKernel::build(geometry, isa, forward, input_gradient)
    }

    /// Given algorithms (for tests and benchmarks), or `None` when one does not apply. A
    /// grouped convolution takes the same one for both passes.
    pub fn with_algorithms(
        geometry: ConvGeometry,
        isa: Isa,
        forward: ConvAlgorithm,
        input_gradient: ConvAlgorithm,
    ) -> Option<Self> {
        let grouped =
            |a: ConvAlgorithm| matches!(a, ConvAlgorithm::Grouped | ConvAlgorithm::Depthwise);
        (forward.supports_forward(&geometry)
            && input_gradient.supports_input_gradient(&geometry)
            && (grouped(forward) || grouped(input_gradient)) <= (forward == input_gradient))
            .then(|| Conv2dKernel::build(geometry, isa, forward, input_gradient))
    }

    fn build(
        geometry: ConvGeometry,
        isa: Isa,
        forward: ConvAlgorithm,
        input_gradient: ConvAlgorithm,
    ) -> Self {
        let groups = if forward == ConvAlgorithm::Grouped {
            (0..geometry.groups)
                .map(|_| Conv2dKernel::new(geometry.group(), isa))
                .collect()
        } else {
            Vec::new()
        };
        Conv2dKernel {
            geometry,
            isa,
            forward,
            input_gradient,
            implicit_gemm: (forward == ConvAlgorithm::ImplicitGemm)
                .then(|| ImplicitGemm::of(&geometry)),
            transposed: geometry
                .transposed()
                .filter(|_| {
                    matches!(
                        input_gradient,
                        ConvAlgorithm::Winograd | ConvAlgorithm::ImplicitGemm
                    )
                })
                .map(|transposed| {
                    Box::new(Conv2dKernel::build(
                        transposed,
                        isa,
                        input_gradient,
                        ConvAlgorithm::Im2col,
                    ))
                }),
            groups,
            derived: DerivedWeights::default(),
        }
    }

    pub fn geometry(&self) -> &ConvGeometry {
        &self.geometry
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn forward_algorithm(&self) -> ConvAlgorithm {
        self.forward
    }

    pub fn input_gradient_algorithm(&self) -> ConvAlgorithm {
        self.input_gradient
    }

    /// Forgets what was derived from the weights: call whenever they may have changed.
    pub fn weights_changed(&mut self) {
        self.derived = DerivedWeights::default();
        self.groups
            .iter_mut()
            .chain(self.transposed.as_deref_mut())
            .for_each(Conv2dKernel::weights_changed);
    }

    /// `output[n] = weight x input[n]` then the epilogue (bias, ReLU, 2x2 max pooling), for
    /// every image.
    ///
    /// Shapes: `input` `[N, C, H, W]`, `weight` `[OC, C / groups * KH * KW]` (PyTorch's
    /// `[OC, C / groups, KH, KW]`), `bias` `[OC]`, `output` `[N, OC, OH, OW]` (the epilogue's
    /// output shape). `scratch` grows once and is reused.
    pub fn forward(
        &self,
        input: &Tensor,
        weight: &[f32],
        epilogue: Epilogue<'_>,
        output: &mut Tensor,
        scratch: &mut Scratch,
    ) {
        let (g, batch) = (&self.geometry, input.batch());
        match self.forward {
            ConvAlgorithm::Direct => {
                let blocks = self
                    .derived
                    .direct_blocks
                    .get_or_init(|| direct::block_weights(self.isa, g, weight));
                direct::conv_forward(
                    self.isa,
                    g,
                    batch,
                    input.data(),
                    blocks,
                    epilogue,
                    output.data_mut(),
                );
            }
            ConvAlgorithm::Winograd => winograd::conv3x3_forward(
                self.isa,
                g,
                batch,
                input.data(),
                self.derived.winograd.get_or_init(|| {
                    winograd::transform_weights(
                        self.isa,
                        weight,
                        [g.output.channels, g.input.channels],
                    )
                }),
                epilogue,
                output.data_mut(),
                &mut scratch.floats,
            ),
            ConvAlgorithm::ImplicitGemm => {
                let packed = self.derived.implicit_gemm.get_or_init(|| {
                    packed::pack(self.isa, g.output.channels, g.patch_len(), |oc, k| {
                        weight[oc * g.patch_len() + k]
                    })
                });
                let layout = self.implicit_gemm.as_ref().expect("laid out when built");
                implicit_gemm_forward(
                    self.isa,
                    (g, layout),
                    input,
                    packed,
                    epilogue,
                    output,
                    &mut scratch.floats,
                );
            }
            ConvAlgorithm::Depthwise => depthwise::forward(
                self.isa,
                g,
                batch,
                input.data(),
                weight,
                epilogue,
                output.data_mut(),
            ),
            ConvAlgorithm::Grouped => {
                self.grouped_forward(input, weight, epilogue, output, scratch)
            }
            ConvAlgorithm::Im2col => im2col_forward(
                self.isa,
                g,
                input,
                weight,
                epilogue,
                output,
                &mut scratch.floats,
            ),
        }
    }

    /// Gradients of [`Conv2dKernel::forward`]: adds `dL/dweight` and `dL/dbias`, and writes
    /// `dL/dinput` when asked for.
    ///
    /// Shapes as in the forward pass; `grad_output` is `[N, OC, OH, OW]`. Each chunk of the
    /// batch sums its own partial weight gradient; partials are added in chunk order
    /// (deterministic).
    pub fn backward(
        &self,
        input: &Tensor,
        weight: &[f32],
        grad_output: &Tensor,
        grads: ConvGrads<'_>,
        scratch: &mut Scratch,
    ) {
        let g = &self.geometry;
        match self.forward {
            ConvAlgorithm::Depthwise => {
                return self.depthwise_backward(input, weight, grad_output, grads)
            }
            ConvAlgorithm::Grouped => {
                return self.grouped_backward(input, weight, grad_output, grads, scratch)
            }
            _ => {}
        }
        let ConvGrads {
            input: grad_input,
            weight: grad_weight,
            bias: grad_bias,
        } = grads;
        // The input gradient of a stride-1 convolution is itself one (of the output gradient,
        // with the kernel flipped and transposed): Winograd or the implicit GEMM computes it
        // when chosen.
        let (grad_input, transposed_input) = match (grad_input, &self.transposed) {
            (Some(t), Some(kernel)) => (None, Some((t, kernel))),
            (other, _) => (other, None),
        };
        // Without an input gradient to unfold for, the weight gradient reads the image in
        // place.
        if grad_input.is_none() && weight_gradient::preferred(self.isa, g) {
            weight_gradient::weight_gradient(
                self.isa,
                g,
                input,
                grad_output,
                grad_weight,
                grad_bias,
                &mut scratch.floats,
            );
        } else {
            im2col_backward(
                self.isa,
                g,
                input,
                weight,
                grad_output,
                ConvGrads {
                    input: grad_input,
                    weight: grad_weight,
                    bias: grad_bias,
                },
                &mut scratch.floats,
            );
        }
        if let Some((grad_input, kernel)) = transposed_input {
            let flipped = self
                .derived
                .flipped_transposed
                .get_or_init(|| flipped_transposed(g, weight));
            kernel.forward(
                grad_output,
                flipped,
                Epilogue::default(),
                grad_input,
                scratch,
            );
        }
    }

    fn depthwise_backward(
        &self,
        input: &Tensor,
        weight: &[f32],
        grad_output: &Tensor,
        grads: ConvGrads<'_>,
    ) {
        let g = &self.geometry;
        depthwise::weight_gradient(
            self.isa,
            g,
            input.batch(),
            input.data(),
            grad_output.data(),
            grads.weight,
            grads.bias,
        );
        if let Some(grad_input) = grads.input {
            let flipped = self
                .derived
                .depthwise_flipped
                .get_or_init(|| depthwise::flipped_weights(g, weight));
            depthwise::forward(
                self.isa,
                &g.transposed()
                    .expect("a depthwise convolution has stride 1 and padding below its kernel"),
                input.batch(),
                grad_output.data(),
                flipped,
                Epilogue::default(),
                grad_input.data_mut(),
            );
        }
    }

    /// [`ConvAlgorithm::Grouped`]'s forward pass: group by group, its channels of the batch
    /// gathered, computed by its kernel, and scattered into its output channels.
    fn grouped_forward(
        &self,
        input: &Tensor,
        weight: &[f32],
        epilogue: Epilogue<'_>,
        output: &mut Tensor,
        scratch: &mut Scratch,
    ) {
        let group = self.geometry.group();
        let out_shape = epilogue.output_shape(group.output);
        let weight_len = group.output.channels * group.patch_len();
        let mut tensors = std::mem::take(&mut scratch.tensors);
        tensors.resize_with(2, Tensor::empty);
        let [inputs, outputs] = &mut tensors[..] else {
            unreachable!("two tensors")
        };
        for (index, kernel) in self.groups.iter().enumerate() {
            gather_channels(input, index, group.input, inputs);
            if epilogue.accumulate {
                // The group's kernel adds its result to what its channels hold.
                gather_channels(output, index, out_shape, outputs);
            } else {
                outputs.reshape(input.batch(), out_shape);
            }
            let bias = epilogue
                .bias
                .map(|b| &b[index * group.output.channels..][..group.output.channels]);
            kernel.forward(
                inputs,
                &weight[index * weight_len..][..weight_len],
                Epilogue { bias, ..epilogue },
                outputs,
                scratch,
            );
            scatter_channels(outputs, index, output);
        }
        scratch.tensors = tensors;
    }

    /// [`ConvAlgorithm::Grouped`]'s backward pass, group by group as the forward pass.
    fn grouped_backward(
        &self,
        input: &Tensor,
        weight: &[f32],
        grad_output: &Tensor,
        grads: ConvGrads<'_>,
        scratch: &mut Scratch,
    ) {
        let group = self.geometry.group();
        let weight_len = group.output.channels * group.patch_len();
        let ConvGrads {
            input: mut grad_input,
            weight: grad_weight,
            bias: mut grad_bias,
        } = grads;
        let mut tensors = std::mem::take(&mut scratch.tensors);
        tensors.resize_with(3, Tensor::empty);
        let [inputs, grad_outputs, grad_inputs] = &mut tensors[..] else {
            unreachable!("three tensors")
        };
        for (index, kernel) in self.groups.iter().enumerate() {
            gather_channels(input, index, group.input, inputs);
            gather_channels(grad_output, index, group.output, grad_outputs);
            grad_inputs.reshape(input.batch(), group.input);
            let channels_out = group.output.channels;
            kernel.backward(
                inputs,
                &weight[index * weight_len..][..weight_len],
                grad_outputs,
                ConvGrads {
                    input: grad_input.is_some().then_some(&mut *grad_inputs),
                    weight: &mut grad_weight[index * weight_len..][..weight_len],
                    bias: grad_bias
                        .as_deref_mut()
                        .map(|b| &mut b[index * channels_out..][..channels_out]),
                },
                scratch,
            );
            if let Some(grad_input) = grad_input.as_deref_mut() {
                scatter_channels(grad_inputs, index, grad_input);
            }
        }
        scratch.tensors = tensors;
    }
}

/// Channels `group * C'..(group + 1) * C'` of every image of `from` (`C'` = `shape`'s
/// channels) into `to`, a batch of `shape`.
fn gather_channels(from: &Tensor, group: usize, shape: Shape, to: &mut Tensor) {
    to.reshape(from.batch(), shape);
    for n in 0..from.batch() {
        to.sample_mut(n)
            .copy_from_slice(&from.sample(n)[group * shape.len()..][..shape.len()]);
    }
}

/// The inverse of [`gather_channels`]: every image of `from` into its group's channels of `to`.
fn scatter_channels(from: &Tensor, group: usize, to: &mut Tensor) {
    let len = from.shape().len();
    for n in 0..from.batch() {
        to.sample_mut(n)[group * len..][..len].copy_from_slice(from.sample(n));
    }
}

/// Images are unfolded side by side into one column matrix of about this many columns, so that
/// a layer with few window positions (LeNet-5's 10x10 maps) still multiplies matrices wide
/// enough for SGEMM to run at full speed, and each product's fixed cost is shared. (256, 512,
/// 1024 and 2048 measured with `cnn bench --arch lenet5`: 256 and 512 train fastest, as the
/// columns then stay in L2; 2048 is slowest.)
const GROUP_COLUMNS: usize = 512;

/// The column matrix's rows are padded to a multiple of this many columns (one AVX-512
/// register); the extra columns' products are never read.
const COLUMN_ALIGN: usize = 16;

/// One stretch of the column matrix: one row of one window offset for output row `oy`, i.e.
/// the entries `dst..dst + OW`. Output columns `lo..hi` read input pixels `src, src + SW, src + 2*SW...`;
/// the others lie in the zero padding.
#[derive(Clone, Copy)]
struct PatchRow {
    dst: usize,
    lo: usize,
    hi: usize,
    src: usize,
}

/// Visits every stretch of the column matrix with the input pixels it reads. im2col and its
/// transpose col2im are both this one walk, so they cannot disagree; working a row at a time
/// (not an entry at a time) keeps the bounds checks out of the inner loop.
///
/// The matrix has `row_len` entries per row, and this image's columns start at `offset`: several
/// images can be unfolded side by side.
#[inline(always)]
fn for_each_patch_row(
    g: &ConvGeometry,
    row_len: usize,
    offset: usize,
    mut visit: impl FnMut(PatchRow),
) {
    let [kh, kw] = g.window.kernel;
    let [sh, sw] = g.window.stride;
    let [ph, pw] = g.window.padding;
    let [dh, dw] = g.dilation;
    let (h, w) = (g.input.height, g.input.width);
    let (oh, ow) = (g.output.height, g.output.width);
    for c in 0..g.input.channels {
        for i in 0..kh {
            for j in 0..kw {
                let row = (c * kh + i) * kw + j;
                // Output columns whose pixel x = ox * sw + j * dw - pw lies inside 0..w.
                let tap = j * dw;
                let lo = (pw.saturating_sub(tap)).div_ceil(sw).min(ow);
                let hi = if w + pw > tap {
                    (w + pw - tap).div_ceil(sw).min(ow)
                } else {
                    0
                }
                .max(lo);
                for oy in 0..oh {
                    let dst = row * row_len + offset + oy * ow;
                    let y = (oy * sh + i * dh) as isize - ph as isize;
                    if y < 0 || y as usize >= h || lo == hi {
                        visit(PatchRow {
                            dst,
                            lo: 0,
                            hi: 0,
                            src: 0,
                        });
                        continue;
                    }
                    let src = (c * h + y as usize) * w + lo * sw + tap - pw;
                    visit(PatchRow { dst, lo, hi, src });
                }
            }
        }
    }
}

/// Unfolds one image `[C, H, W]` into the columns `offset..offset + OH*OW` of `col`, a
/// `[C*KH*KW, row_len]` row-major matrix.
pub fn im2col(g: &ConvGeometry, image: &[f32], col: &mut [f32], row_len: usize, offset: usize) {
    let (ow, sw) = (g.output.width, g.window.stride[1]);
    for_each_patch_row(g, row_len, offset, |PatchRow { dst, lo, hi, src }| {
        let out = &mut col[dst..dst + ow];
        let (left, rest) = out.split_at_mut(lo);
        let (middle, right) = rest.split_at_mut(hi - lo);
        left.iter_mut().for_each(|v| *v = 0.0);
        right.iter_mut().for_each(|v| *v = 0.0);
        if sw == 1 {
            for (o, &v) in middle.iter_mut().zip(&image[src..src + hi - lo]) {
                *o = v;
            }
        } else {
            // An iterator, not `image[src + k * sw]`: no bounds check per value.
            for (o, &v) in middle.iter_mut().zip(image[src..].iter().step_by(sw)) {
                *o = v;
            }
        }
    });
}

/// The transpose of [`im2col`]: adds every entry of the image's columns to the pixel it was
/// read from.
pub fn col2im_add(g: &ConvGeometry, col: &[f32], row_len: usize, offset: usize, image: &mut [f32]) {
    let sw = g.window.stride[1];
    for_each_patch_row(g, row_len, offset, |PatchRow { dst, lo, hi, src }| {
        let values = &col[dst + lo..dst + hi];
        if sw == 1 {
            for (pixel, v) in image[src..src + hi - lo].iter_mut().zip(values) {
                *pixel += v;
            }
        } else {
            for (k, v) in values.iter().enumerate() {
                image[src + k * sw] += v;
            }
        }
    });
}

/// How many images of `positions` columns each to unfold side by side into one column matrix
/// (see [`GROUP_COLUMNS`]), in a chunk of `per_chunk` images.
fn group_size(positions: usize, per_chunk: usize) -> usize {
    (GROUP_COLUMNS / positions.max(1)).clamp(1, per_chunk.max(1))
}

/// The images of one chunk of the batch, in groups of [`group_size`]: yields
/// (first image of the group, images in it).
fn groups(first: usize, count: usize, group: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..count)
        .step_by(group)
        .map(move |start| (first + start, group.min(count - start)))
}

/// Whether a layer built for `isa` computes `g` by implicit GEMM rather than im2col: with
/// AVX-512 or AVX2, as long as the rows of a stride phase ([`ImplicitGemm`]) waste at most
/// half again the output width. Measured on one core against im2col in the same process
/// (`cargo bench -p cnn --bench conv_algorithms`): with AVX-512, LeNet-5's second layer (6 to
/// 16 channels, 5x5, 14x14, padded width 1.4x the output width) 0.61-0.65x its time, a 1x1
/// layer (32 to 64 channels, 14x14) 0.76x, `cnn4`'s first layer 0.87-0.91x (the direct kernel
/// does better there: 0.70x); with AVX2 on an AMD EPYC Zen 3, LeNet-5's first layer 0.54-0.57x,
/// its second 0.80-0.93x, `cnn4`'s first 0.83-0.96x, a 3x3 layer on colour images 0.82-0.87x.
/// The plain-Rust product is 1.4-2.4x slower than `gemm`'s there: not with [`Isa::Portable`].
pub fn implicit_gemm_preferred(isa: Isa, g: &ConvGeometry) -> bool {
    matches!(isa, Isa::Avx512 | Isa::Avx2)
        && ConvAlgorithm::ImplicitGemm.supports_forward(g)
        && 2 * ImplicitGemm::phase_width(g) <= 3 * g.output.width
}

/// With AVX2, where the implicit GEMM is preferred for the transposed convolution and it has
/// at least two output channels (one alone fills a quarter of the product's blocks of four:
/// measured slower, below). Measured on
/// one core of an AMD EPYC Zen 3 (`cargo bench -p cnn --bench conv_algorithms`), the whole
/// backward pass against im2col's: LeNet-5's second layer 0.90-0.94x its time, a 3x3 layer on
/// colour images 0.52-0.56x; on one input channel 1.08-1.33x. Not measured with AVX-512,
/// which keeps im2col.
pub fn implicit_gemm_input_gradient_preferred(isa: Isa, g: &ConvGeometry) -> bool {
    isa == Isa::Avx2
        && g.input.channels >= 2
        && ConvAlgorithm::ImplicitGemm.supports_input_gradient(g)
        && g.transposed()
            .is_some_and(|t| implicit_gemm_preferred(isa, &t))
}

/// The layout of [`implicit_gemm_forward`] for `g`. The zero-padded image is split by the
/// phase of the stride: padded pixel `(y, x)` of a channel goes to phase plane
/// `(y % SH, x % SW)`, at `(y / SH, x / SW)`. The pixels that tap `(i, j)` reads for the
/// output positions, `(oy * SH + i, ox * SW + j)`, are then the rows of one phase plane from
/// `(i / SH, j / SW)` on: one contiguous row of `B` per tap, whatever the stride (with stride 1
/// the single phase is the padded image). The product has a column per position of a phase
/// row, `OH x phase_width` rounded up to whole registers, and the epilogue drops the columns
/// past the output width.
#[derive(Debug)]
struct ImplicitGemm {
    /// Floats of one phase row, the padded width divided by the stride, rounded up.
    phase_width: usize,
    /// Floats of one phase plane.
    phase_plane: usize,
    /// Floats of one channel's phase planes.
    channel_len: usize,
    columns: usize,
    /// Floats of the split image, with what the product reads past it.
    padded_len: usize,
    /// Where each tap's row of `B` starts.
    starts: Vec<usize>,
}

impl ImplicitGemm {
    fn phase_width(g: &ConvGeometry) -> usize {
        (g.input.width + 2 * g.window.padding[1]).div_ceil(g.window.stride[1])
    }

    fn of(g: &ConvGeometry) -> Self {
        let [kh, kw] = g.window.kernel;
        let [sh, sw] = g.window.stride;
        let phase_width = Self::phase_width(g);
        let phase_plane = (g.input.height + 2 * g.window.padding[0]).div_ceil(sh) * phase_width;
        let channel_len = sh * sw * phase_plane;
        let columns = (g.output.height * phase_width).next_multiple_of(COLUMN_ALIGN);
        let mut starts = Vec::with_capacity(g.patch_len());
        for c in 0..g.input.channels {
            for i in 0..kh {
                for j in 0..kw {
                    let phase = (i % sh) * sw + j % sw;
                    starts.push(
                        c * channel_len + phase * phase_plane + (i / sh) * phase_width + j / sw,
                    );
                }
            }
        }
        let read = starts.iter().max().copied().unwrap_or(0) + columns;
        let padded_len = read.max(g.input.channels * channel_len);
        ImplicitGemm {
            phase_width,
            phase_plane,
            channel_len,
            columns,
            padded_len,
            starts,
        }
    }

    /// Copies `image` into the zeroed split image `padded`, skipping the rows and phases that
    /// no tap reads (a strided 1x1 convolution reads one phase in four).
    #[inline(always)]
    fn split(&self, g: &ConvGeometry, image: &[f32], padded: &mut [f32]) {
        let (height, width) = (g.input.height, g.input.width);
        let [kh, kw] = g.window.kernel;
        let [sh, sw] = g.window.stride;
        let [pad_y, pad_x] = g.window.padding;
        for (c, plane) in image.chunks_exact(height * width).enumerate() {
            for (y, source) in plane.chunks_exact(width).enumerate() {
                let (phase_y, row) = ((y + pad_y) % sh, (y + pad_y) / sh);
                if phase_y >= kh {
                    continue;
                }
                let split_row = c * self.channel_len + row * self.phase_width;
                if sw == 1 {
                    padded[split_row + phase_y * self.phase_plane + pad_x..][..width]
                        .copy_from_slice(source);
                    continue;
                }
                for (phase_x, x0, at) in phase_runs(width, pad_x, sw, kw) {
                    let phase = phase_y * sw + phase_x;
                    let to = split_row + phase * self.phase_plane + at;
                    copy_every(sw, &source[x0..], &mut padded[to..]);
                }
            }
        }
    }
}

/// [`ImplicitGemm::split`], compiled for the chosen instruction set.
struct SplitImage<'a> {
    layout: &'a ImplicitGemm,
    g: &'a ConvGeometry,
    image: &'a [f32],
    padded: &'a mut [f32],
}

impl Kernel for SplitImage<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, _: S) {
        self.layout.split(self.g, self.image, self.padded);
    }
}

/// The runs of an image row of `width` pixels, padded by `pad_x` on the left, that a kernel of
/// width `kw` reads with stride `sw`, one per phase of the stride: `(phase, x0, at)`, where
/// `x0` is the row's first pixel whose padded column is of that phase and `at` its place in
/// the phase's part of a split row (the pixels `x0, x0 + sw, ...` follow it).
fn phase_runs(
    width: usize,
    pad_x: usize,
    sw: usize,
    kw: usize,
) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..sw.min(kw)).filter_map(move |phase| {
        let x0 = (phase + sw - pad_x % sw) % sw;
        (x0 < width).then_some((phase, x0, (x0 + pad_x) / sw))
    })
}

/// `to[i] = from[i * step]` for every such value of `from` (`to` may be longer). A step of 2,
/// the common stride, is a constant, which the compiler turns into vector shuffles instead of
/// one load and store per value.
#[inline(always)]
fn copy_every(step: usize, from: &[f32], to: &mut [f32]) {
    #[inline(always)]
    fn fixed<const STEP: usize>(from: &[f32], to: &mut [f32]) {
        let chunks = from.chunks_exact(STEP);
        let last = chunks.remainder().first().copied();
        let count = chunks.len();
        for (t, chunk) in to.iter_mut().zip(chunks) {
            *t = chunk[0];
        }
        if let Some(v) = last {
            to[count] = v;
        }
    }
    match step {
        2 => fixed::<2>(from, to),
        _ => {
            for (t, &v) in to.iter_mut().zip(from.iter().step_by(step)) {
                *t = v;
            }
        }
    }
}

/// [`Conv2dKernel::forward`] by implicit GEMM ([`ConvAlgorithm::ImplicitGemm`]): per image,
/// the image split by stride phase and zero-padded ([`ImplicitGemm`]), its product with the
/// packed weights (`[OC, columns]`), then the epilogue, which drops the columns past the
/// output width.
fn implicit_gemm_forward(
    isa: Isa,
    (g, layout): (&ConvGeometry, &ImplicitGemm),
    input: &Tensor,
    packed_weight: &[f32],
    epilogue: Epilogue<'_>,
    output: &mut Tensor,
    scratch: &mut Vec<f32>,
) {
    let batch = input.batch();
    let (chunks, per_chunk) = batch_chunks(batch);
    let channels_out = g.output.channels;
    let per_chunk_scratch = layout.padded_len + channels_out * layout.columns;
    let scratch = scratch_prefix(scratch, chunks * per_chunk_scratch);
    let (in_len, out_len) = (g.input.len(), epilogue.output_shape(g.output).len());
    let rows = (g.output.height, g.output.width, layout.phase_width);
    for_each_chunk_pair_mut(
        (output.data_mut(), per_chunk * out_len),
        (scratch, per_chunk_scratch),
        |chunk, out_chunk, work| {
            let (padded, product) = work.split_at_mut(layout.padded_len);
            // The padding and what lies past the image stay zero from image to image.
            padded.fill(0.0);
            for (n, out) in out_chunk.chunks_exact_mut(out_len).enumerate() {
                let image = &input.data()[(chunk * per_chunk + n) * in_len..][..in_len];
                isa.dispatch(SplitImage {
                    layout,
                    g,
                    image,
                    padded,
                });
                isa.dispatch(ImplicitProduct {
                    packed_weight,
                    padded,
                    starts: &layout.starts,
                    product,
                    shape: [channels_out, g.patch_len(), layout.columns],
                });
                let plane = out_len / channels_out;
                for (oc, out_plane) in out.chunks_exact_mut(plane).enumerate() {
                    let values = &product[oc * layout.columns..][..layout.columns];
                    epilogue.apply_plane(isa, oc, values, rows, out_plane);
                }
            }
        },
    );
}

/// The product of [`implicit_gemm_forward`] for one image.
struct ImplicitProduct<'a> {
    packed_weight: &'a [f32],
    padded: &'a [f32],
    starts: &'a [usize],
    product: &'a mut [f32],
    shape: [usize; 3],
}

impl Kernel for ImplicitProduct<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let columns = self.shape[2];
        packed::product(
            s,
            (self.packed_weight, S::ISA.product_block(self.shape[0])),
            (self.padded, Starts(self.starts)),
            self.product,
            self.shape,
            columns,
        );
    }
}

/// [`Conv2dKernel::forward`] by im2col: `output[n] = weight x im2col(input[n])` then the
/// epilogue, several images unfolded side by side per product.
fn im2col_forward(
    isa: Isa,
    g: &ConvGeometry,
    input: &Tensor,
    weight: &[f32],
    epilogue: Epilogue<'_>,
    output: &mut Tensor,
    scratch: &mut Vec<f32>,
) {
    let batch = input.batch();
    let (chunks, per_chunk) = batch_chunks(batch);
    let (channels_out, patch) = (g.output.channels, g.patch_len());
    let layout = ColumnLayout::of(g);
    let (positions, pitch) = (layout.positions(g), layout.row_pitch(g));
    let group = group_size(positions, per_chunk);
    // Per chunk: the padded image, the columns of a group of images, and their product with
    // the weights.
    let padded_len = layout.padded_len(g);
    let max_width = (group * positions).next_multiple_of(COLUMN_ALIGN);
    let (columns_len, product_len) = (patch * max_width, channels_out * max_width);
    let per_chunk_scratch = padded_len + columns_len + product_len;
    let scratch = scratch_prefix(scratch, chunks * per_chunk_scratch);
    let (in_len, out_len) = (g.input.len(), epilogue.output_shape(g.output).len());
    let (out_rows, out_width) = (g.output.height, g.output.width);
    for_each_chunk_pair_mut(
        (output.data_mut(), per_chunk * out_len),
        (scratch, per_chunk_scratch),
        |chunk, out_chunk, work| {
            let (padded, work) = work.split_at_mut(padded_len);
            let (columns, product) = work.split_at_mut(columns_len);
            let first = chunk * per_chunk;
            for (start, count) in groups(first, out_chunk.len() / out_len, group) {
                // Rounded up to whole SIMD registers: the SGEMM then reads the columns in place.
                let width = (count * positions).next_multiple_of(COLUMN_ALIGN);
                for s in 0..count {
                    let image = &input.data()[(start + s) * in_len..(start + s + 1) * in_len];
                    layout.unfold(isa, g, image, padded, columns, width, s * positions);
                }
                let product = &mut product[..channels_out * width];
                matmul(
                    product,
                    MatRef::row_major(weight, channels_out, patch),
                    MatRef::row_major(&columns[..patch * width], patch, width),
                    false,
                    Threading::Serial,
                );
                // [OC, count * P] back to [count, OC, P], through the epilogue.
                for s in 0..count {
                    let out = &mut out_chunk[(start - first + s) * out_len..][..out_len];
                    for (oc, out_plane) in out.chunks_mut(out_len / channels_out).enumerate() {
                        let plane = &product[oc * width + s * positions..][..positions];
                        epilogue.apply_plane(
                            isa,
                            oc,
                            plane,
                            (out_rows, out_width, pitch),
                            out_plane,
                        );
                    }
                }
            }
        },
    );
}

/// How an image is unfolded into columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ColumnLayout {
    /// One column per output position, any stride: [`im2col`].
    Exact,
    /// One column per output position, any stride, copied from a zero-padded copy of the image
    /// whose rows are split into one part per phase of the stride (so that no copy needs bounds
    /// logic, and each is contiguous): [`UnfoldFromPadded`].
    ExactFromPadded,
    /// Stride 1: one column per position of the *padded* width, `OH x (W + 2P)`. Each row of
    /// the column matrix is then a single contiguous copy of the padded image (offset by the
    /// kernel entry) instead of one short copy per output row; the product's extra columns
    /// (past the output width) are dropped.
    PaddedRows { width: usize },
}

impl ColumnLayout {
    /// The fastest layout for a forward pass.
    fn of(g: &ConvGeometry) -> Self {
        if g.dilation != [1, 1] {
            return ColumnLayout::Exact;
        }
        let padded_width = g.input.width + 2 * g.window.padding[1];
        // Worth it while the dropped columns stay a small share of the product.
        if g.window.stride == [1, 1] && 4 * padded_width <= 5 * g.output.width {
            ColumnLayout::PaddedRows {
                width: padded_width,
            }
        } else {
            Self::exact(g)
        }
    }

    /// The fastest layout with one column per output position (the backward pass gathers the
    /// output gradient that way).
    fn exact(g: &ConvGeometry) -> Self {
        if g.dilation == [1, 1] {
            ColumnLayout::ExactFromPadded
        } else {
            ColumnLayout::Exact
        }
    }

    /// Columns per image.
    fn positions(self, g: &ConvGeometry) -> usize {
        g.output.height * self.row_pitch(g)
    }

    /// Columns per output row.
    fn row_pitch(self, g: &ConvGeometry) -> usize {
        match self {
            ColumnLayout::Exact | ColumnLayout::ExactFromPadded => g.output.width,
            ColumnLayout::PaddedRows { width } => width,
        }
    }

    /// The padded image, plus room for the copies to read past it.
    fn padded_len(self, g: &ConvGeometry) -> usize {
        let padded_plane = (g.input.height + 2 * g.window.padding[0]) * PhasedRows::of(g).len;
        match self {
            ColumnLayout::Exact => 0,
            ColumnLayout::ExactFromPadded => g.input.channels * padded_plane + SHORT_ROW,
            ColumnLayout::PaddedRows { .. } => g.input.channels * padded_plane + g.window.kernel[1],
        }
    }

    /// Unfolds `image` into columns `offset..offset + positions` of `col` (`row_len` wide).
    #[allow(clippy::too_many_arguments)]
    fn unfold(
        self,
        isa: Isa,
        g: &ConvGeometry,
        image: &[f32],
        padded: &mut [f32],
        col: &mut [f32],
        row_len: usize,
        offset: usize,
    ) {
        match self {
            ColumnLayout::Exact => im2col(g, image, col, row_len, offset),
            _ => isa.dispatch(UnfoldFromPadded {
                g,
                layout: self,
                image,
                padded,
                col,
                row_len,
                offset,
            }),
        }
    }
}

/// Output rows up to this long are copied as one fixed-size block (see [`UnfoldFromPadded`]).
const SHORT_ROW: usize = 16;

/// A padded image row split by the phase of the horizontal stride `sw`: padded pixel `x` is at
/// `(x % sw) * part + x / sw`, so that the pixels one kernel tap reads along an output row,
/// `ox * sw + j`, are the contiguous run from `(j % sw) * part + j / sw`. With stride 1 it is
/// the padded row itself.
#[derive(Clone, Copy, Debug)]
struct PhasedRows {
    /// Floats of one part: the padded width divided by the stride, rounded up.
    part: usize,
    /// Floats of one split row, `stride * part`.
    len: usize,
}

impl PhasedRows {
    fn of(g: &ConvGeometry) -> Self {
        let stride = g.window.stride[1];
        let part = (g.input.width + 2 * g.window.padding[1]).div_ceil(stride);
        PhasedRows {
            part,
            len: stride * part,
        }
    }

    /// Where the run of tap `j` starts in a split row.
    fn tap(self, j: usize, stride: usize) -> usize {
        (j % stride) * self.part + j / stride
    }
}

/// [`im2col`] from a zero-padded copy of the image (its rows split by the phase of the
/// stride, [`PhasedRows`]): row `(c, i, j)` of the column matrix reads padded pixels
/// `(c, oy * sh + i, ox * sw + j)`, for each output row one contiguous run. Plain loops,
/// compiled for the chosen instruction set so that the compiler can copy with wide registers.
///
/// In [`ColumnLayout::PaddedRows`] (stride 1) each row is one copy. In
/// [`ColumnLayout::ExactFromPadded`] each output row is one copy; rows of at most
/// [`SHORT_ROW`] values (LeNet-5's second layer has 10) are copied as a fixed block of that
/// many that spills into the next output rows, which are written right after (the last rows
/// of each image are copied exactly, so nothing spills past them): a plain copy of a
/// length known only at run time is a call to `memcpy`, whose fixed cost was most of that
/// layer's time.
struct UnfoldFromPadded<'a> {
    g: &'a ConvGeometry,
    layout: ColumnLayout,
    image: &'a [f32],
    padded: &'a mut [f32],
    col: &'a mut [f32],
    row_len: usize,
    offset: usize,
}

impl Kernel for UnfoldFromPadded<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, _: S) {
        let UnfoldFromPadded {
            g,
            layout,
            image,
            padded,
            col,
            row_len,
            offset,
        } = self;
        let (channels, height, width) = (g.input.channels, g.input.height, g.input.width);
        let [pad_y, pad_x] = g.window.padding;
        let [kh, kw] = g.window.kernel;
        let [sh, sw] = g.window.stride;
        let rows = PhasedRows::of(g);
        let plane = (height + 2 * pad_y) * rows.len;
        padded.fill(0.0);
        for c in 0..channels {
            for y in 0..height {
                // A kernel shorter than the stride reads only some rows and phases (a strided
                // 1x1 convolution one in four pixels): only those are copied.
                if kh < sh && (y + pad_y) % sh >= kh {
                    continue;
                }
                let source = &image[(c * height + y) * width..][..width];
                let split = &mut padded[c * plane + (y + pad_y) * rows.len..][..rows.len];
                if sw == 1 {
                    split[pad_x..][..width].copy_from_slice(source);
                    continue;
                }
                for (phase, x0, at) in phase_runs(width, pad_x, sw, kw) {
                    copy_every(sw, &source[x0..], &mut split[phase * rows.part + at..]);
                }
            }
        }
        let (out_rows, out_width) = (g.output.height, g.output.width);
        for c in 0..channels {
            for i in 0..kh {
                for j in 0..kw {
                    let row = (c * kh + i) * kw + j;
                    let source = c * plane + i * rows.len + rows.tap(j, sw);
                    let dst = row * row_len + offset;
                    if let ColumnLayout::PaddedRows { .. } = layout {
                        let n = out_rows * rows.len;
                        col[dst..][..n].copy_from_slice(&padded[source..][..n]);
                        continue;
                    }
                    for oy in 0..out_rows {
                        let from = source + oy * sh * rows.len;
                        let to = dst + oy * out_width;
                        if out_width <= SHORT_ROW
                            && (oy * out_width + SHORT_ROW) <= out_rows * out_width
                        {
                            let block: [f32; SHORT_ROW] =
                                padded[from..from + SHORT_ROW].try_into().expect("a block");
                            col[to..to + SHORT_ROW].copy_from_slice(&block);
                        } else {
                            col[to..to + out_width]
                                .copy_from_slice(&padded[from..from + out_width]);
                        }
                    }
                }
            }
        }
    }
}

/// Where a convolution's backward pass puts its gradients.
pub struct ConvGrads<'a> {
    /// `[N, C, H, W]`, overwritten; `None` when nobody needs it (the first layer).
    pub input: Option<&'a mut Tensor>,
    /// `[OC, C*KH*KW]`, added to.
    pub weight: &'a mut [f32],
    /// `[OC]`, added to.
    pub bias: Option<&'a mut [f32]>,
}

/// The im2col part of [`Conv2dKernel::backward`]: the weight and bias gradients, and the
/// input gradient when `grads.input` asks for it.
fn im2col_backward(
    isa: Isa,
    g: &ConvGeometry,
    input: &Tensor,
    weight: &[f32],
    grad_output: &Tensor,
    grads: ConvGrads<'_>,
    scratch: &mut Vec<f32>,
) {
    let ConvGrads {
        input: grad_input,
        weight: grad_weight,
        bias: mut grad_bias,
    } = grads;
    let batch = input.batch();
    let (chunks, per_chunk) = batch_chunks(batch);
    let (channels_out, positions, patch) = (g.output.channels, g.positions(), g.patch_len());
    let group = group_size(positions, per_chunk);
    // Per chunk: a group's columns, their gradient, its output gradient gathered as
    // [OC, group * P], and the chunk's partial weight and bias sums.
    let layout = ColumnLayout::exact(g);
    let padded_len = layout.padded_len(g);
    let columns_len = patch * group * positions;
    let gathered_len = channels_out * group * positions;
    let weight_len = channels_out * patch;
    let per_chunk_scratch = 2 * columns_len + gathered_len + weight_len + channels_out + padded_len;
    let work_area = scratch_prefix(scratch, chunks * per_chunk_scratch);
    let (in_len, out_len) = (g.input.len(), g.output.len());
    let grad_input = grad_input.map_or(&mut [][..], |t| t.data_mut());
    for_each_chunk_pair_mut(
        (work_area, per_chunk_scratch),
        (grad_input, per_chunk * in_len),
        |chunk, work, input_grad| {
            // Empty when nobody asked for the input gradient.
            let mut input_grad = (!input_grad.is_empty()).then_some(input_grad);
            let (columns, rest) = work.split_at_mut(columns_len);
            let (column_grad, rest) = rest.split_at_mut(columns_len);
            let (gathered, rest) = rest.split_at_mut(gathered_len);
            let (partial_weight, rest) = rest.split_at_mut(weight_len);
            let (partial_bias, padded) = rest.split_at_mut(channels_out);
            partial_weight.fill(0.0);
            partial_bias.fill(0.0);
            let first = chunk * per_chunk;
            let count_in_chunk = per_chunk.min(batch - first);
            for (start, count) in groups(first, count_in_chunk, group) {
                let width = count * positions;
                for s in 0..count {
                    let n = start + s;
                    layout.unfold(
                        isa,
                        g,
                        &input.data()[n * in_len..(n + 1) * in_len],
                        padded,
                        columns,
                        width,
                        s * positions,
                    );
                    let out_grad = &grad_output.data()[n * out_len..(n + 1) * out_len];
                    for (oc, row) in out_grad.chunks(positions).enumerate() {
                        gathered[oc * width + s * positions..][..positions].copy_from_slice(row);
                    }
                }
                let columns = MatRef::row_major(&columns[..patch * width], patch, width);
                let dy = MatRef::row_major(&gathered[..channels_out * width], channels_out, width);
                // dW[OC, CKK] += dY[OC, G*P] x columns^T[G*P, CKK]
                matmul(partial_weight, dy, columns.t(), true, Threading::Serial);
                for (b, row) in partial_bias.iter_mut().zip(dy.data.chunks(width)) {
                    *b += row.iter().sum::<f32>();
                }
                if let Some(input_grad) = input_grad.as_deref_mut() {
                    // dcolumns[CKK, G*P] = W^T[CKK, OC] x dY[OC, G*P], folded back per image.
                    let weight_t = MatRef::row_major(weight, channels_out, patch).t();
                    matmul(
                        &mut column_grad[..patch * width],
                        weight_t,
                        dy,
                        false,
                        Threading::Serial,
                    );
                    for s in 0..count {
                        let local = start - first + s;
                        let image_grad = &mut input_grad[local * in_len..(local + 1) * in_len];
                        image_grad.fill(0.0);
                        col2im_add(g, column_grad, width, s * positions, image_grad);
                    }
                }
            }
        },
    );

    for work in work_area.chunks(per_chunk_scratch).take(chunks) {
        let sums = &work[2 * columns_len + gathered_len..];
        let (partial_weight, rest) = sums.split_at(weight_len);
        let partial_bias = &rest[..channels_out];
        add_assign(grad_weight, partial_weight);
        if let Some(grad_bias) = grad_bias.as_deref_mut() {
            add_assign(grad_bias, partial_bias);
        }
    }
}

fn add_assign(total: &mut [f32], part: &[f32]) {
    for (t, p) in total.iter_mut().zip(part) {
        *t += p;
    }
}
