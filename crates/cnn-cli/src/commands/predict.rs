//! `cnn predict`: pictures in, one answer per picture out, as text, JSON lines or CSV. Folders
//! are searched for pictures and globs expanded; pictures are decoded and prepared on every
//! core and classified in batches by the fused inference path.

use super::PictureArgs;
use crate::inside::ranked;
use crate::printable::{escaped, one_line};
use crate::Global;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use cnn::network::Workspace;
use cnn::preprocess::read_picture_within;
use cnn::{model_file, Model, Prediction, Tensor};
use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `PATH: CLASS (PROBABILITY%)`, one line per picture; failures on stderr.
    Text,
    /// One JSON object per picture and line.
    Json,
    /// A header, then one row per picture.
    Csv,
}

#[derive(Args)]
pub struct PredictArgs {
    /// Model file (safetensors) written by `cnn train`.
    #[arg(long)]
    model: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// The same as --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// Also give the N most likely classes, most likely first.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    top_k: Option<u16>,
    /// Mark answers whose probability is below P (0 to 1) as unsure.
    #[arg(long, value_name = "P")]
    min_confidence: Option<f32>,
    /// Pictures classified at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    #[command(flatten)]
    picture: PictureArgs,
    /// Also write the prepared input of every picture read, in order, as one float32 `.npy`
    /// tensor `[N, C, H, W]`: what the network saw, for `cnn run` or another runtime.
    #[arg(long, value_name = "FILE.npy")]
    save_input: Option<PathBuf>,
    /// Picture files (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM) of any size, folders (searched
    /// recursively for files with those extensions) or glob patterns such as 'photos/*.jpg'.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

/// The extensions a folder's files must have to be read as pictures.
const PICTURE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff", "pnm", "pbm", "pgm", "ppm", "pam",
];

/// From how many pictures on a progress bar is drawn (on a terminal, without --quiet).
const PROGRESS_FROM: usize = 300;

/// One picture to classify, or a path that named none.
struct Input {
    path: PathBuf,
    problem: Option<String>,
}

/// A picture's answer, or why there is none.
type Answer = std::result::Result<Prediction, String>;

pub fn run(args: PredictArgs, global: Global) -> Result<()> {
    if let Some(p) = args.min_confidence {
        if !(0.0..=1.0).contains(&p) {
            return crate::usage::usage_error(format!(
                "--min-confidence must be a probability from 0 to 1, not {p}"
            ));
        }
    }
    let format = if args.json { Format::Json } else { args.format };
    let mut model = model_file::load(&args.model)?;
    args.picture.apply(&mut model);
    let inputs = expand(&args.paths);
    let top_k = args.top_k.map_or(1, usize::from).min(model.classes.len());
    let mut writer = Writer {
        out: std::io::BufWriter::new(std::io::stdout().lock()),
        format,
        classes: model.classes.clone(),
        top_k: args.top_k.map(|_| top_k),
        min_confidence: args.min_confidence,
    };
    let progress = (inputs.len() >= PROGRESS_FROM && !global.quiet).then(|| {
        crate::progress::bar(
            inputs.len(),
            "[{bar:30}] {pos}/{len} pictures  {rate}  done in {eta}",
        )
    });
    let mut workspace = Workspace::new();
    let mut failures = 0;
    let mut seen = args.save_input.as_ref().map(|_| Vec::new());
    let result = (|| -> std::io::Result<()> {
        writer.header()?;
        for chunk in inputs.chunks(args.batch as usize) {
            let answers = classify(
                &model,
                chunk,
                args.picture.max_pixels,
                &mut workspace,
                seen.as_mut(),
            );
            for (input, answer) in chunk.iter().zip(answers) {
                if answer.is_err() {
                    failures += 1;
                }
                writer.answer(&input.path, &answer)?;
            }
            if let Some(bar) = &progress {
                bar.inc(chunk.len() as u64);
            }
        }
        writer.out.flush()
    })();
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    match result {
        // A reader that stopped early (`| head`) is not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        other => other.context("cannot write the predictions")?,
    }
    if let (Some(path), Some(values)) = (&args.save_input, seen) {
        let shape = model.network.input_shape();
        let count = values.len() / shape.len();
        let dims = [count, shape.channels, shape.height, shape.width].map(|d| d as u64);
        crate::npy::write(path, &dims, &values)?;
    }
    if failures > 0 {
        if format != Format::Text {
            eprintln!(
                "error: {failures} of {} pictures could not be classified (see their `error`)",
                inputs.len()
            );
        }
        // Each failure has been reported; the exit status says some failed.
        std::process::exit(1);
    }
    Ok(())
}

