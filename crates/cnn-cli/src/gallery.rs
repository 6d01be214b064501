//! The model's mistakes as a small web site (`cnn eval --gallery DIR`, and `/gallery/` of
//! `cnn serve`): the confusion matrix, each cell a link to a page of its images sorted by
//! loss (the most confident mistakes first), each with the class probabilities and a Grad-CAM
//! overlay of what the model looked at for the class it chose; and on the first page the most
//! confident mistakes of all.

use crate::printable::html_escaped;
use anyhow::Result;
use cnn::attribution::{self, Method};
use cnn::data::Dataset;
use cnn::loss::{argmax, cross_entropy, softmax};
use cnn::viz::{blend, diverging_colour, heat_colour};
use cnn::{Model, Tensor, Workspace};
use image::{Rgb, RgbImage};
use std::fmt::Write as _;

/// Images shown on a cell's page, and mistakes on the first page.
const PER_CELL: usize = 40;
const MISTAKES: usize = 30;
/// Pixels per image pixel in the pictures.
const ZOOM: u32 = 4;

/// One page or picture of the gallery: its path inside the gallery and its bytes.
pub struct File {
    pub path: String,
    pub bytes: Vec<u8>,
}

/// What the model said about one image.
struct Verdict {
    index: usize,
    label: usize,
    predicted: usize,
    probabilities: Vec<f32>,
    loss: f32,
}

