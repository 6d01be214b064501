//! A trained model: the network with what it takes to use it alone (class names, how images are
//! prepared). Shared read-only between threads; each caller brings its own [`Workspace`].

use crate::error::{Error, Result};
use crate::layers::Mode;
use crate::loss::{check_finite, softmax};
use crate::network::{Network, Workspace};
use crate::preprocess::Preprocessing;
use crate::tensor::Tensor;
use image::DynamicImage;

#[derive(Debug)]
pub struct Model {
    pub network: Network,
    pub classes: Vec<String>,
    pub preprocessing: Preprocessing,
    /// The `--data` spec the model was trained on, if known: the default for evaluating it.
    pub data: Option<String>,
    /// How it was trained, as the trainer recorded it (`cnn train` writes its settings and
    /// results), if known. Stored in the model file as it is.
    pub training: Option<serde_json::Value>,
}

/// A class and its probability.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub class: String,
    pub index: usize,
    pub probability: f32,
    /// Every class's probability, in the order of [`Model::classes`].
    pub probabilities: Vec<f32>,
    /// The last layer's raw scores, before softmax.
    pub logits: Vec<f32>,
}

impl Model {
    /// Checks that the parts agree: one output per class, one normalisation per channel.
    pub fn new(
        network: Network,
        classes: Vec<String>,
        preprocessing: Preprocessing,
    ) -> Result<Self> {
        let outputs = network.output_shape();
        if !outputs.is_flat() || outputs.channels != classes.len() {
            return Err(Error::Invalid(format!(
                "the network outputs {outputs} values for {} classes",
                classes.len()
            )));
        }
        preprocessing.validate(network.input_shape())?;
        Ok(Model {
            network,
            classes,
            preprocessing,
            data: None,
            training: None,
        })
    }

    /// Class probabilities for a batch of prepared inputs (`[N, input_shape]`), by the fast
    /// inference path ([`Network::infer`]).
    pub fn predict(&self, inputs: &Tensor, workspace: &mut Workspace) -> Result<Vec<Prediction>> {
        let logits = self.network.infer(inputs, workspace)?;
        self.predictions(logits)
    }

    /// As [`Model::predict`], keeping every layer's output in `workspace` (see
    /// [`Workspace::activations`]) for showing what the network sees.
    pub fn predict_traced(
        &self,
        inputs: &Tensor,
        workspace: &mut Workspace,
    ) -> Result<Vec<Prediction>> {
        let logits = self.network.forward(inputs, workspace, Mode::Infer)?;
        self.predictions(logits)
    }

    fn predictions(&self, logits: &Tensor) -> Result<Vec<Prediction>> {
        (0..logits.batch())
            .map(|n| {
                check_finite(logits.sample(n))?;
                let mut probabilities = vec![0.0; self.classes.len()];
                softmax(logits.sample(n), &mut probabilities);
                let index = crate::loss::argmax(&probabilities);
                Ok(Prediction {
                    class: self.classes[index].clone(),
                    index,
                    probability: probabilities[index],
                    probabilities,
                    logits: logits.sample(n).to_vec(),
                })
            })
            .collect()
    }

    /// Prepares a decoded picture as this model's input (`[1, input_shape]`).
    pub fn input_from_picture(&self, picture: &DynamicImage) -> Result<Tensor> {
        let shape = self.network.input_shape();
        let pixels = self.preprocessing.prepare_image(picture, shape)?;
        let mut input = Tensor::zeros(1, shape);
        self.preprocessing
            .normalize(&pixels, shape, input.data_mut());
        Ok(input)
    }

    pub fn classify_picture(
        &self,
        picture: &DynamicImage,
        workspace: &mut Workspace,
    ) -> Result<Prediction> {
        let input = self.input_from_picture(picture)?;
        let mut predictions = self.predict(&input, workspace)?;
        Ok(predictions.remove(0))
    }
}
