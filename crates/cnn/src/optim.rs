//! Optimizers. The contract (as ConvNetJS's): an optimizer sees only parameters and their
//! gradients, in the same order, and knows nothing of layers.

use crate::network::{Gradients, Network};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// Stochastic gradient descent with momentum, as PyTorch's `SGD`:
    /// `v = momentum * v + g; p -= lr * v`.
    Sgd { momentum: f32 },
    /// Adam (Kingma & Ba), with bias correction.
    Adam {
        beta1: f32,
        beta2: f32,
        epsilon: f32,
    },
}

impl OptimizerConfig {
    pub fn sgd() -> Self {
        OptimizerConfig::Sgd { momentum: 0.9 }
    }

    pub fn adam() -> Self {
        OptimizerConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        }
    }
}

/// An optimizer and its per-parameter state (momentum, or Adam's two moments).
#[derive(Clone, Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    steps: u64,
    first_moment: Vec<Vec<f32>>,
    second_moment: Vec<Vec<f32>>,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig, network: &Network) -> Self {
        let zeros: Vec<Vec<f32>> = network
            .params()
            .map(|(_, p)| vec![0.0; p.value.len()])
            .collect();
        let second_moment = match config {
            OptimizerConfig::Adam { .. } => zeros.clone(),
            OptimizerConfig::Sgd { .. } => Vec::new(),
        };
        Optimizer {
            config,
            steps: 0,
            first_moment: zeros,
            second_moment,
        }
    }

    /// Moves every parameter of `network` against its gradient, with learning rate `lr`.
    pub fn step(&mut self, network: &mut Network, grads: &Gradients, lr: f32) {
        self.steps += 1;
        let params = network.params_mut().zip(grads.iter());
        match self.config {
            OptimizerConfig::Sgd { momentum } => {
                for ((param, grad), velocity) in params.zip(&mut self.first_moment) {
                    for ((p, &g), v) in param.value.iter_mut().zip(grad).zip(velocity) {
                        *v = momentum * *v + g;
                        *p -= lr * *v;
                    }
                }
            }
            OptimizerConfig::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                let correction1 = 1.0 - beta1.powi(self.steps as i32);
                let correction2 = 1.0 - beta2.powi(self.steps as i32);
                let moments = self.first_moment.iter_mut().zip(&mut self.second_moment);
                for ((param, grad), (m, v)) in params.zip(moments) {
                    for (((p, &g), m), v) in param.value.iter_mut().zip(grad).zip(m).zip(v) {
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