/// Builds the gallery of `model` on `data` (its test split), described as `title`.
pub fn build(model: &Model, data: &Dataset, title: &str) -> Result<Vec<File>> {
    let verdicts = judge(model, data)?;
    let classes = &model.classes;
    let n = classes.len();
    let mut cells: Vec<Vec<Vec<&Verdict>>> = vec![vec![Vec::new(); n]; n];
    for v in &verdicts {
        cells[v.label][v.predicted].push(v);
    }
    for row in &mut cells {
        for cell in row {
            cell.sort_by(|a, b| b.loss.total_cmp(&a.loss));
        }
    }
    let mut mistakes: Vec<&Verdict> = verdicts.iter().filter(|v| v.label != v.predicted).collect();
    mistakes.sort_by(|a, b| b.loss.total_cmp(&a.loss));
    mistakes.truncate(MISTAKES);

    // The pictures of every image that a page shows, each once.
    let mut shown: Vec<usize> = cells
        .iter()
        .flatten()
        .flat_map(|cell| cell.iter().take(PER_CELL).map(|v| v.index))
        .collect();
    shown.sort_unstable();
    shown.dedup();
    let mut files = Vec::new();
    let mut workspace = Workspace::new();
    for &index in &shown {
        let v = &verdicts[index];
        files.push(File {
            path: format!("images/{index}.png"),
            bytes: png(&zoomed(&grey_or_colour(data, index)))?,
        });
        files.push(File {
            path: format!("images/{index}-cam.png"),
            bytes: png(&zoomed(&overlay(
                model,
                data,
                index,
                v.predicted,
                &mut workspace,
            )?))?,
        });
    }

    let correct: usize = (0..n).map(|c| cells[c][c].len()).sum();
    let mut html = page_head(&format!("{title}: the model's mistakes"));
    let _ = writeln!(
        html,
        "<h1>{}</h1>\n<p>{} images, {} right ({:.2}%). Rows: the true class; columns: the class \
         the model chose. Each count links to its images, the highest loss first.</p>",
        html_escaped(title),
        verdicts.len(),
        correct,
        100.0 * correct as f64 / verdicts.len().max(1) as f64
    );
    html.push_str("<table class=\"confusion\"><tr><th>true \\ chosen</th>");
    for class in classes {
        let _ = write!(html, "<th>{}</th>", html_escaped(class));
    }
    html.push_str("</tr>\n");
    for (t, row) in cells.iter().enumerate() {
        let total: usize = row.iter().map(Vec::len).sum();
        let _ = write!(html, "<tr><th>{}</th>", html_escaped(&classes[t]));
        for (p, cell) in row.iter().enumerate() {
            let share = cell.len() as f32 / total.max(1) as f32;
            let colour = if t == p {
                blend(Rgb([255, 255, 255]), Rgb([120, 170, 120]), share)
            } else {
                blend(
                    Rgb([255, 255, 255]),
                    Rgb([200, 60, 60]),
                    (4.0 * share).min(1.0),
                )
            };
            let style = format!("background:rgb({},{},{})", colour[0], colour[1], colour[2]);
            match cell.len() {
                0 => {
                    let _ = write!(html, "<td style=\"{style}\">0</td>");
                }
                count => {
                    let _ = write!(
                        html,
                        "<td style=\"{style}\"><a href=\"{}\">{count}</a></td>",
                        cell_page(t, p)
                    );
                }
            }
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n<h2>the most confident mistakes</h2>\n<div class=\"cards\">\n");
    for v in &mistakes {
        card(&mut html, v, classes, true);
    }
    html.push_str("</div>\n</body></html>\n");
    files.push(File {
        path: "index.html".into(),
        bytes: html.into_bytes(),
    });

    for (t, row) in cells.iter().enumerate() {
        for (p, cell) in row.iter().enumerate() {
            if cell.is_empty() {
                continue;
            }
            let heading = if t == p {
                format!("{} called {0}: right", classes[t])
            } else {
                format!("{} called {}: wrong", classes[t], classes[p])
            };
            let mut html = page_head(&format!("{title}: {heading}"));
            let _ = writeln!(
                html,
                "<p><a href=\"index.html\">back to the confusion matrix</a></p>\n<h1>{}</h1>\n\
                 <p>{} images, the highest loss first{}. Beside each image, Grad-CAM for the class \
                 the model chose: red where the model found evidence for it.</p>\n<div class=\"cards\">",
                html_escaped(&heading),
                cell.len(),
                match cell.len() > PER_CELL {
                    true => format!("; the first {PER_CELL} shown"),
                    false => String::new(),
                }
            );
            for v in cell.iter().take(PER_CELL) {
                card(&mut html, v, classes, false);
            }
            html.push_str("</div>\n</body></html>\n");
            files.push(File {
                path: cell_page(t, p),
                bytes: html.into_bytes(),
            });
        }
    }
    Ok(files)
}

fn cell_page(truth: usize, chosen: usize) -> String {
    format!("cell-{truth}-{chosen}.html")
}

fn page_head(title: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;margin:1.5em}}table.confusion td,table.confusion th\
         {{border:1px solid #ccc;padding:.3em .6em;text-align:right}}table.confusion\
         {{border-collapse:collapse}}.cards{{display:flex;flex-wrap:wrap;gap:.8em}}\
         .card{{border:1px solid #ddd;padding:.4em;font-size:.8em;font-family:monospace}}\
         .card img{{image-rendering:pixelated;margin-right:2px}}</style></head><body>\n",
        html_escaped(title)
    )
}

/// One image: the picture, its Grad-CAM, its loss and its three likeliest classes.
fn card(html: &mut String, v: &Verdict, classes: &[String], link: bool) {
    let mut ranked: Vec<usize> = (0..classes.len()).collect();
    ranked.sort_by(|&a, &b| v.probabilities[b].total_cmp(&v.probabilities[a]));
    let lines: Vec<String> = ranked
        .iter()
        .take(3)
        .map(|&c| {
            let mark = if c == v.label { " (true)" } else { "" };
            format!(
                "{} {:.1}%{mark}",
                html_escaped(&classes[c]),
                100.0 * v.probabilities[c]
            )
        })
        .collect();
    let pictures = format!(
        "<img src=\"images/{0}.png\" alt=\"image {0}\"><img src=\"images/{0}-cam.png\" alt=\"Grad-CAM of image {0}\">",
        v.index
    );
    let pictures = match link {
        true => format!(
            "<a href=\"{}\">{pictures}</a>",
            cell_page(v.label, v.predicted)
        ),
        false => pictures,
    };
    let _ = writeln!(
        html,
        "<div class=\"card\">{pictures}<br>#{} loss {:.2}<br>{}</div>",
        v.index,
        v.loss,
        lines.join("<br>")
    );
}

/// The model's probabilities for every image of `data`.
fn judge(model: &Model, data: &Dataset) -> Result<Vec<Verdict>> {
    let mut workspace = Workspace::new();
    let (mut batch, mut labels) = (Tensor::empty(), Vec::new());
    let indices: Vec<usize> = (0..data.len()).collect();
    let mut verdicts = Vec::with_capacity(data.len());
    for chunk in indices.chunks(256) {
        data.fill_batch(chunk, &model.preprocessing, &mut batch, &mut labels);
        let logits = model.network.infer(&batch, &mut workspace)?;
        for (n, (&index, &label)) in chunk.iter().zip(&labels).enumerate() {
            let row = logits.sample(n);
            let mut probabilities = vec![0.0; row.len()];
            softmax(row, &mut probabilities);
            verdicts.push(Verdict {
                index,
                label,
                predicted: argmax(row),
                probabilities,
                loss: cross_entropy(row, label),
            });
        }
    }
    Ok(verdicts)
}

/// Image `index` of `data` as it is stored (grey, or RGB for three channels).
fn grey_or_colour(data: &Dataset, index: usize) -> RgbImage {
    let shape = data.shape();
    let pixels = data.image(index);
    let plane = shape.plane();
    RgbImage::from_fn(shape.width as u32, shape.height as u32, |x, y| {
        let at = y as usize * shape.width + x as usize;
        match shape.channels {
            3 => Rgb([pixels[at], pixels[plane + at], pixels[2 * plane + at]]),
            _ => Rgb([pixels[at]; 3]),
        }
    })
}

/// Grad-CAM of `class` over image `index` (saliency for a network without convolutions).
fn overlay(
    model: &Model,
    data: &Dataset,
    index: usize,
    class: usize,
    workspace: &mut Workspace,
) -> Result<RgbImage> {
    let (mut input, mut labels) = (Tensor::empty(), Vec::new());
    data.fill_batch(&[index], &model.preprocessing, &mut input, &mut labels);
    let method = match attribution::default_gradcam_node(&model.network) {
        Some(_) => Method::GradCam,
        None => Method::Saliency,
    };
    let map = attribution::attribute(
        &model.network,
        &input,
        class,
        method,
        &attribution::Options::default(),
        workspace,
    )?;
    let range = map.map.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let picture = grey_or_colour(data, index);
    Ok(RgbImage::from_fn(
        picture.width(),
        picture.height(),
        |x, y| {
            let value = map.map[y as usize * map.width + x as usize];
            let colour = if method.is_signed() {
                diverging_colour(value, range)
            } else {
                heat_colour(value, range)
            };
            let p = picture.get_pixel(x, y);
            let grey = ((u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2])) / 3) as u8;
            blend(Rgb([grey; 3]), colour, 0.5)
        },
    ))
}

fn zoomed(picture: &RgbImage) -> RgbImage {
    image::imageops::resize(
        picture,
        picture.width() * ZOOM,
        picture.height() * ZOOM,
        image::imageops::FilterType::Nearest,
    )
}

fn png(picture: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    picture.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    Ok(bytes)
}
