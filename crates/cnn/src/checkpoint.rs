//! Training checkpoints: everything needed to continue a run as if it had never stopped.
//!
//! Layout: the 8 bytes `CNNCKPT1`; a little-endian `u64` length and that many bytes of JSON
//! (the epochs done, the optimizer's configuration and step count, and the caller's settings,
//! opaque here); a `u64` length and a model file ([`crate::model_file`]) holding the network
//! with its running statistics; then the optimizer's moments, each a `u64` count of f32 values
//! and the values. Written atomically, so a run killed at any moment leaves the previous
//! checkpoint whole.

use crate::error::{Error, Result};
use crate::fsutil::{read_file, write_atomically};
use crate::limits::{MAX_CHECKPOINT_FILE_BYTES, MAX_EPOCHS};
use crate::model::Model;
use crate::model_file;
use crate::network::Network;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::preprocess::Preprocessing;
use crate::train::TrainState;
use serde::{Deserialize, Serialize};
use std::path::Path;

const MAGIC: &[u8; 8] = b"CNNCKPT1";

#[derive(Serialize, Deserialize)]
struct Header {
    epoch: usize,
    optimizer: OptimizerConfig,
    steps: u64,
    first_moments: usize,
    second_moments: usize,
    settings: serde_json::Value,
}

/// A checkpoint read back.
pub struct Checkpoint {
    pub model: Model,
    pub state: TrainState,
    /// What the caller stored with [`save`] (the command line's training settings).
    pub settings: serde_json::Value,
}

/// The parts of a model a checkpoint stores beside the network.
pub struct ModelParts<'a> {
    pub classes: &'a [String],
    pub preprocessing: &'a Preprocessing,
    pub data: Option<&'a str>,
}

pub fn to_bytes(
    network: &Network,
    parts: &ModelParts<'_>,
    state: &TrainState,
    settings: &serde_json::Value,
) -> Result<Vec<u8>> {
    let (steps, first, second) = state.optimizer.state();
    let header = Header {
        epoch: state.epoch,
        optimizer: state.optimizer.config(),
        steps,
        first_moments: first.len(),
        second_moments: second.len(),
        settings: settings.clone(),
    };
    let header = serde_json::to_vec(&header)
        .map_err(|e| Error::Invalid(format!("cannot describe the checkpoint: {e}")))?;
    let model =
        model_file::parts_to_bytes(network, parts.classes, parts.preprocessing, parts.data)?;
    let mut bytes = MAGIC.to_vec();
    for block in [&header, &model] {
        bytes.extend_from_slice(&(block.len() as u64).to_le_bytes());
        bytes.extend_from_slice(block);
    }
    for moment in first.iter().chain(second) {
        bytes.extend_from_slice(&(moment.len() as u64).to_le_bytes());
        bytes.extend(moment.iter().flat_map(|v| v.to_le_bytes()));
    }
    Ok(bytes)
}

pub fn save(
    path: &Path,
    network: &Network,
    parts: &ModelParts<'_>,
    state: &TrainState,
    settings: &serde_json::Value,
) -> Result<()> {
    write_atomically(path, &to_bytes(network, parts, state, settings)?)
}

pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = read_file(path, MAX_CHECKPOINT_FILE_BYTES)?;
    from_bytes(&bytes).map_err(|message| Error::file(path, message))
}

/// Reads `len`-prefixed blocks off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        if self.0.len() < len {
            return Err(format!("truncated checkpoint: {what} is cut short"));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn block(&mut self, what: &str) -> std::result::Result<&'a [u8], String> {
        let len = u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes"));
        let len = usize::try_from(len).map_err(|_| format!("{what} is too long"))?;
        self.take(len, what)
    }
}

pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Checkpoint, String> {
    if !bytes.starts_with(MAGIC) {
        return Err("not a cnn checkpoint (it does not start with CNNCKPT1)".into());
    }
    let mut reader = Reader(&bytes[MAGIC.len()..]);
    let header: Header = serde_json::from_slice(reader.block("the header")?)
        .map_err(|e| format!("the checkpoint's header is malformed: {e}"))?;
    let model = model_file::from_bytes(reader.block("the model")?)
        .map_err(|e| format!("the checkpoint's model: {e}"))?;
    let mut read_moments = |count: usize| -> std::result::Result<Vec<Vec<f32>>, String> {
        (0..count)
            .map(|_| {
                let len = u64::from_le_bytes(
                    reader
                        .take(8, "the optimizer state")?
                        .try_into()
                        .expect("8"),
                );
                let len = usize::try_from(len)
                    .ok()
                    .and_then(|l| l.checked_mul(4))
                    .ok_or("the optimizer state is malformed")?;
                Ok(reader
                    .take(len, "the optimizer state")?
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect())
            })
            .collect()
    };
    let first = read_moments(header.first_moments)?;
    let second = read_moments(header.second_moments)?;
    if !reader.0.is_empty() {
        return Err(format!("{} unexpected bytes at the end", reader.0.len()));
    }
    let optimizer = Optimizer::from_state(header.optimizer, header.steps, first, second);
    if !optimizer.fits(&model.network) {
        return Err("the optimizer state does not fit the network".into());
    }
    optimizer.check_state().map_err(|e| e.to_string())?;
    if header.epoch > MAX_EPOCHS {
        return Err(format!(
            "it says {} epochs are done, over the limit of {MAX_EPOCHS}",
            header.epoch
        ));
    }
    Ok(Checkpoint {
        model,
        state: TrainState {
            epoch: header.epoch,
            optimizer,
        },
        settings: header.settings,
    })
}
