//! Optimizers. The contract (as ConvNetJS's): an optimizer sees only parameters and their
//! gradients, in the same order, and knows nothing of layers.

use crate::error::{Error, Result};
use crate::network::{Gradients, Network};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// Stochastic gradient descent with momentum, as PyTorch's `SGD`:
    /// `v = momentum * v + g; p -= lr * v`, or with Nesterov momentum
    /// `p -= lr * (g + momentum * v)`.
    Sgd {
        momentum: f32,
        #[serde(default)]
        nesterov: bool,
    },
    /// Adam (Kingma & Ba), with bias correction; weight decay is added to the gradient.
    Adam {
        beta1: f32,
        beta2: f32,
        epsilon: f32,
    },
    /// AdamW (Loshchilov & Hutter): Adam with weight decay applied to the parameters directly,
    /// `p -= lr * decay * p`, as PyTorch's `AdamW`.
    AdamW {
        beta1: f32,
        beta2: f32,
        epsilon: f32,
    },
}

impl OptimizerConfig {
    pub fn sgd() -> Self {
        OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: false,
        }
    }

    pub fn adam() -> Self {
        OptimizerConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        }
    }

    pub fn adamw() -> Self {
        OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        }
    }

    /// Checks the coefficients, wherever they come from (flags or a checkpoint): momentum and
    /// betas in [0, 1), a positive epsilon. Outside these the moments grow without bound.
    pub fn validate(&self) -> Result<()> {
        let fraction = |name: &str, value: f32| {
            if (0.0..1.0).contains(&value) {
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "{name} must be in [0, 1), not {value}"
                )))
            }
        };
        match *self {
            OptimizerConfig::Sgd { momentum, .. } => fraction("--momentum", momentum),
            OptimizerConfig::Adam {
                beta1,
                beta2,
                epsilon,
            }
            | OptimizerConfig::AdamW {
                beta1,
                beta2,
                epsilon,
            } => {
                fraction("Adam's beta1", beta1)?;
                fraction("Adam's beta2", beta2)?;
                if !(epsilon.is_finite() && epsilon > 0.0) {
                    return Err(Error::Invalid(format!(
                        "Adam's epsilon must be a positive number, not {epsilon}"
                    )));
                }
                Ok(())
            }
        }
    }
}

