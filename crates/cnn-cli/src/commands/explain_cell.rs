//! `cnn explain --model M IMAGE --at NODE:C,Y,X`: how one output value of one node was
//! computed for the picture, as the article shows its example: each input channel's window,
//! the kernel slice, the products and their sum, the bias, the result, the ReLU after it; for
//! pooling which input won.

use crate::printable::escaped;
use anyhow::{bail, Result};
use cnn::arithmetic::{explain_cell, Arithmetic, Cell, CellExplanation, Window};
use cnn::network::Workspace;
use cnn::preprocess::read_picture_within;
use cnn::{model_file, Mode, Model};
use image::DynamicImage;
use std::fmt::Write as _;
use std::path::Path;

/// Dense layers with more inputs than this show their largest products only.
const DENSE_TERMS_SHOWN: usize = 12;

pub fn run(
    model_path: &Path,
    image_path: &Path,
    at: &str,
    json: bool,
    picture: &super::PictureArgs,
) -> Result<()> {
    let mut model = model_file::load(model_path)?;
    picture.apply(&mut model);
    let (node, cell) = parse_at(&model, at)?;
    let picture = read_picture_within(image_path, picture.max_pixels)?;
    let explained = explain_picture_cell(&model, &picture, node, cell, &mut Workspace::new())?;
    if json {
        println!("{}", serde_json::to_string(&explained)?);
    } else {
        print!("{}", describe(&model, &explained));
    }
    Ok(())
}

/// `cell` of node `node` for `picture` through `model`.
pub fn explain_picture_cell(
    model: &Model,
    picture: &DynamicImage,
    node: usize,
    cell: Cell,
    workspace: &mut Workspace,
) -> Result<CellExplanation> {
    let input = model.input_from_picture(picture)?;
    model.network.forward(&input, workspace, Mode::Infer)?;
    Ok(explain_cell(&model.network, &input, workspace, node, cell)?)
}

/// `NODE:C,Y,X` for maps, `NODE:I` (or `NODE:I,0,0`) for flat outputs; NODE a name or index.
fn parse_at(model: &Model, at: &str) -> Result<(usize, Cell)> {
    let Some((node, position)) = at.rsplit_once(':') else {
        bail!("--at {at:?}: give NODE:CHANNEL,ROW,COLUMN (or NODE:INDEX for a flat output)");
    };
    let node = model.network.find_node(node)?;
    let numbers: Vec<usize> = position
        .split(',')
        .map(|n| n.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            anyhow::anyhow!("--at {at:?}: the position must be numbers, as in 3:0,4,5 or fc:2")
        })?;
    let cell = match numbers[..] {
        [channel] => Cell {
            channel,
            y: 0,
            x: 0,
        },
        [channel, y, x] => Cell { channel, y, x },
        _ => bail!("--at {at:?}: give one number (a flat output) or three (channel,row,column)"),
    };
    Ok((node, cell))
}

fn number(value: f32) -> String {
    format!("{value:.4}")
}

/// A number inside a formula: negative ones in parentheses, `x - (-1.5)`.
fn operand(value: f32) -> String {
    match value < 0.0 {
        true => format!("({})", number(value)),
        false => number(value),
    }
}

/// How a value is named in the text: `the input`, `node conv1`.
fn value_name(name: &str) -> String {
    match name {
        "input" => "the input".into(),
        name => format!("node {}", escaped(name)),
    }
}

