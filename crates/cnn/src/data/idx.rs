//! IDX files, the format of MNIST and Fashion-MNIST, raw or gzipped.
//!
//! An IDX file is a big-endian header followed by the values: two zero bytes, a type byte
//! (`0x08`: unsigned bytes, the only type these data sets use), the number of dimensions, then
//! one `u32` per dimension. Images are `[count, rows, columns]` (magic `0x00000803`), labels
//! `[count]` (magic `0x00000801`). A gzipped file is recognised by its own magic (`1f 8b`), not by
//! its name.

use super::Dataset;
use crate::error::{Error, Result};
use crate::tensor::Shape;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Fashion-MNIST's classes, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Where the Debian package `dataset-fashion-mnist` installs the data.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The largest decompressed file accepted (a corrupted length field must not exhaust memory).
const MAX_FILE_BYTES: u64 = 1 << 32;

/// The two splits of an IDX folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxSplit {
    Train,
    Test,
}

impl IdxSplit {
    fn prefix(self) -> &'static str {
        match self {
            IdxSplit::Train => "train",
            IdxSplit::Test => "t10k",
        }
    }
}

/// The values of one IDX file and its dimensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub values: Vec<u8>,
}

/// Reads the whole file, decompressing it when it is gzipped.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut bytes = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .take(MAX_FILE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::file(path, format!("corrupted or truncated gzip data ({e})")))?;
        Ok(bytes)
    } else {
        Ok(raw)
    }
}

/// Parses IDX bytes holding unsigned bytes in `expected_dims` dimensions; the error says what
/// is wrong, without the file name. The values are moved out of `bytes`, not copied.
pub fn parse(mut bytes: Vec<u8>, expected_dims: usize) -> std::result::Result<IdxArray, String> {
    if bytes.is_empty() {
        return Err("empty file, not an IDX file".into());
    }
    if bytes.len() < 4 {
        return Err(format!(
            "{} bytes, too short for an IDX header",
            bytes.len()
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!(
            "not an IDX file: magic number {:02x}{:02x}{:02x}{:02x} does not start with two zero bytes",
            bytes[0], bytes[1], bytes[2], bytes[3]
        ));
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "IDX value type 0x{:02x} is not 0x08 (unsigned bytes)",
            bytes[2]
        ));
    }
    let dims = usize::from(bytes[3]);
    if dims != expected_dims {
        return Err(format!(
            "IDX magic 0x{:08x} says {dims} dimensions, expected {expected_dims} ({})",
            u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            if expected_dims == 1 {
                "a labels file"
            } else {
                "an images file"
            }
        ));
    }
    let header = 4 + 4 * dims;
    if bytes.len() < header {
        return Err(format!(
            "truncated header: {} bytes, the header needs {header}",
            bytes.len()
        ));
    }
    let sizes: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = sizes
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("the dimensions overflow")?;
    let present = bytes.len() - header;
    if present < expected {
        return Err(format!(
            "truncated: the header says {sizes:?} ({expected} values), the file holds {present}"
        ));
    }
    if present > expected {
        return Err(format!(
            "{} bytes after the {expected} values the header {sizes:?} announces",
            present - expected
        ));
    }
    bytes.drain(..header);
    Ok(IdxArray {
        dims: sizes,
        values: bytes,
    })
}

/// Reads an IDX file (raw or gzipped) of `expected_dims` dimensions.
pub fn read(path: &Path, expected_dims: usize) -> Result<IdxArray> {
    let bytes = read_bytes(path)?;
    parse(bytes, expected_dims).map_err(|message| Error::file(path, message))
}

/// The file of `stem` in `dir`: `stem`, `stem.gz`, or MNIST's `train-images.idx3-ubyte` spelling.
fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    let dotted = stem.replacen("-idx", ".idx", 1);
    let candidates = [
        stem.to_string(),
        format!("{stem}.gz"),
        dotted.clone(),
        format!("{dotted}.gz"),
    ];
    candidates
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            Error::file(
                dir,
                format!("no IDX file `{stem}` (or `{stem}.gz`) in this folder"),
            )
        })
}

/// Loads one split (`train-*` or `t10k-*` images and labels) of the IDX folder `dir`. Labels
/// must name one of `classes`.
pub fn load(dir: &Path, split: IdxSplit, classes: &[String]) -> Result<Dataset> {
    let images_path = find(dir, &format!("{}-images-idx3-ubyte", split.prefix()))?;
    let labels_path = find(dir, &format!("{}-labels-idx1-ubyte", split.prefix()))?;
    let images = read(&images_path, 3)?;
    let labels = read(&labels_path, 1)?;
    let [count, rows, columns] = [images.dims[0], images.dims[1], images.dims[2]];
    if rows == 0 || columns == 0 {
        return Err(Error::file(
            &images_path,
            format!("images of {rows}x{columns} pixels"),
        ));
    }
    if labels.dims[0] != count {
        return Err(Error::file(
            &labels_path,
            format!(
                "{} labels for the {count} images of {}",
                labels.dims[0],
                images_path.display()
            ),
        ));
    }
    if let Some((index, &label)) = labels
        .values
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::from(l) >= classes.len())
    {
        return Err(Error::file(
            &labels_path,
            format!(
                "label {label} of image {index} is out of range ({} classes)",
                classes.len()
            ),
        ));
    }
    let labels = labels.values.iter().map(|&l| u16::from(l)).collect();
    Dataset::new(
        Shape::new(1, rows, columns),
        classes.to_vec(),
        images.values,
        labels,
    )
}

/// Writes `dataset` (one channel) as IDX files `<prefix>-images-idx3-ubyte` and
/// `<prefix>-labels-idx1-ubyte` in `dir`, gzipped when `gzip` is set: how tests make data sets.
pub fn write(dataset: &Dataset, dir: &Path, split: IdxSplit, gzip: bool) -> Result<()> {
    let shape = dataset.shape();
    if shape.channels != 1 {
        return Err(Error::Invalid("IDX images have one channel".into()));
    }
    let mut images = vec![0, 0, 8, 3];
    for d in [dataset.len(), shape.height, shape.width] {
        images.extend_from_slice(&(d as u32).to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&(dataset.len() as u32).to_be_bytes());
    for index in 0..dataset.len() {
        images.extend_from_slice(dataset.image(index));
        labels.push(dataset.label(index) as u8);
    }
    for (kind, bytes) in [("images-idx3", images), ("labels-idx1", labels)] {
        let name = format!(
            "{}-{kind}-ubyte{}",
            split.prefix(),
            if gzip { ".gz" } else { "" }
        );
        let path = dir.join(name);
        let bytes = if gzip {
            use std::io::Write;
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder
                .write_all(&bytes)
                .and_then(|_| encoder.finish())
                .map_err(|e| Error::io(&path, e))?
        } else {
            bytes
        };
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Class names for a plain IDX folder: the digits, as in MNIST.
pub fn digit_classes() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}
