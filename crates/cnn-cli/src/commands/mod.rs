pub mod bench;
pub mod completions;
pub mod eval;
pub mod explain;
pub mod explain_model;
pub mod info;
pub mod predict;
pub mod serve;
pub mod train;

use clap::Args;
use cnn::network::LayerSummary;
use cnn::preprocess::{Fit, DEFAULT_MAX_PIXELS};
use cnn::Model;

/// How the pictures named on the command line are read (`predict`, `explain --model`).
#[derive(Args, Clone, Debug)]
pub struct PictureArgs {
    /// Keep each picture's aspect ratio: fit it inside the model's input and fill the rest
    /// with the picture's background level (for strips and other pictures that are not the
    /// input's shape).
    #[arg(long)]
    pub letterbox: bool,
    /// Refuse pictures of more pixels than this, from their header, before decoding them.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

impl PictureArgs {
    /// Makes `model` read pictures as asked.
    pub fn apply(&self, model: &mut Model) {
        if self.letterbox {
            model.preprocessing.fit = Fit::Letterbox;
        }
    }
}

/// One line per layer: index, layer, output shape, parameters, FLOPs per image.
pub fn print_summary(summary: &[LayerSummary], input: cnn::Shape) {
    println!(
        "{:>3}  {:<32} {:>12} {:>10} {:>12}",
        "#", "layer", "output", "params", "FLOPs/image"
    );
    println!("{:>3}  {:<32} {:>12}", "", "input", input.to_string());
    for line in summary {
        println!(
            "{:>3}  {:<32} {:>12} {:>10} {:>12}",
            line.index,
            line.layer,
            line.output.to_string(),
            line.params,
            line.flops
        );
    }
    let params: usize = summary.iter().map(|l| l.params).sum();
    let flops: u64 = summary.iter().map(|l| l.flops).sum();
    println!(
        "{:>3}  {:<32} {:>12} {:>10} {:>12}",
        "", "total", "", params, flops
    );
}

/// The confusion matrix, rows the true class, columns the predicted one.
pub fn print_confusion(classes: &[String], confusion: &[Vec<usize>]) {
    println!("confusion matrix (rows: true class, columns: predicted):");
    let width = classes.iter().map(|c| c.len()).max().unwrap_or(1).max(6);
    let header: String = classes.iter().map(|c| format!(" {c:>width$}")).collect();
    println!("  {:<width$}{header}", "");
    for (class, row) in classes.iter().zip(confusion) {
        let cells: String = row.iter().map(|n| format!(" {n:>width$}")).collect();
        println!("  {class:<width$}{cells}");
    }
}
