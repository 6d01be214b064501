//! `cnn explain --model M IMAGE`: a picture through a trained model, layer by layer, as PNGs
//! (feature maps in a labelled grid with a colour legend, the first conv layer's filters, the
//! class probabilities) and an index.html that shows them in order with each layer's summary.

use crate::inside::{look_inside, maps_of, ranked, summary_line, LayerView};
use crate::plot::{probability_chart, MapGrid};
use anyhow::{bail, Context, Result};
use cnn::model_file;
use cnn::network::Workspace;
use cnn::preprocess::read_picture_within;
use cnn::viz::max_abs;
use cnn::Model;
use std::fmt::Write as _;
use std::path::Path;

/// What `cnn explain --model` was asked for besides the model and the picture.
pub struct Options<'a> {
    /// The folder for the pictures (default `explain/`, none with `json` alone).
    pub out: Option<&'a Path>,
    pub only_layer: Option<usize>,
    pub json: bool,
    pub quiet: bool,
    pub picture: &'a super::PictureArgs,
}

pub fn run(model_path: &Path, image_path: &Path, options: &Options<'_>) -> Result<()> {
    let Options {
        out,
        only_layer,
        json,
        quiet,
        picture,
    } = *options;
    let mut model = model_file::load(model_path)?;
    picture.apply(&mut model);
    let layer_count = model.network.nodes().len();
    if let Some(n) = only_layer {
        if n >= layer_count {
            bail!(
                "--layer {n}: the model has layers 0 to {}",
                layer_count.saturating_sub(1)
            );
        }
    }
    let picture = read_picture_within(image_path, picture.max_pixels)?;
    let inside = look_inside(&model, &picture, &mut Workspace::new())?;
    let shown: Vec<&LayerView> = inside
        .layers
        .iter()
        .filter(|l| only_layer.is_none_or(|n| n == l.summary.index))
        .collect();
    // With --json the values go to stdout and files only where --out asks for them.
    let out = match (out, json) {
        (Some(dir), _) => Some(dir.to_path_buf()),
        (None, false) => Some(Path::new("explain").to_path_buf()),
        (None, true) => None,
    };
    if let Some(dir) = &out {
        write_pictures(dir, &model, image_path, &inside, &shown, only_layer)
            .with_context(|| format!("cannot write the pictures to {}", dir.display()))?;
    }
    if json {
        let object = serde_json::json!({
            "model": model_path,
            "image": image_path,
            "class": inside.prediction.class,
            "probability": inside.prediction.probability,
            "classes": model.classes,
            "probabilities": inside.prediction.probabilities,
            "input": maps_of(&inside.input),
            "layers": shown,
        });
        println!("{object}");
        return Ok(());
    }
    println!("{} through {}:", image_path.display(), model_path.display());
    let summary: Vec<_> = shown.iter().map(|l| l.summary.clone()).collect();
    super::print_summary(&summary, model.network.input_shape());
    println!("top classes:");
    for (class, p) in ranked(&model.classes, &inside.prediction.probabilities)
        .into_iter()
        .take(5)
    {
        println!(
            "  {:<12} {:6.2}%",
            crate::printable::escaped(&class),
            100.0 * p
        );
    }
    if let (Some(dir), false) = (&out, quiet) {
        println!("pictures written to {}", dir.join("index.html").display());
    }
    Ok(())
}

/// A layer's maps as a grid: image-shaped outputs one map per channel, flat outputs (dense,
/// flatten) as one map of their values in rows of 16.
fn layer_grid<'a>(title: String, values: &'a [f32], shape: cnn::Shape) -> MapGrid<'a> {
    let range = match max_abs(values) {
        r if r > 0.0 => r,
        _ => 1.0,
    };
    if shape.is_flat() {
        let width = shape.channels.clamp(1, 16);
        MapGrid {
            title,
            maps: vec![(format!("{} values", shape.channels), values)],
            height: shape.channels.div_ceil(width),
            width,
            range,
        }
    } else {
        MapGrid {
            title,
            maps: values
                .chunks(shape.plane())
                .enumerate()
                .map(|(c, plane)| (format!("map {c}"), plane))
                .collect(),
            height: shape.height,
            width: shape.width,
            range,
        }
    }
}

