//! Softmax with cross-entropy: turns the last layer's scores into class probabilities and
//! measures how far they are from the labels.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Numerically stable softmax of one row of scores.
pub fn softmax(logits: &[f32], probabilities: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (p, &z) in probabilities.iter_mut().zip(logits) {
        *p = (z - max).exp();
        sum += *p;
    }
    for p in probabilities.iter_mut() {
        *p /= sum;
    }
}

/// Checks that a network's scores are finite numbers. Weights and inputs that each pass
/// their checks can still overflow to infinity and NaN in a pass, and such scores name no
/// class: they are refused, not reported as a class with a NaN probability.
pub fn check_finite(logits: &[f32]) -> Result<()> {
    if logits.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    Err(Error::Invalid(
        "the network's outputs are not finite numbers (NaN or infinity): its weights or its \
         preprocessing overflow f32 on this input"
            .into(),
    ))
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > values[best] { i } else { best })
}

/// `-log softmax(logits)[label]`, computed from the logits (log-sum-exp) so that a tiny
/// probability cannot give infinity.
pub fn cross_entropy(logits: &[f32], label: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&z| (z - max).exp()).sum::<f32>().ln() + max;
    log_sum - logits[label]
}

/// [`cross_entropy`] against the smoothed target of [`softmax_cross_entropy`]:
/// `(1 - ε) (-log p[label]) + ε mean_k(-log p[k])`.
pub fn smoothed_cross_entropy(logits: &[f32], label: usize, smoothing: f32) -> f32 {
    let loss = cross_entropy(logits, label);
    if smoothing == 0.0 {
        return loss;
    }
    // -log p[k] = -log p[label] + z[label] - z[k], so the mean over k is
    // -log p[label] + z[label] - mean(z).
    let mean = logits.iter().sum::<f32>() / logits.len() as f32;
    loss + smoothing * (logits[label] - mean)
}

/// Loss summed over a batch, and how many predictions were right.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossStats {
    pub total_loss: f64,
    pub correct: usize,
}

/// Mean cross-entropy of `softmax(logits)` against `labels`, each label smoothed as PyTorch's
/// `CrossEntropyLoss(label_smoothing=ε)` smooths it: the target is `1 - ε` on the label plus
/// `ε / K` on every class. Writes the gradient, `(softmax - target) / N`, into `grad`.
///
/// Shapes: `logits` `[N, K]`, `labels` `[N]` with values below `K`, `grad` `[N, K]`.
pub fn softmax_cross_entropy(
    logits: &Tensor,
    labels: &[usize],
    smoothing: f32,
    grad: &mut Tensor,
) -> Result<LossStats> {
    let classes = logits.shape().len();
    if labels.len() != logits.batch() {
        return Err(Error::Invalid(format!(
            "{} labels for a batch of {}",
            labels.len(),
            logits.batch()
        )));
    }
    let scale = 1.0 / logits.batch().max(1) as f32;
    let mut stats = LossStats::default();
    for ((row, grad_row), &label) in logits
        .data()
        .chunks(classes)
        .zip(grad.data_mut().chunks_mut(classes))
        .zip(labels)
    {
        if label >= classes {
            return Err(Error::Invalid(format!(
                "label {label} out of range for {classes} classes"
            )));
        }
        softmax(row, grad_row);
        stats.total_loss += f64::from(smoothed_cross_entropy(row, label, smoothing));
        stats.correct += usize::from(argmax(row) == label);
        let spread = smoothing / classes as f32;
        grad_row[label] -= 1.0 - smoothing;
        grad_row.iter_mut().for_each(|g| *g = (*g - spread) * scale);
    }
    Ok(stats)
}
