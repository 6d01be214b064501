pub mod bench;
pub mod completions;
pub mod eval;
pub mod explain;
pub mod explain_cell;
pub mod explain_model;
pub mod export;
pub mod import;
pub mod info;
pub mod predict;
pub mod run;
pub mod serve;
pub mod train;

use crate::printable::escaped;
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

/// One line per node: index, layer, output shape, parameters, FLOPs per image; for a graph
/// (not a plain stack) also the node's name and what it reads.
pub fn print_summary(summary: &[LayerSummary], input: cnn::Shape) {
    let stack = summary.iter().enumerate().all(|(i, line)| {
        line.name == i.to_string()
            && line.inputs
                == [if i == 0 {
                    "input".to_string()
                } else {
                    (i - 1).to_string()
                }]
    });
    let node_width = summary
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let inputs_width = summary
        .iter()
        .map(|l| l.inputs.join(" + ").len())
        .max()
        .unwrap_or(6)
        .max(6);
    let graph_columns = |name: &str, inputs: &str| {
        if stack {
            String::new()
        } else {
            format!(" {name:<node_width$}  {inputs:<inputs_width$}")
        }
    };
    println!(
        "{:>3} {} {:<32} {:>12} {:>10} {:>12}",
        "#",
        graph_columns("node", "inputs"),
        "layer",
        "output",
        "params",
        "FLOPs/image"
    );
    println!(
        "{:>3} {} {:<32} {:>12}",
        "",
        graph_columns("", ""),
        "input",
        input.to_string()
    );
    for line in summary {
        println!(
            "{:>3} {} {:<32} {:>12} {:>10} {:>12}",
            line.index,
            graph_columns(&line.name, &line.inputs.join(" + ")),
            line.layer,
            line.output.to_string(),
            line.params,
            line.flops
        );
    }
    let params: usize = summary.iter().map(|l| l.params).sum();
    let flops: u64 = summary.iter().map(|l| l.flops).sum();
    println!(
        "{:>3} {} {:<32} {:>12} {:>10} {:>12}",
        "",
        graph_columns("", ""),
        "total",
        "",
        params,
        flops
    );
}

/// Refuses to score a model on a data set with other classes: each class would be scored
/// as the one at its index.
pub fn check_same_classes(model: &[String], data: &[String]) -> anyhow::Result<()> {
    if model != data {
        anyhow::bail!(
            "the model's classes ({}) are not the data set's ({})",
            escaped(&model.join(", ")),
            escaped(&data.join(", "))
        );
    }
    Ok(())
}

/// The confusion matrix, rows the true class, columns the predicted one.
pub fn print_confusion(classes: &[String], confusion: &[Vec<usize>]) {
    println!("confusion matrix (rows: true class, columns: predicted):");
    let classes: Vec<String> = classes.iter().map(|c| escaped(c).into_owned()).collect();
    let width = classes.iter().map(|c| c.len()).max().unwrap_or(1).max(6);
    let header: String = classes.iter().map(|c| format!(" {c:>width$}")).collect();
    println!("  {:<width$}{header}", "");
    for (class, row) in classes.iter().zip(confusion) {
        let cells: String = row.iter().map(|n| format!(" {n:>width$}")).collect();
        println!("  {class:<width$}{cells}");
    }
}
