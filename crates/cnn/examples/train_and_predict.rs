//! The engine from Rust: train a network on the built-in X/O letters, save it, load it back and
//! classify a picture. `cargo run --release -p cnn --example train_and_predict`.

use cnn::data::DataSpec;
use cnn::rng::{seeded, Stream};
use cnn::train::{evaluate, train, Silent, TrainConfig};
use cnn::{arch, model_file, Model, Network, Workspace};

fn main() -> cnn::Result<()> {
    // Data: 8,000 generated 28x28 letters to train on, 1,000 to validate, by seed 1.
    let data = DataSpec::parse("xo")?;
    let (train_set, validation) = data.load_training(1, 0.0, None)?;

    // A network from the text notation; `dense classes` takes one output per class.
    let layers = arch::parse(
        &arch::preset("xo").expect("a preset"),
        train_set.classes().len(),
    )?;
    let mut network = Network::new(&layers, train_set.shape())?;
    network.init_kaiming(&mut seeded(1, Stream::WeightInit));

    // Two epochs of Adam at 0.001 (the other settings as `cnn train`'s defaults).
    let preprocessing = data.preprocessing(&train_set);
    let config = TrainConfig {
        epochs: 2,
        ..TrainConfig::default()
    };
    let reports = train(
        &mut network,
        &preprocessing,
        &train_set,
        validation.as_ref(),
        &config,
        &mut Silent,
    )?;
    let last = reports.last().expect("two epochs");
    println!(
        "after {} epochs: training accuracy {:.2}%",
        last.epoch,
        100.0 * last.train_accuracy
    );

    // A model is the network with its classes and how it reads pictures; it saves as
    // safetensors that PyTorch loads.
    let model = Model::new(network, train_set.classes().to_vec(), preprocessing)?;
    let path = std::env::temp_dir().join("cnn-example-xo.safetensors");
    model_file::save(&model, &path)?;
    let model = model_file::load(&path)?;
    let test = data.load_test(1)?;
    let result = evaluate(&model.network, &model.preprocessing, &test, 256)?;
    println!("test accuracy {:.2}%", 100.0 * result.accuracy);

    // A black X on white paper, as a paint program would save it: the model inverts it to
    // its white-on-black training data.
    let picture = image::GrayImage::from_fn(64, 64, |x, y| {
        let on_stroke = x.abs_diff(y) < 5 || (x + y).abs_diff(63) < 5;
        let inside = (10..54).contains(&x) && (10..54).contains(&y);
        image::Luma([if on_stroke && inside { 0 } else { 255 }])
    });
    let prediction = model.classify_picture(
        &image::DynamicImage::ImageLuma8(picture),
        &mut Workspace::new(),
    )?;
    println!(
        "the drawn X reads as {} ({:.1}%)",
        prediction.class,
        100.0 * prediction.probability
    );
    std::fs::remove_file(&path).map_err(|e| cnn::Error::io(&path, e))?;
    Ok(())
}