/// Decodes and prepares `inputs` on every core, then classifies those that could be read as
/// one batch; appends the batch to `seen` if given.
fn classify(
    model: &Model,
    inputs: &[Input],
    max_pixels: u64,
    workspace: &mut Workspace,
    seen: Option<&mut Vec<f32>>,
) -> Vec<Answer> {
    let shape = model.network.input_shape();
    let prepared: Vec<std::result::Result<Vec<u8>, String>> = inputs
        .par_iter()
        .map(|input| {
            if let Some(problem) = &input.problem {
                return Err(problem.clone());
            }
            read_picture_within(&input.path, max_pixels)
                .and_then(|picture| model.preprocessing.prepare_image(&picture, shape))
                .map_err(|e| without_path(e, &input.path))
        })
        .collect();
    let readable = prepared.iter().filter(|p| p.is_ok()).count();
    let mut batch = Tensor::zeros(readable, shape);
    for (slot, pixels) in prepared.iter().flatten().enumerate() {
        model
            .preprocessing
            .normalize(pixels, shape, batch.sample_mut(slot));
    }
    if let Some(seen) = seen {
        seen.extend_from_slice(batch.data());
    }
    let mut predictions = match model.predict(&batch, workspace) {
        _ if readable == 0 => Vec::new().into_iter(),
        Ok(predictions) => predictions.into_iter(),
        Err(e) => {
            let message = e.to_string();
            return prepared.iter().map(|_| Err(message.clone())).collect();
        }
    };
    prepared
        .into_iter()
        .map(|p| p.map(|_| predictions.next().expect("one prediction per picture read")))
        .collect()
}

/// An error about `path` without the path, which the output names already.
fn without_path(error: cnn::Error, path: &Path) -> String {
    match error {
        cnn::Error::File { message, .. } => message,
        cnn::Error::Io { error, .. } => cnn::error::describe_io(&error),
        other => {
            let text = other.to_string();
            let prefix = format!("{}: ", path.display());
            text.strip_prefix(&prefix)
                .map_or(text.clone(), str::to_string)
        }
    }
}

/// The pictures the command line names, in its order: files as given, folders searched
/// recursively (pictures only, by extension, sorted by path), globs expanded (sorted).
fn expand(paths: &[PathBuf]) -> Vec<Input> {
    let mut inputs = Vec::new();
    for path in paths {
        if path.is_dir() {
            match pictures_in(path) {
                Ok(found) if found.is_empty() => inputs.push(Input {
                    path: path.clone(),
                    problem: Some("a folder with no picture files".into()),
                }),
                Ok(found) => inputs.extend(found.into_iter().map(|path| Input {
                    path,
                    problem: None,
                })),
                Err(e) => inputs.push(Input {
                    path: path.clone(),
                    problem: Some(cnn::error::describe_io(&e)),
                }),
            }
            continue;
        }
        let pattern = path.to_str().filter(|p| p.contains(['*', '?', '[']));
        match pattern {
            Some(pattern) if !path.exists() => inputs.extend(glob_pictures(pattern, path)),
            _ => inputs.push(Input {
                path: path.clone(),
                problem: None,
            }),
        }
    }
    inputs
}

fn glob_pictures(pattern: &str, path: &Path) -> Vec<Input> {
    let failed = |problem: String| {
        vec![Input {
            path: path.to_path_buf(),
            problem: Some(problem),
        }]
    };
    let entries = match glob::glob(pattern) {
        Ok(entries) => entries,
        Err(e) => return failed(format!("not a valid pattern: {e}")),
    };
    let mut inputs = Vec::new();
    for entry in entries {
        match entry {
            Ok(found) if found.is_dir() => match pictures_in(&found) {
                Ok(pictures) => inputs.extend(pictures.into_iter().map(|path| Input {
                    path,
                    problem: None,
                })),
                Err(e) => inputs.push(Input {
                    path: found,
                    problem: Some(cnn::error::describe_io(&e)),
                }),
            },
            Ok(found) => inputs.push(Input {
                path: found,
                problem: None,
            }),
            Err(e) => inputs.push(Input {
                path: e.path().to_path_buf(),
                problem: Some(cnn::error::describe_io(e.error())),
            }),
        }
    }
    if inputs.is_empty() {
        return failed("no file matches this pattern".into());
    }
    inputs
}

/// Picture files under `dir`, at any depth, sorted; hidden files and folders skipped, links to
/// folders not followed.
fn pictures_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(path);
            } else if is_picture_name(&path) && (kind.is_file() || path.is_file()) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn is_picture_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PICTURE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Writes the answers in the chosen format.
