//! The sliding window shared by convolution and pooling: the seed's "put the feature over a
//! window, then slide it by the stride". The output-size formulas live here and only here.

use crate::limits::MAX_WINDOW;
use serde::{Deserialize, Serialize};

/// Geometry of a 2-D sliding window: kernel, stride and zero padding per axis `[height, width]`,
/// and whether partial windows at the bottom/right border are kept (`ceil_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window2d {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub ceil_mode: bool,
}

impl Window2d {
    pub fn new(kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Self {
        Window2d {
            kernel,
            stride,
            padding,
            ceil_mode: false,
        }
    }

    /// Checks that kernel and stride are at least 1 and that kernel, stride and padding are at
    /// most [`MAX_WINDOW`]: then every position and span below fits in an `isize` for any
    /// input of a size a tensor can have.
    pub fn check(&self) -> Result<(), String> {
        if self.stride.contains(&0) || self.kernel.contains(&0) {
            return Err("kernel and stride must be at least 1".into());
        }
        let sizes = self.kernel.iter().chain(&self.stride).chain(&self.padding);
        if sizes.into_iter().any(|&n| n > MAX_WINDOW) {
            return Err(format!(
                "kernel, stride and padding must be at most {MAX_WINDOW}"
            ));
        }
        Ok(())
    }

    /// Output positions along one axis of length `input`, or `None` when the window does not
    /// fit (or the sizes overflow).
    ///
    /// The window at output `o` starts at `o * stride - padding`. Counting the windows that fit
    /// entirely in the padded input gives `floor((input + 2p - k) / s) + 1`: it floors because a
    /// window hanging over the end is dropped. `ceil_mode` keeps that last partial window (the
    /// seed pools a 7x7 map to 4x4 this way), unless it would start in the right padding, where
    /// it would cover no input at all (PyTorch's rule).
    pub fn output_len(&self, axis: usize, input: usize) -> Option<usize> {
        let (k, s, p) = (self.kernel[axis], self.stride[axis], self.padding[axis]);
        let padded = input.checked_add(p.checked_mul(2)?)?;
        if k == 0 || s == 0 || padded < k {
            return None;
        }
        let span = padded - k;
        let mut out = if self.ceil_mode {
            span.div_ceil(s) + 1
        } else {
            span / s + 1
        };
        if self.ceil_mode && (out - 1).checked_mul(s)? >= input.checked_add(p)? {
            out -= 1;
        }
        Some(out)
    }

    /// `[height, width]` of the output for an input of `[height, width]`.
    pub fn output_size(&self, input: [usize; 2]) -> Option<[usize; 2]> {
        Some([self.output_len(0, input[0])?, self.output_len(1, input[1])?])
    }

    /// Input coordinates covered by window `out` along `axis`, clipped to the input: the range
    /// of valid input indices and the offset of its first element inside the kernel.
    #[inline]
    pub fn span(&self, axis: usize, out: usize, input: usize) -> WindowSpan {
        let start = (out * self.stride[axis]) as isize - self.padding[axis] as isize;
        let end = (start + self.kernel[axis] as isize).min(input as isize);
        let first = start.max(0);
        WindowSpan {
            start: first as usize,
            end: end.max(first) as usize,
            kernel_offset: (first - start) as usize,
        }
    }
}

impl Window2d {
    /// Visits every output position `(oy, ox)` of an input of `[height, width]` with the rows
    /// and columns of its window that lie inside the input. Convolution and both poolings slide
    /// their windows with this one walk.
    #[inline]
    pub fn for_each_window(
        &self,
        input: [usize; 2],
        output: [usize; 2],
        mut visit: impl FnMut(usize, usize, WindowSpan, WindowSpan),
    ) {
        for oy in 0..output[0] {
            let rows = self.span(0, oy, input[0]);
            for ox in 0..output[1] {
                visit(oy, ox, rows, self.span(1, ox, input[1]));
            }
        }
    }
}

/// The part of one window that lies inside the input, along one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpan {
    pub start: usize,
    pub end: usize,
    /// Index inside the kernel of the input element `start`.
    pub kernel_offset: usize,
}

impl WindowSpan {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_pooling_keeps_partial_windows() {
        let mut pool = Window2d::new([2, 2], [2, 2], [0, 0]);
        assert_eq!(pool.output_size([7, 7]), Some([3, 3]));
        pool.ceil_mode = true;
        assert_eq!(pool.output_size([7, 7]), Some([4, 4]));
        // The last window covers only row 6.
        assert_eq!(pool.span(0, 3, 7).len(), 1);
    }

    #[test]
    fn conv_sizes_match_the_formula() {
        let conv = Window2d::new([3, 3], [1, 1], [0, 0]);
        assert_eq!(conv.output_size([9, 9]), Some([7, 7]));
        let conv = Window2d::new([3, 3], [2, 2], [0, 0]);
        assert_eq!(conv.output_size([9, 9]), Some([4, 4]));
        let conv = Window2d::new([5, 5], [1, 1], [2, 2]);
        assert_eq!(conv.output_size([28, 28]), Some([28, 28]));
        let too_big = Window2d::new([5, 5], [1, 1], [0, 0]);
        assert_eq!(too_big.output_size([4, 4]), None);
    }

    #[test]
    fn ceil_mode_never_starts_a_window_in_the_padding() {
        // PyTorch: MaxPool2d(2, stride=2, padding=1, ceil_mode=True) on 5 gives 3, not 4: a
        // fourth window would start at 5, in the right padding.
        let mut pool = Window2d::new([2, 2], [2, 2], [1, 1]);
        pool.ceil_mode = true;
        assert_eq!(pool.output_len(0, 5), Some(3));
        assert_eq!(pool.output_len(0, 6), Some(4));
    }

    #[test]
    fn sizes_that_would_wrap_are_refused() {
        // 2^63 padding: `input + 2 * p` wraps to `input`.
        let huge = Window2d::new([3, 3], [1, 1], [1 << 63, 1 << 63]);
        assert_eq!(huge.output_size([28, 28]), None);
        assert!(huge.check().unwrap_err().contains("at most"));
        let mut pool = Window2d::new([2, 2], [usize::MAX, 2], [1, 1]);
        pool.ceil_mode = true;
        assert!(pool.check().is_err());
        assert_eq!(pool.output_len(0, usize::MAX - 1), None);
        assert!(Window2d::new([0, 3], [1, 1], [0, 0]).check().is_err());
        assert!(Window2d::new([3, 3], [1, 1], [1, 1]).check().is_ok());
    }

    #[test]
    fn span_clips_padding() {
        let conv = Window2d::new([3, 3], [1, 1], [1, 1]);
        let s = conv.span(0, 0, 5);
        assert_eq!((s.start, s.end, s.kernel_offset), (0, 2, 1));
        let s = conv.span(0, 4, 5);
        assert_eq!((s.start, s.end, s.kernel_offset), (3, 5, 0));
    }
}
