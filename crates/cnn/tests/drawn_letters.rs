//! The X's people actually draw: the default X/O network, trained as `cnn train` trains it,
//! classifies pictures drawn with each variation a person brings (size, stroke, position,
//! rotation, squashing, paper, transparency) at the playground's 280x280, through the model's
//! own preprocessing. Prints the accuracy per variation; each must reach 98%.
//!
//!     cargo test --release -p cnn --test drawn_letters -- --nocapture

use cnn::data::xo::{drawn, Variation};
use cnn::data::DataSpec;
use cnn::rng::{seeded, Stream};
use cnn::train::{train, Silent, TrainConfig};
use cnn::{arch, Model, Network, Workspace};

const PER_VARIATION: usize = 200;

#[test]
fn the_default_model_reads_drawn_letters_of_every_variation() {
    let data = DataSpec::parse("xo").unwrap();
    let (train_set, validation) = data.load_training(1, 0.0, None).unwrap();
    let preset = arch::parse(&arch::preset("xo").unwrap(), 2).unwrap();
    let mut network = Network::new(&preset, train_set.shape()).unwrap();
    network.init_kaiming(&mut seeded(1, Stream::WeightInit));
    let preprocessing = data.preprocessing(&train_set);
    train(
        &mut network,
        &preprocessing,
        &train_set,
        validation.as_ref(),
        &TrainConfig::default(),
        &mut Silent,
    )
    .unwrap();
    let model = Model::new(network, train_set.classes().to_vec(), preprocessing).unwrap();
    let mut workspace = Workspace::new();
    let mut failures = Vec::new();
    println!("| variation | X | O | accuracy |\n|---|---|---|---|");
    for variation in Variation::ALL {
        let pictures = drawn(variation, PER_VARIATION, 280, 7);
        let mut right = [0, 0];
        for (picture, label) in &pictures {
            let prediction = model.classify_picture(picture, &mut workspace).unwrap();
            right[*label] += usize::from(prediction.index == *label);
        }
        let half = PER_VARIATION / 2;
        let accuracy = (right[0] + right[1]) as f64 / PER_VARIATION as f64;
        println!(
            "| {} | {}/{half} | {}/{half} | {:.1}% |",
            variation.name(),
            right[0],
            right[1],
            100.0 * accuracy
        );
        if accuracy < 0.98 {
            failures.push(format!("{}: {:.1}%", variation.name(), 100.0 * accuracy));
        }
    }
    assert!(failures.is_empty(), "below 98%: {failures:?}");
}