/// An optimizer and its per-parameter state (momentum, or Adam's two moments).
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    config: OptimizerConfig,
    steps: u64,
    first_moment: Vec<Vec<f32>>,
    second_moment: Vec<Vec<f32>>,
    /// Parameters left as they are (by index; none when empty). A setting of the run, not
    /// state: a checkpoint does not store it.
    frozen: Vec<bool>,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig, network: &Network) -> Self {
        let zeros: Vec<Vec<f32>> = network
            .params()
            .map(|(_, p)| vec![0.0; p.value.len()])
            .collect();
        let second_moment = match config {
            OptimizerConfig::Adam { .. } | OptimizerConfig::AdamW { .. } => zeros.clone(),
            OptimizerConfig::Sgd { .. } => Vec::new(),
        };
        Optimizer {
            config,
            steps: 0,
            first_moment: zeros,
            second_moment,
            frozen: Vec::new(),
        }
    }

    pub fn config(&self) -> OptimizerConfig {
        self.config
    }

    /// Steps taken, and the state per parameter: the first moment (SGD's velocity) and the
    /// second (Adam's; empty for SGD). What a checkpoint stores.
    pub fn state(&self) -> (u64, &[Vec<f32>], &[Vec<f32>]) {
        (self.steps, &self.first_moment, &self.second_moment)
    }

    /// An optimizer restored from [`Optimizer::state`].
    pub fn from_state(
        config: OptimizerConfig,
        steps: u64,
        first_moment: Vec<Vec<f32>>,
        second_moment: Vec<Vec<f32>>,
    ) -> Self {
        Optimizer {
            config,
            steps,
            first_moment,
            second_moment,
            frozen: Vec::new(),
        }
    }

    /// Whether the state has one buffer of the right length per parameter of `network`.
    pub fn fits(&self, network: &Network) -> bool {
        let lengths: Vec<usize> = network.params().map(|(_, p)| p.value.len()).collect();
        let same = |moments: &[Vec<f32>]| {
            moments.len() == lengths.len()
                && moments.iter().zip(&lengths).all(|(m, &l)| m.len() == l)
        };
        same(&self.first_moment)
            && match self.config {
                OptimizerConfig::Sgd { .. } => self.second_moment.is_empty(),
                _ => same(&self.second_moment),
            }
    }

    /// Checks restored state: every moment finite, Adam's second moments (means of squares)
    /// not negative, and the coefficients valid ([`OptimizerConfig::validate`]).
    pub fn check_state(&self) -> Result<()> {
        self.config.validate()?;
        let finite = |moments: &[Vec<f32>]| moments.iter().flatten().all(|v| v.is_finite());
        if !finite(&self.first_moment) || !finite(&self.second_moment) {
            return Err(Error::Invalid(
                "the optimizer state holds NaN or infinite values".into(),
            ));
        }
        if self.second_moment.iter().flatten().any(|&v| v < 0.0) {
            return Err(Error::Invalid(
                "the optimizer state holds a negative second moment".into(),
            ));
        }
        Ok(())
    }

    /// Leaves the parameters marked `true` (in the order of [`Network::params`]) as they are:
    /// no step, no weight decay, no moments.
    pub fn freeze(&mut self, frozen: Vec<bool>) {
        self.frozen = frozen;
    }

    /// Moves every parameter of `network` that is not frozen against its gradient, with
    /// learning rate `lr` and weight decay `decay`.
    pub fn step(&mut self, network: &mut Network, grads: &Gradients, lr: f32, decay: f32) {
        self.steps += 1;
        let frozen = &self.frozen;
        let moving = |i: usize| !frozen.get(i).copied().unwrap_or(false);
        let params = network.params_mut().zip(grads.iter());
        match self.config {
            OptimizerConfig::Sgd { momentum, nesterov } => {
                let params = params.zip(&mut self.first_moment).enumerate();
                for (_, ((param, grad), velocity)) in params.filter(|(i, _)| moving(*i)) {
                    for ((p, &g), v) in param.value.iter_mut().zip(grad).zip(velocity) {
                        let g = g + decay * *p;
                        *v = momentum * *v + g;
                        *p -= lr * if nesterov { g + momentum * *v } else { *v };
                    }
                }
            }
            OptimizerConfig::Adam {
                beta1,
                beta2,
                epsilon,
            }
            | OptimizerConfig::AdamW {
                beta1,
                beta2,
                epsilon,
            } => {
                let decoupled = matches!(self.config, OptimizerConfig::AdamW { .. });
                let correction1 = 1.0 - beta1.powi(self.steps as i32);
                let correction2 = 1.0 - beta2.powi(self.steps as i32);
                let moments = self.first_moment.iter_mut().zip(&mut self.second_moment);
                let params = params.zip(moments).enumerate();
                for (_, ((param, grad), (m, v))) in params.filter(|(i, _)| moving(*i)) {
                    for (((p, &g), m), v) in param.value.iter_mut().zip(grad).zip(m).zip(v) {
                        let g = if decoupled {
                            *p -= lr * decay * *p;
                            g
                        } else {
                            g + decay * *p
                        };
                        *m = beta1 * *m + (1.0 - beta1) * g;
                        *v = beta2 * *v + (1.0 - beta2) * g * g;
                        let m_hat = *m / correction1;
                        let v_hat = *v / correction2;
                        *p -= lr * m_hat / (v_hat.sqrt() + epsilon);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{DenseConfig, LayerSpec};
    use crate::tensor::Shape;

    /// One dense weight `w = 1`, gradient 0.5: the first steps by hand.
    fn one_weight() -> (Network, Gradients) {
        let spec = [LayerSpec::Dense(DenseConfig {
            out_features: 1,
            bias: false,
        })];
        let mut network =
            Network::new(&crate::Architecture::sequential(&spec), Shape::flat(1)).unwrap();
        network.params_mut().for_each(|p| p.value[0] = 1.0);
        let mut grads = Gradients::new(&network);
        grads.iter_mut().for_each(|g| g[0] = 0.5);
        (network, grads)
    }

    fn weight(network: &Network) -> f32 {
        network.params().next().unwrap().1.value[0]
    }

    #[test]
    fn nesterov_and_weight_decay_follow_pytorch() {
        let (mut network, grads) = one_weight();
        let config = OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: true,
        };
        let mut optimizer = Optimizer::new(config, &network);
        // g = 0.5 + 0.1 * 1 = 0.6; v = 0.6; p = 1 - 0.1 * (0.6 + 0.9 * 0.6) = 0.886
        optimizer.step(&mut network, &grads, 0.1, 0.1);
        assert!(
            (weight(&network) - 0.886).abs() < 1e-6,
            "{}",
            weight(&network)
        );
    }

    #[test]
    fn adamw_decays_the_weight_apart_from_the_gradient() {
        let (mut network, grads) = one_weight();
        let mut optimizer = Optimizer::new(OptimizerConfig::adamw(), &network);
        // p = 1 - 0.1 * 0.01 * 1 = 0.999, then Adam's first step moves it by lr (m_hat / sqrt(v_hat) = 1).
        optimizer.step(&mut network, &grads, 0.1, 0.01);
        assert!(
            (weight(&network) - 0.899).abs() < 1e-5,
            "{}",
            weight(&network)
        );
    }
}
