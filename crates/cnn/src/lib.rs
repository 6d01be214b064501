//! `cnn`: a convolutional neural network engine.
//!
//! Images are f32 tensors in NCHW layout ([`tensor`]); layers ([`layers`]) have forward and
//! backward passes side by side and call the kernels ([`kernels`]); a [`network::Network`] is a
//! stack of layers built from an architecture ([`arch`]); [`train`] fits it to a data set
//! ([`data`]); [`model_file`] saves and loads it as safetensors that PyTorch reads.

pub mod arch;
pub mod error;
pub mod kernels;
pub mod layers;
pub mod loss;
pub mod network;
pub mod optim;
pub mod tensor;
pub mod window;

pub use error::{Error, Result};
pub use layers::{LayerSpec, Mode};
pub use network::{Gradients, Network, Workspace};
pub use tensor::{Param, Shape, Tensor};
