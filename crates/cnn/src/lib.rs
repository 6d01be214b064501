//! `cnn`: a convolutional neural network engine.
//!
//! Images are f32 tensors in NCHW layout ([`tensor`]); layers ([`layers`]) have forward and
//! backward passes side by side and call the kernels ([`kernels`]); a [`network::Network`] is a
//! stack of layers built from an architecture ([`arch`]); [`train`] fits it to a data set
//! ([`data`]); [`model_file`] saves and loads it as safetensors that PyTorch reads.

pub mod arch;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod fsutil;
pub mod graph;
pub mod kernels;
pub mod layers;
pub mod limits;
pub mod loss;
pub mod model;
pub mod model_file;
pub mod network;
pub mod optim;
pub mod preprocess;
pub mod rng;
pub mod seed_example;
pub mod tensor;
pub mod train;
pub mod viz;
pub mod window;

pub use error::{Error, Result};
pub use graph::Architecture;
pub use layers::{LayerSpec, Mode};
pub use model::{Model, Prediction};
pub use network::{Gradients, Network, Workspace};
pub use tensor::{Param, Shape, Tensor};