/// The explanation as the text `cnn explain --at` prints.
pub fn describe(model: &Model, e: &CellExplanation) -> String {
    let mut text = String::new();
    let Cell { channel, y, x } = e.cell;
    let nodes = model.network.nodes();
    let reads: Vec<String> = e.inputs.iter().map(|v| value_name(v)).collect();
    let position = if nodes[e.index].layer().output_shape().is_flat() {
        match e.index + 1 == nodes.len() {
            true => format!(
                "value {channel} (the score of class {})",
                escaped(&model.classes[channel])
            ),
            false => format!("value {channel}"),
        }
    } else {
        format!("channel {channel}, row {y}, column {x}")
    };
    let _ = writeln!(
        text,
        "node {} ({}, reads {}), {position}:",
        escaped(&e.node),
        e.layer,
        reads.join(" and ")
    );
    // A dense layer after a flatten: its values named by the maps they came from.
    let unflattened = nodes[e.index].inputs().first().and_then(|&v| {
        let producer = nodes.get(v.checked_sub(1)?)?;
        (producer.layer().spec().kind() == "flatten").then(|| {
            let from = producer.inputs()[0];
            let name = match from {
                0 => "input".to_string(),
                v => nodes[v - 1].name().to_string(),
            };
            let shape = match from {
                0 => model.network.input_shape(),
                v => nodes[v - 1].layer().output_shape(),
            };
            (value_name(&name), shape)
        })
    });
    match &e.arithmetic {
        Arithmetic::WeightedSum {
            windows,
            bias,
            result,
        } => {
            for window in windows {
                weighted_window(&mut text, e, window, unflattened.as_ref());
            }
            if windows.len() > 1 {
                let sums: Vec<String> = windows.iter().map(|w| number(w.sum)).collect();
                let total: f64 = windows.iter().map(|w| f64::from(w.sum)).sum();
                let _ = writeln!(
                    text,
                    "sum of the {} windows: {} = {}",
                    windows.len(),
                    sums.join(" + "),
                    number(total as f32)
                );
            }
            if let Some(bias) = bias {
                let _ = writeln!(text, "+ bias {}", number(*bias));
            }
            let _ = writeln!(text, "= {}", number(*result));
        }
        Arithmetic::Pool {
            max,
            window,
            winner,
            result,
        } => {
            let _ = writeln!(
                text,
                "{} in a window of {}, channel {}:",
                if *max {
                    "the largest value"
                } else {
                    "the mean"
                },
                value_name(&e.inputs[window.input]),
                window.channel.unwrap_or(0)
            );
            grid(
                &mut text,
                &[("window", &window.values[..])],
                window,
                *winner,
            );
            let inside = window.cells.iter().filter(|c| c.is_some()).count();
            match (max, winner.and_then(|w| window.cells[w])) {
                (true, Some(won)) => {
                    let _ = writeln!(
                        text,
                        "= {} (row {}, column {} of {}; marked [ ])",
                        number(*result),
                        won.y,
                        won.x,
                        value_name(&e.inputs[window.input])
                    );
                }
                _ => {
                    let _ = writeln!(
                        text,
                        "= {} / {inside} values inside the input = {}",
                        number(window.sum),
                        number(*result)
                    );
                }
            }
        }
        Arithmetic::Function {
            name,
            formula,
            input,
            result,
        } => {
            let _ = writeln!(
                text,
                "{name}: {formula} with x = {}: {}",
                number(*input),
                number(*result)
            );
        }
        Arithmetic::Normalize {
            input,
            mean,
            variance,
            epsilon,
            weight,
            bias,
            result,
        } => {
            let _ = writeln!(
                text,
                "(x - mean) / sqrt(variance + eps) * weight + bias\n= ({} - {}) / sqrt({} + {epsilon:e}) * {} + {}\n= {}",
                number(*input),
                operand(*mean),
                number(*variance),
                operand(*weight),
                operand(*bias),
                number(*result)
            );
        }
        Arithmetic::Sum { terms, result } => {
            let parts: Vec<String> = terms
                .iter()
                .zip(&e.inputs)
                .map(|(t, name)| format!("{} ({})", number(*t), value_name(name)))
                .collect();
            let _ = writeln!(text, "{} = {}", parts.join(" + "), number(*result));
        }
        Arithmetic::Copy {
            input,
            cell,
            result,
        } => {
            let _ = writeln!(
                text,
                "the value of {} at channel {}, row {}, column {}: {}",
                value_name(&e.inputs[*input]),
                cell.channel,
                cell.y,
                cell.x,
                number(*result)
            );
        }
    }
    let _ = writeln!(text, "(the engine computed {})", number(e.value));
    if let Some(then) = &e.then {
        let _ = write!(text, "then {}", describe(model, then));
    }
    text
}