fn write_pictures(
    dir: &Path,
    model: &Model,
    image_path: &Path,
    inside: &crate::inside::Inside,
    shown: &[&LayerView],
    only_layer: Option<usize>,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut html = String::new();
    let title = format!(
        "{} through the model: {} ({:.1}%)",
        image_path.display(),
        inside.prediction.class,
        100.0 * inside.prediction.probability
    );
    let _ = write!(
        html,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}\
         pre{{background:#f4f4f4;padding:.4em}}img{{max-width:100%;border:1px solid #ddd}}</style>\
         </head><body>\n<h1>{}</h1>\n<p>Colours: red positive, white 0, blue negative; each \
         picture's legend gives its scale.</p>\n",
        escape(&title),
        escape(&title)
    );

    let input_shape = model.network.input_shape();
    layer_grid(
        format!("input {input_shape} (after preprocessing)"),
        inside.input.sample(0),
        input_shape,
    )
    .save(&dir.join("input.png"))?;
    let _ = writeln!(
        html,
        "<h2>input</h2>\n<pre>input {input_shape}</pre>\n<img src=\"input.png\" alt=\"input\">"
    );

    // The first convolution's filters, when it is shown.
    let first_conv = model
        .network
        .nodes()
        .iter()
        .position(|n| n.layer().spec().kind() == "conv2d");
    if let Some(index) = first_conv.filter(|i| only_layer.is_none_or(|n| n == *i)) {
        let weights = &model.network.nodes()[index].layer().params()[0];
        if let [outs, ins, kh, kw] = weights.dims[..] {
            let per_filter = kh * kw;
            let maps = weights
                .value
                .chunks(per_filter)
                .enumerate()
                .take(outs * ins)
                .map(|(k, w)| {
                    let label = if ins == 1 {
                        format!("filter {k}")
                    } else {
                        format!("filter {} ch {}", k / ins, k % ins)
                    };
                    (label, w)
                })
                .collect();
            let grid = MapGrid {
                title: format!("layer {index} filters ({outs}x{ins}x{kh}x{kw} weights)"),
                maps,
                height: kh,
                width: kw,
                range: max_abs(&weights.value).max(f32::MIN_POSITIVE),
            };
            grid.save(&dir.join("filters.png"))?;
            let _ = writeln!(
                html,
                "<h2>filters of layer {index}</h2>\n<img src=\"filters.png\" alt=\"filters\">"
            );
        }
    }

    for view in shown {
        let summary = &view.summary;
        let values: Vec<f32> = view.maps.iter().flatten().flatten().copied().collect();
        let file = format!("layer_{:02}_{}.png", summary.index, summary.kind);
        let mut title = format!(
            "layer {} {} -> {}",
            summary.index, summary.layer, summary.output
        );
        if summary.index + 1 == model.network.nodes().len() {
            // The last layer's values are the class scores, in the model's class order.
            title.push_str(&format!(" (logits of {})", model.classes.join(", ")));
        }
        layer_grid(title, &values, summary.output).save(&dir.join(&file))?;
        let _ = writeln!(
            html,
            "<h2>layer {}: {}</h2>\n<pre>{}</pre>\n<img src=\"{file}\" alt=\"layer {}\">",
            summary.index,
            escape(&summary.layer),
            escape(&summary_line(summary)),
            summary.index
        );
    }

    probability_chart(
        &dir.join("probabilities.png"),
        &model.classes,
        &inside.prediction.probabilities,
    )?;
    let _ = writeln!(
        html,
        "<h2>class probabilities</h2>\n<img src=\"probabilities.png\" alt=\"probabilities\">\n</body></html>"
    );
    let index = dir.join("index.html");
    cnn::fsutil::write_atomically(&index, html.as_bytes())
        .with_context(|| format!("cannot write {}", index.display()))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
