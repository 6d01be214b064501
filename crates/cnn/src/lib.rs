//! `cnn`: a convolutional neural network engine.
//!
//! Images are f32 tensors in NCHW layout ([`tensor`]); layers ([`layers`]) have forward and
//! backward passes side by side and call the kernels ([`kernels`]); a [`network::Network`] is a
//! stack of layers built from an architecture ([`arch`]); [`train`] fits it to a data set
//! ([`data`]); [`model_file`] saves and loads it as safetensors that PyTorch reads, [`onnx`]
//! writes it for other runtimes and reads models from other frameworks.
//!
//! # Train, save, load, predict
//!
//! ```no_run
//! use cnn::data::DataSpec;
//! use cnn::rng::{seeded, Stream};
//! use cnn::train::{train, Silent, TrainConfig};
//! use cnn::{arch, model_file, Model, Network, Workspace};
//!
//! # fn main() -> cnn::Result<()> {
//! // The built-in X/O letters (or "fashion-mnist", "idx:DIR", "folder:DIR", "cifar10:DIR").
//! let data = DataSpec::parse("xo")?;
//! let (train_set, validation) = data.load_training(1, 0.0, None)?;
//! let layers = arch::parse("conv 8@3x3 pad=1, relu, maxpool 2, dense classes", 2)?;
//! let mut network = Network::new(&layers, train_set.shape())?;
//! network.init_kaiming(&mut seeded(1, Stream::WeightInit));
//! let preprocessing = data.preprocessing(&train_set);
//! let config = TrainConfig { epochs: 2, ..TrainConfig::default() };
//! train(&mut network, &preprocessing, &train_set, validation.as_ref(), &config, &mut Silent)?;
//!
//! let model = Model::new(network, train_set.classes().to_vec(), preprocessing)?;
//! model_file::save(&model, "xo.safetensors".as_ref())?;
//!
//! let model = model_file::load("xo.safetensors".as_ref())?;
//! let picture = cnn::preprocess::read_picture("my_x.png".as_ref())?;
//! let prediction = model.classify_picture(&picture, &mut Workspace::new())?;
//! println!("{} ({:.1}%)", prediction.class, 100.0 * prediction.probability);
//! # Ok(())
//! # }
//! ```
//!
//! Many pictures at once: prepare each with [`preprocess::Preprocessing::prepare_image`] and
//! [`preprocess::Preprocessing::normalize`] into one [`Tensor`], then [`Model::predict`]
//! classifies the batch on every core. `examples/train_and_predict.rs` runs the whole round.

pub mod arch;
pub mod arithmetic;
pub mod attribution;
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
pub mod onnx;
pub mod optim;
pub mod preprocess;
pub mod pytorch;
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
