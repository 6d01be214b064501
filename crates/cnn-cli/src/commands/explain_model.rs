//! `cnn explain --model M IMAGE`: a picture through a trained model, layer by layer, as PNGs
//! (feature maps in a labelled grid with a colour legend, the first conv layer's filters, the
//! class probabilities) and an index.html that shows them in order with each layer's summary.

use crate::inside::{look_inside, maps_of, ranked, summary_line, LayerView};
use crate::plot::{probability_chart, AttributionPicture, MapGrid, Scale};
use crate::printable::html_escaped;
use anyhow::{bail, Context, Result};
use cnn::attribution::{self, Attribution, Method};
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
    /// Attribution maps to compute, for `class` (a name or an index; default the top class).
    pub attributions: &'a [Method],
    pub class: Option<&'a str>,
    pub target_layer: Option<&'a str>,
    pub json: bool,
    pub quiet: bool,
    pub picture: &'a super::PictureArgs,
}

pub fn run(model_path: &Path, image_path: &Path, options: &Options<'_>) -> Result<()> {
    let Options {
        out,
        only_layer,
        attributions,
        class,
        target_layer,
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
    let target_node = target_layer
        .map(|name| model.network.find_node(name))
        .transpose()?;
    let picture = read_picture_within(image_path, picture.max_pixels)?;
    let inside = look_inside(&model, &picture, &mut Workspace::new())?;
    let class = match class {
        None => inside.prediction.index,
        Some(name) => class_index(&model.classes, name)?,
    };
    let attribution_options = attribution::Options {
        target_node,
        ..attribution::Options::default()
    };
    let maps = attributions
        .iter()
        .map(|&method| {
            attribution::attribute(
                &model.network,
                &inside.input,
                class,
                method,
                &attribution_options,
                &mut Workspace::new(),
            )
        })
        .collect::<cnn::Result<Vec<_>>>()?;
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
        write_pictures(dir, &model, image_path, &inside, &shown, only_layer, &maps)
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
            "attributions": maps.iter().map(|a| serde_json::json!({
                "method": a.method.name(),
                "class": model.classes[a.class],
                "class_index": a.class,
                "detail": a.detail,
                "height": a.height,
                "width": a.width,
                "map": a.rows(),
            })).collect::<Vec<_>>(),
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
    for map in &maps {
        let (y, x) = peak(map);
        let detail = match map.detail.as_str() {
            "" => String::new(),
            d => format!(", {d}"),
        };
        println!(
            "{} for {}{detail}: strongest at row {y}, column {x}{}",
            map.method.name(),
            crate::printable::escaped(&model.classes[map.class]),
            match &out {
                Some(dir) => format!(" ({})", dir.join(attribution_file(map.method)).display()),
                None => String::new(),
            }
        );
    }
    if let (Some(dir), false) = (&out, quiet) {
        println!("pictures written to {}", dir.join("index.html").display());
    }
    Ok(())
}

/// A class given by name, or by its index.
fn class_index(classes: &[String], name: &str) -> Result<usize> {
    if let Some(i) = classes.iter().position(|c| c == name) {
        return Ok(i);
    }
    match name.parse::<usize>() {
        Ok(i) if i < classes.len() => Ok(i),
        _ => bail!(
            "--class {name:?}: the model's classes are {} (or an index from 0 to {})",
            classes.join(", "),
            classes.len().saturating_sub(1)
        ),
    }
}

/// Where a map is largest (for signed maps, the strongest evidence for the class).
fn peak(map: &Attribution) -> (usize, usize) {
    let best = (0..map.map.len()).fold(0, |b, i| if map.map[i] > map.map[b] { i } else { b });
    (best / map.width.max(1), best % map.width.max(1))
}

fn attribution_file(method: Method) -> String {
    format!("attribution_{}.png", method.name())
}

/// What each method's picture shows, for index.html.
fn attribution_caption(method: Method) -> &'static str {
    match method {
        Method::GradCam => "Grad-CAM: the node's feature maps, each weighted by how much the class score grows with it, summed; only positive evidence is shown.",
        Method::Saliency => "Saliency: how strongly the class score reacts to each pixel (the largest |gradient| over the channels).",
        Method::IntegratedGradients => "Integrated gradients: each pixel's share of the score's change from the background to this picture; red pixels speak for the class, blue against it.",
        Method::Occlusion => "Occlusion: how much the class's log-probability ln p drops when a patch of background covers each place, like the article's feature sliding over the image (a drop of 0.69 halves the probability); red: covering it hurts the class.",
    }
}

/// The input as grey levels from 0 to 1: the mean over its channels, stretched to its range.
fn grey_input(input: &cnn::Tensor) -> Vec<f32> {
    let shape = input.shape();
    let plane = shape.plane();
    let mut grey = vec![0.0f32; plane];
    for channel in input.sample(0).chunks(plane) {
        for (g, &v) in grey.iter_mut().zip(channel) {
            *g += v / shape.channels as f32;
        }
    }
    let (low, high) = grey
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let span = (high - low).max(f32::MIN_POSITIVE);
    grey.iter().map(|&v| (v - low) / span).collect()
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
            show_values: false,
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
            show_values: false,
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
    maps: &[Attribution],
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
        html_escaped(&title),
        html_escaped(&title)
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
                show_values: false,
            };
            grid.save(&dir.join("filters.png"))?;
            let _ = writeln!(
                html,
                "<h2>filters of layer {index}</h2>\n<img src=\"filters.png\" alt=\"filters\">"
            );
        }
    }

    if let Some(first) = maps.first() {
        let class = &model.classes[first.class];
        let _ = writeln!(html, "<h2>why {}?</h2>", html_escaped(class));
        let grey = grey_input(&inside.input);
        for map in maps {
            // The 99th percentile of |value|: a few extreme pixels (integrated gradients has
            // them) would leave the rest of the map invisible.
            let mut magnitudes: Vec<f32> = map.map.iter().map(|v| v.abs()).collect();
            magnitudes.sort_by(f32::total_cmp);
            let range = magnitudes
                .get(magnitudes.len() * 99 / 100)
                .copied()
                .unwrap_or(0.0)
                .max(f32::MIN_POSITIVE);
            let scale = if map.method.is_signed() {
                Scale::Signed(range)
            } else {
                Scale::Heat(range)
            };
            let detail = match map.detail.as_str() {
                "" => String::new(),
                d => format!(" ({d})"),
            };
            let file = attribution_file(map.method);
            // The picture's title keeps the settings, the page the whole detail.
            let title = match map.detail.split(';').next().unwrap_or_default() {
                "" => format!("{} for {class}", map.method.name()),
                settings => format!("{} for {class} ({settings})", map.method.name()),
            };
            AttributionPicture {
                title,
                grey: &grey,
                map: &map.map,
                height: map.height,
                width: map.width,
                scale,
            }
            .save(&dir.join(&file))?;
            let _ = writeln!(
                html,
                "<h3>{}{}</h3>\n<p>{}</p>\n<img src=\"{file}\" alt=\"{}\">",
                map.method.name(),
                html_escaped(&detail),
                attribution_caption(map.method),
                map.method.name()
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
            html_escaped(&summary.layer),
            html_escaped(&summary_line(summary)),
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