struct Writer<W: Write> {
    out: W,
    format: Format,
    classes: Vec<String>,
    /// `--top-k`, capped at the number of classes.
    top_k: Option<usize>,
    min_confidence: Option<f32>,
}

impl<W: Write> Writer<W> {
    fn header(&mut self) -> std::io::Result<()> {
        if self.format != Format::Csv {
            return Ok(());
        }
        let mut columns = vec!["file".to_string(), "class".into(), "probability".into()];
        for rank in 2..=self.top_k.unwrap_or(1) {
            columns.push(format!("class_{rank}"));
            columns.push(format!("probability_{rank}"));
        }
        if self.min_confidence.is_some() {
            columns.push("unsure".into());
        }
        columns.push("error".into());
        writeln!(self.out, "{}", columns.join(","))
    }

    fn answer(&mut self, path: &Path, answer: &Answer) -> std::io::Result<()> {
        let file = path.display().to_string();
        // Text goes to a terminal: names from files are escaped there.
        let shown_file = escaped(&file);
        let unsure = |p: &Prediction| self.min_confidence.is_some_and(|m| p.probability < m);
        match (self.format, answer) {
            (Format::Text, Ok(p)) => {
                let top = ranked(&self.classes, &p.probabilities)
                    .into_iter()
                    .take(self.top_k.unwrap_or(1))
                    .map(|(class, q)| format!("{} {:.1}%", escaped(&class), 100.0 * q))
                    .collect::<Vec<_>>();
                if unsure(p) {
                    writeln!(self.out, "{shown_file}: unsure ({})", top.join(", "))
                } else if self.top_k.is_some() {
                    writeln!(self.out, "{shown_file}: {}", top.join(", "))
                } else {
                    writeln!(
                        self.out,
                        "{shown_file}: {} ({:.1}%)",
                        escaped(&p.class),
                        100.0 * p.probability
                    )
                }
            }
            (Format::Text, Err(problem)) => {
                eprintln!("error: {shown_file}: {}", one_line(problem));
                Ok(())
            }
            (Format::Json, Ok(p)) => {
                let mut line = serde_json::json!({
                    "file": file,
                    "class": p.class,
                    "probability": p.probability,
                    "classes": self.classes,
                    "probabilities": p.probabilities,
                    "logits": p.logits,
                });
                if let Some(k) = self.top_k {
                    line["top"] = ranked(&self.classes, &p.probabilities)
                        .into_iter()
                        .take(k)
                        .map(|(class, probability)| {
                            serde_json::json!({"class": class, "probability": probability})
                        })
                        .collect();
                }
                if self.min_confidence.is_some() {
                    line["unsure"] = unsure(p).into();
                }
                writeln!(self.out, "{line}")
            }
            (Format::Json, Err(problem)) => {
                let line = serde_json::json!({"file": file, "error": problem});
                writeln!(self.out, "{line}")
            }
            (Format::Csv, answer) => {
                let k = self.top_k.unwrap_or(1);
                let mut cells = vec![csv_cell(&file)];
                match answer {
                    Ok(p) => {
                        for (class, q) in
                            ranked(&self.classes, &p.probabilities).into_iter().take(k)
                        {
                            cells.push(csv_cell(&class));
                            cells.push(q.to_string());
                        }
                        if self.min_confidence.is_some() {
                            cells.push(unsure(p).to_string());
                        }
                        cells.push(String::new());
                    }
                    Err(problem) => {
                        let empty = 2 * k + usize::from(self.min_confidence.is_some());
                        cells.extend(std::iter::repeat_n(String::new(), empty));
                        cells.push(csv_cell(problem));
                    }
                }
                writeln!(self.out, "{}", cells.join(","))
            }
        }
    }
}

/// A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break, quotes
/// doubled.
fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_when_needed() {
        assert_eq!(csv_cell("a.png"), "a.png");
        assert_eq!(csv_cell("a,b.png"), "\"a,b.png\"");
        assert_eq!(csv_cell("say \"x\""), "\"say \"\"x\"\"\"");
    }

    #[test]
    fn folders_give_their_pictures_sorted_and_skip_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::create_dir_all(dir.path().join(".hidden")).unwrap();
        for name in [
            "b/c/2.PNG",
            "a.jpg",
            "b/1.png",
            "notes.txt",
            ".hidden/3.png",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let found = pictures_in(dir.path()).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.jpg", "b/1.png", "b/c/2.PNG"]);
    }
}