/// One window of a weighted sum: as three grids (values, weights, products) for a
/// convolution, as a list of terms for a dense layer (named by the maps they were flattened
/// from, when `unflattened` gives those maps' name and shape).
fn weighted_window(
    text: &mut String,
    e: &CellExplanation,
    window: &Window,
    unflattened: Option<&(String, cnn::Shape)>,
) {
    let source = value_name(&e.inputs[window.input]);
    match window.channel {
        Some(channel) => {
            let rows: Vec<usize> = window.cells.iter().flatten().map(|c| c.y).collect();
            let columns: Vec<usize> = window.cells.iter().flatten().map(|c| c.x).collect();
            let span = |v: &[usize]| match (v.iter().min(), v.iter().max()) {
                (Some(a), Some(b)) => format!("{a}-{b}"),
                _ => "none".into(),
            };
            let _ = writeln!(
                text,
                "{source}, channel {channel}, rows {}, columns {} (pad: outside the input, 0):",
                span(&rows),
                span(&columns)
            );
            grid(
                text,
                &[
                    ("window", &window.values[..]),
                    ("kernel", &window.weights[..]),
                    ("products", &window.products[..]),
                ],
                window,
                None,
            );
            let _ = writeln!(text, "  sum of the products: {}", number(window.sum));
        }
        None => {
            let mut order: Vec<usize> = (0..window.values.len()).collect();
            let shown = if order.len() > DENSE_TERMS_SHOWN {
                order.sort_by(|&a, &b| {
                    window.products[b]
                        .abs()
                        .total_cmp(&window.products[a].abs())
                });
                let _ = writeln!(
                    text,
                    "{source}: {} values; the {DENSE_TERMS_SHOWN} largest products:",
                    order.len()
                );
                &order[..DENSE_TERMS_SHOWN]
            } else {
                let _ = writeln!(text, "{source}: {} values:", order.len());
                &order[..]
            };
            for &i in shown {
                let position = match unflattened {
                    Some((name, shape)) => {
                        let c = Cell::at(i, *shape);
                        format!(
                            "{i} ({name}, channel {}, row {}, column {})",
                            c.channel, c.y, c.x
                        )
                    }
                    None => i.to_string(),
                };
                let _ = writeln!(
                    text,
                    "  value {position}: {} x weight {} = {}",
                    number(window.values[i]),
                    number(window.weights[i]),
                    number(window.products[i])
                );
            }
            if shown.len() < order.len() {
                let shown_sum: f64 = shown.iter().map(|&i| f64::from(window.products[i])).sum();
                let _ = writeln!(
                    text,
                    "  ... and {} more products, summing to {}",
                    order.len() - shown.len(),
                    number((f64::from(window.sum) - shown_sum) as f32)
                );
            }
            let _ = writeln!(text, "  sum of the products: {}", number(window.sum));
        }
    }
}

/// Grids side by side, one row of the window per line: the window's values first (padding
/// shows as `pad`, the winner in brackets), then those computed with them.
fn grid(text: &mut String, grids: &[(&str, &[f32])], window: &Window, winner: Option<usize>) {
    const WIDTH: usize = 9;
    let block = window.width * WIDTH;
    let mut line = String::from(" ");
    for (title, _) in grids {
        let _ = write!(line, " {title:<block$}  ");
    }
    let _ = writeln!(text, "{}", line.trim_end());
    for row in 0..window.height {
        let mut line = String::from(" ");
        for (g, (_, values)) in grids.iter().enumerate() {
            line.push(' ');
            for col in 0..window.width {
                let i = row * window.width + col;
                let cell = match (window.cells[i], values.get(i)) {
                    (None, _) if g == 0 => "pad".to_string(),
                    (_, Some(v)) if winner == Some(i) => format!("[{}]", number(*v)),
                    (_, Some(v)) => number(*v),
                    (_, None) => String::new(),
                };
                let _ = write!(line, "{cell:>WIDTH$}");
            }
            line.push_str("  ");
        }
        let _ = writeln!(text, "{}", line.trim_end());
    }
}
