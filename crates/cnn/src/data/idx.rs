//! IDX files, the format of MNIST and Fashion-MNIST, raw or gzipped.
//!
//! An IDX file is a big-endian header followed by the values: two zero bytes, a type byte
//! (`0x08`: unsigned bytes, the only type these data sets use), the number of dimensions, then
//! one `u32` per dimension. Images are `[count, rows, columns]` (magic `0x00000803`), labels
//! `[count]` (magic `0x00000801`). A gzipped file is recognised by its own magic (`1f 8b`), not by
//! its name.

use super::Dataset;
use crate::error::{Error, Result};
use crate::fsutil::open_regular;
use crate::limits::{self, MAX_DATASET_BYTES};
use crate::tensor::Shape;
use std::io::{BufRead, BufReader, Read};
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

/// Bytes past the values counted for the error message, at most.
const TRAILING_BYTES_COUNTED: u64 = 1 << 20;

/// Parses IDX bytes (raw or gzipped) holding unsigned bytes in `expected_dims` dimensions;
/// the error says what is wrong, without the file name.
pub fn parse(bytes: &[u8], expected_dims: usize) -> std::result::Result<IdxArray, String> {
    parse_from(bytes, expected_dims)
}

/// Reads IDX data from `reader`, gzipped (recognised by its magic `1f 8b`) or raw: the header
/// first, whose sizes are checked (against each other and [`MAX_DATASET_BYTES`]) before any
/// value is read, then exactly the values it announces. Nothing is allocated for values the
/// data does not hold, so a header that claims 2^31 images costs nothing.
pub fn parse_from(
    mut reader: impl BufRead,
    expected_dims: usize,
) -> std::result::Result<IdxArray, String> {
    let gzipped = reader
        .fill_buf()
        .map_err(|e| format!("cannot read it: {e}"))?
        .starts_with(&[0x1f, 0x8b]);
    if gzipped {
        parse_raw(flate2::bufread::MultiGzDecoder::new(reader), expected_dims).map_err(|e| e.gzip())
    } else {
        parse_raw(reader, expected_dims).map_err(|e| e.raw())
    }
}

/// A failure of [`parse_raw`]: the data is wrong, or reading it failed (which, inside gzip,
/// means the compressed data is damaged).
enum ParseError {
    Data(String),
    Read(std::io::Error),
}

impl ParseError {
    fn raw(self) -> String {
        match self {
            ParseError::Data(message) => message,
            ParseError::Read(e) => format!("cannot read it: {e}"),
        }
    }

    fn gzip(self) -> String {
        match self {
            ParseError::Data(message) => message,
            ParseError::Read(e) => format!("corrupted or truncated gzip data ({e})"),
        }
    }
}

impl From<String> for ParseError {
    fn from(message: String) -> Self {
        ParseError::Data(message)
    }
}

/// Up to `len` bytes from `reader` (fewer only at its end).
fn read_up_to(reader: &mut impl Read, len: u64, into: &mut Vec<u8>) -> std::io::Result<()> {
    reader.take(len).read_to_end(into).map(|_| ())
}

fn parse_raw(
    mut reader: impl Read,
    expected_dims: usize,
) -> std::result::Result<IdxArray, ParseError> {
    let mut magic = Vec::with_capacity(4);
    read_up_to(&mut reader, 4, &mut magic).map_err(ParseError::Read)?;
    if magic.is_empty() {
        return Err("empty file, not an IDX file".to_string().into());
    }
    if magic.len() < 4 {
        return Err(format!("{} bytes, too short for an IDX header", magic.len()).into());
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(format!(
            "not an IDX file: magic number {:02x}{:02x}{:02x}{:02x} does not start with two zero bytes",
            magic[0], magic[1], magic[2], magic[3]
        )
        .into());
    }
    if magic[2] != 0x08 {
        return Err(format!(
            "IDX value type 0x{:02x} is not 0x08 (unsigned bytes)",
            magic[2]
        )
        .into());
    }
    let dims = usize::from(magic[3]);
    if dims != expected_dims {
        return Err(format!(
            "IDX magic 0x{:08x} says {dims} dimensions, expected {expected_dims} ({})",
            u32::from_be_bytes([magic[0], magic[1], magic[2], magic[3]]),
            if expected_dims == 1 {
                "a labels file"
            } else {
                "an images file"
            }
        )
        .into());
    }
    let header = 4 + 4 * dims;
    let mut sizes = Vec::with_capacity(4 * dims);
    read_up_to(&mut reader, 4 * dims as u64, &mut sizes).map_err(ParseError::Read)?;
    if sizes.len() < 4 * dims {
        return Err(format!(
            "truncated header: {} bytes, the header needs {header}",
            4 + sizes.len()
        )
        .into());
    }
    let sizes: Vec<usize> = sizes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = limits::product(&sizes)
        .filter(|&n| n as u64 <= MAX_DATASET_BYTES)
        .ok_or_else(|| {
            format!(
                "the header says {sizes:?}, over the limit of {MAX_DATASET_BYTES} values of a \
                 data set"
            )
        })?;
    // Grown as the values arrive: a truncated file costs only what it holds.
    let mut values = Vec::with_capacity(expected.min(1 << 26));
    read_up_to(&mut reader, expected as u64, &mut values).map_err(ParseError::Read)?;
    let present = values.len();
    if present < expected {
        return Err(format!(
            "truncated: the header says {sizes:?} ({expected} values), the file holds {present}"
        )
        .into());
    }
    let trailing = std::io::copy(
        &mut reader.by_ref().take(TRAILING_BYTES_COUNTED),
        &mut std::io::sink(),
    )
    .map_err(ParseError::Read)?;
    if trailing > 0 {
        let more = if trailing == TRAILING_BYTES_COUNTED {
            "at least "
        } else {
            ""
        };
        return Err(format!(
            "{more}{trailing} bytes after the {expected} values the header {sizes:?} announces"
        )
        .into());
    }
    Ok(IdxArray {
        dims: sizes,
        values,
    })
}

/// Reads an IDX file (raw or gzipped) of `expected_dims` dimensions; only a regular file, and
/// only as much as its header announces (see [`parse_from`]).
pub fn read(path: &Path, expected_dims: usize) -> Result<IdxArray> {
    let (file, _) = open_regular(path)?;
    parse_from(BufReader::new(file), expected_dims).map_err(|message| Error::file(path, message))
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
