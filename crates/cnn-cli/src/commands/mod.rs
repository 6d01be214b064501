pub mod bench;
pub mod eval;
pub mod explain;
pub mod explain_model;
pub mod predict;
pub mod serve;
pub mod train;

use cnn::network::LayerSummary;

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
