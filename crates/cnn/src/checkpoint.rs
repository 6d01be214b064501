//! Training checkpoints: everything needed to continue a run as if it had never stopped.
//!
//! Layout: the 8 bytes `CNNCKPT1`; a little-endian `u64` length and that many bytes of JSON
//! (the epochs done, the optimizer's configuration and step count, and the caller's settings,
//! opaque here); a `u64` length and a model file ([`crate::model_file`]) holding the network
//! with its running statistics; then the optimizer's moments, each a `u64` count of f32 values
//! and the values; then, when the header's `best` says so, the best epoch's tensors in the same
//! form ([`crate::train::BestEpoch`]; checkpoints written before it have no `best` and load as
//! runs without held-out data). Written atomically, so a run killed at any moment leaves the
//! previous checkpoint whole.

use crate::error::{Error, Result};
use crate::fsutil::{read_file, write_atomically};
use crate::limits::{MAX_CHECKPOINT_FILE_BYTES, MAX_EPOCHS};
use crate::model::Model;
use crate::model_file;
use crate::network::Network;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::preprocess::Preprocessing;
use crate::train::{BestEpoch, TrainState};
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
    #[serde(default)]
    best: Option<BestHeader>,
}

/// [`BestEpoch`] without its tensors, which follow the moments.
#[derive(Serialize, Deserialize)]
struct BestHeader {
    epoch: usize,
    accuracy: f64,
    loss: f64,
    /// How many tensors follow (0 when only the score is kept).
    tensors: usize,
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
        best: state.best.as_ref().map(|b| BestHeader {
            epoch: b.epoch,
            accuracy: b.accuracy,
            loss: b.loss,
            tensors: b.tensors.as_ref().map_or(0, Vec::len),
        }),
    };
    let header = serde_json::to_vec(&header)
        .map_err(|e| Error::Invalid(format!("cannot describe the checkpoint: {e}")))?;
    let model = model_file::parts_to_bytes(
        network,
        parts.classes,
        parts.preprocessing,
        parts.data,
        None,
    )?;
    let mut bytes = MAGIC.to_vec();
    for block in [&header, &model] {
        bytes.extend_from_slice(&(block.len() as u64).to_le_bytes());
        bytes.extend_from_slice(block);
    }
    let best_tensors = state.best.iter().flat_map(|b| b.tensors.iter().flatten());
    for moment in first.iter().chain(second).chain(best_tensors) {
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
    let best_tensors = read_moments(header.best.as_ref().map_or(0, |b| b.tensors))?;
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
    let best = header.best.map(|b| BestEpoch {
        epoch: b.epoch,
        accuracy: b.accuracy,
        loss: b.loss,
        tensors: (b.tensors > 0).then_some(best_tensors),
    });
    if let Some(tensors) = best.as_ref().and_then(|b| b.tensors.as_ref()) {
        let lengths: Vec<usize> = model
            .network
            .tensors()
            .map(|(_, p)| p.value.len())
            .collect();
        if tensors.len() != lengths.len()
            || tensors.iter().zip(&lengths).any(|(t, &l)| t.len() != l)
        {
            return Err("the best epoch's tensors do not fit the network".into());
        }
        if tensors.iter().flatten().any(|v| !v.is_finite()) {
            return Err("the best epoch's tensors hold values that are not finite".into());
        }
    }
    Ok(Checkpoint {
        model,
        state: TrainState {
            epoch: header.epoch,
            optimizer,
            best,
        },
        settings: header.settings,
    })
}
