//! CIFAR-10's binary format: files of records, each one label byte followed by a 32x32 RGB
//! image as three planes (`[3, 32, 32]`, red then green then blue, rows top to bottom), 3,073
//! bytes in all. Training data is `data_batch_1.bin` ... `data_batch_5.bin`, test data
//! `test_batch.bin`; `batches.meta.txt`, when present, names the classes one a line.

use super::Dataset;
use crate::error::{Error, Result};
use crate::fsutil::{read_file, read_text};
use crate::limits::{MAX_DATASET_BYTES, MAX_TEXT_FILE_BYTES};
use crate::tensor::Shape;
use std::path::Path;

pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// One image's shape.
pub const SHAPE: Shape = Shape::new(3, 32, 32);
/// A label byte and the pixels.
pub const RECORD_BYTES: usize = 1 + 3 * 32 * 32;

/// The two splits of a CIFAR-10 folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarSplit {
    Train,
    Test,
}

/// The class names: `batches.meta.txt` when the folder has one, else CIFAR-10's.
pub fn classes(dir: &Path) -> Result<Vec<String>> {
    let meta = dir.join("batches.meta.txt");
    if !meta.is_file() {
        return Ok(CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect());
    }
    let text = read_text(&meta, MAX_TEXT_FILE_BYTES)?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() < 2 || names.len() > 256 {
        return Err(Error::file(
            &meta,
            format!("{} class names, expected 2 to 256", names.len()),
        ));
    }
    Ok(names)
}

/// Parses one batch file's bytes into `images` and `labels`; the error says what is wrong.
pub fn parse_batch(
    bytes: &[u8],
    classes: usize,
    images: &mut Vec<u8>,
    labels: &mut Vec<u16>,
) -> std::result::Result<(), String> {
    if bytes.is_empty() {
        return Err("empty file, not a CIFAR-10 batch".into());
    }
    if !bytes.len().is_multiple_of(RECORD_BYTES) {
        return Err(format!(
            "{} bytes is not a whole number of {RECORD_BYTES}-byte records (label + 3x32x32 \
             pixels): truncated, or not a CIFAR-10 binary batch",
            bytes.len()
        ));
    }
    for (index, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        if usize::from(record[0]) >= classes {
            return Err(format!(
                "label {} of record {index} is out of range ({classes} classes)",
                record[0]
            ));
        }
        labels.push(u16::from(record[0]));
        images.extend_from_slice(&record[1..]);
    }
    Ok(())
}

/// Loads a split of the CIFAR-10 folder `dir`. Training reads every `data_batch_N.bin` present
/// (N from 1), and needs at least the first.
pub fn load(dir: &Path, split: CifarSplit) -> Result<Dataset> {
    let classes = classes(dir)?;
    let files: Vec<_> = match split {
        CifarSplit::Test => vec![dir.join("test_batch.bin")],
        CifarSplit::Train => (1..)
            .map(|n| dir.join(format!("data_batch_{n}.bin")))
            .take_while(|p| p.is_file())
            .collect(),
    };
    if files.is_empty() {
        return Err(Error::file(dir, "no data_batch_1.bin in this folder"));
    }
    // The limit is on the whole data set, so the files are measured before any is read.
    let mut total = 0u64;
    for path in &files {
        total += std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
    }
    if total > MAX_DATASET_BYTES {
        return Err(Error::file(
            dir,
            format!("the batches hold {total} bytes, over the limit of {MAX_DATASET_BYTES}"),
        ));
    }
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for path in &files {
        let bytes = read_file(path, MAX_DATASET_BYTES)?;
        parse_batch(&bytes, classes.len(), &mut images, &mut labels)
            .map_err(|message| Error::file(path, message))?;
    }
    Dataset::new(SHAPE, classes, images, labels)
}

/// Writes `dataset` (3x32x32) as one CIFAR-10 binary batch: how tests make data sets.
pub fn write_batch(dataset: &Dataset, path: &Path) -> Result<()> {
    if dataset.shape() != SHAPE {
        return Err(Error::Invalid(format!(
            "CIFAR-10 images are {SHAPE}, not {}",
            dataset.shape()
        )));
    }
    let mut bytes = Vec::with_capacity(dataset.len() * RECORD_BYTES);
    for index in 0..dataset.len() {
        bytes.push(dataset.label(index) as u8);
        bytes.extend_from_slice(dataset.image(index));
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}
