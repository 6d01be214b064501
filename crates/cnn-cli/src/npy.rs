//! NumPy `.npy` files of float32 tensors, in and out (`cnn run`, `cnn predict --save-input`).

use anyhow::{bail, Context, Result};
use cnn::fsutil::{read_file, write_atomically};
use cnn::limits::MAX_BATCH_VALUES;
use cnn::{Shape, Tensor};
use npyz::WriterBuilder;
use std::path::Path;

/// Reads a float32 `.npy` batch for a network taking `shape`, checking its header against the
/// file's size before reading the values.
/// A float32 tensor `[N, ...]` whose dimensions after the batch are one of `accepted`, as a
/// batch of `shape` (which holds as many values).
pub fn read(path: &Path, shape: Shape, accepted: &[Vec<usize>]) -> Result<Tensor> {
    let bytes = read_file(path, 4 * MAX_BATCH_VALUES as u64 + 4096)?;
    let fail = |message: String| cnn::Error::file(path, message);
    let file =
        npyz::NpyFile::new(&bytes[..]).map_err(|e| fail(format!("not a NumPy .npy file ({e})")))?;
    let dtype = file.dtype().descr();
    if dtype != "'<f4'" {
        return Err(fail(format!("its values are {dtype}, not float32 ('<f4')")).into());
    }
    if file.order() != npyz::Order::C {
        return Err(fail("it is stored in Fortran order; save it in C order".into()).into());
    }
    let dims = file.shape().to_vec();
    let fits = |expected: &Vec<usize>| {
        dims.len() == expected.len() + 1
            && dims[1..].iter().zip(expected).all(|(&d, &e)| d == e as u64)
    };
    if !accepted.iter().any(fits) || dims[0] == 0 {
        let shapes: Vec<String> = accepted
            .iter()
            .map(|e| {
                let rest: Vec<String> = e.iter().map(usize::to_string).collect();
                format!("[N, {}]", rest.join(", "))
            })
            .collect();
        bail!(
            "{}: its shape is {dims:?}, the model takes {}",
            path.display(),
            shapes.join(" or ")
        );
    }
    let len = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    if len.is_none_or(|n| n.saturating_mul(4) > bytes.len() as u64) {
        return Err(fail(format!(
            "its header declares {dims:?} values, more than it holds"
        ))
        .into());
    }
    let batch = dims[0] as usize;
    let values: Vec<f32> = file
        .into_vec()
        .map_err(|e| fail(format!("cannot read its values ({e})")))?;
    let mut tensor = Tensor::zeros(batch, shape);
    tensor.data_mut().copy_from_slice(&values);
    Ok(tensor)
}

pub fn write(path: &Path, dims: &[u64], values: &[f32]) -> Result<()> {
    let mut bytes = Vec::with_capacity(128 + 4 * values.len());
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(dims)
        .writer(&mut bytes)
        .begin_nd()
        .context("cannot write the output")?;
    writer
        .extend(values.iter().copied())
        .context("cannot write the output")?;
    writer.finish().context("cannot write the output")?;
    write_atomically(path, &bytes)?;
    Ok(())
}
