//! ONNX files: models written for other runtimes ([`export`]) and models from other frameworks
//! read as this engine's graphs ([`import`]). The protobuf messages are [`proto`]'s.

pub mod export;
pub mod import;
pub mod proto;

use crate::error::Result;
use crate::model::Model;
use crate::model_file;

pub use export::{save, to_bytes, ExportOptions, LOGITS, PROBABILITIES};
pub use import::{from_bytes, load, ImportOptions};

/// The opset files are written for: ONNX 1.12's, which every current runtime reads.
pub const OPSET: i64 = 17;
/// The IR version that goes with [`OPSET`].
pub const IR_VERSION: i64 = 8;

/// The model file's metadata, sorted by key (so that equal models give equal files), written
/// into the ONNX file's `metadata_props`: an ONNX file written here reads back with its class
/// names, its preprocessing and how it was trained.
fn metadata(model: &Model) -> Result<Vec<(String, String)>> {
    let mut entries: Vec<(String, String)> = model_file::metadata(
        &model.network,
        &model.classes,
        &model.preprocessing,
        model.data.as_deref(),
        model.training.as_ref(),
    )?
    .into_iter()
    .collect();
    entries.sort();
    Ok(entries)
}
