//! Checkpoints that survive a kill: written atomically, refused when corrupt or foreign
//! (docs/file-formats.md).

use std::path::Path;

use burn::tensor::Device;
use msr_runtime::format::{LayerRecord, ModelInfo, ModelRecord};
use msr_runtime::model::record_from_params;
use serde::{Deserialize, Serialize};

use super::*;

/// What a checkpoint file holds.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    config: TrainConfig,
    step: u64,
    adam_t: u64,
    params: Vec<LayerRecord>,
    adam_m: Vec<Vec<f32>>,
    adam_v: Vec<Vec<f32>>,
}

/// Adam's step count and first and second moments, as stored in a checkpoint.
pub(super) type AdamState = (u64, Vec<Vec<f32>>, Vec<Vec<f32>>);

const CHECKPOINT_MAGIC: &[u8; 8] = b"MSRCKPT2";
/// A sharded run's checkpoint: the same record followed by the shard count. Another magic,
/// so that a trainer that does not know shards refuses it instead of resuming it as a
/// one-shard run.
const SHARDED_MAGIC: &[u8; 8] = b"MSRCKPT3";

impl Trainer {
    /// Writes a checkpoint atomically (temporary file, then rename).
    pub fn save_checkpoint(&self, path: &Path) -> Result<(), TrainError> {
        let (adam_m, adam_v) = self.adam_moments();
        let ck = Checkpoint {
            config: self.config.clone(),
            step: self.step,
            adam_t: self.adam.t,
            params: record_from_params(&self.params),
            adam_m,
            adam_v,
        };
        let mut body = postcard::to_allocvec(&ck).expect("encoding into a Vec cannot fail");
        // The shard count follows the record (only when not 1: a one-shard run's checkpoint
        // is the bytes it always was).
        if self.shards != 1 {
            body.extend(postcard::to_allocvec(&(self.shards as u64)).expect("into a Vec"));
        }
        // The CRC covers the body, not the magic: the frame starts after it.
        let mut bytes = Vec::with_capacity(body.len() + 12);
        bytes.extend_from_slice(if self.shards == 1 {
            CHECKPOINT_MAGIC
        } else {
            SHARDED_MAGIC
        });
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&[0; 4]);
        msr_runtime::frame::seal(&mut bytes[8..]);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    /// Resumes from a checkpoint on the CPU; see [`Trainer::resume_on`].
    pub fn resume(path: &Path, expected: Option<&TrainConfig>) -> Result<Self, TrainError> {
        Self::resume_on(path, expected, msr_runtime::device::cpu())
    }

    /// Resumes from a checkpoint; refuses a corrupt one or one of another configuration
    /// (`expected`, when given, must match except for the total number of steps and the
    /// outer learning rate, which stays the checkpoint's: change it with
    /// [`Trainer::set_outer_lr`]).
    pub fn resume_on(
        path: &Path,
        expected: Option<&TrainConfig>,
        device: Device,
    ) -> Result<Self, TrainError> {
        let bad = |reason: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(io(path))?;
        let sharded = bytes.len() >= 8 && &bytes[..8] == SHARDED_MAGIC;
        if bytes.len() < 12 || (&bytes[..8] != CHECKPOINT_MAGIC && !sharded) {
            return Err(bad("not an msr checkpoint (bad magic or too short)".into()));
        }
        let body = msr_runtime::frame::unseal(&bytes[8..])
            .map_err(|_| bad("checksum mismatch: the file is corrupt".into()))?;
        let (ck, rest): (Checkpoint, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| bad(format!("malformed: {e}")))?;
        let shards = if !sharded {
            if !rest.is_empty() {
                return Err(bad("malformed: bytes after the record".into()));
            }
            1
        } else {
            let (s, tail): (u64, &[u8]) = postcard::take_from_bytes(rest)
                .map_err(|e| bad(format!("malformed shard count: {e}")))?;
            if !tail.is_empty() || s == 0 || s > ck.config.tasks_per_step as u64 {
                return Err(bad(format!("malformed shard count {s}")));
            }
            s as usize
        };
        ck.config
            .validate()
            .map_err(|e| bad(format!("out-of-range field: {e}")))?;
        let mut config = ck.config.clone();
        if let Some(exp) = expected {
            let mut a = exp.clone();
            a.steps = config.steps;
            a.outer_lr = config.outer_lr;
            if a != config {
                return Err(bad(format!(
                    "it was made with another configuration; these fields differ (checkpoint vs requested): {}",
                    config.differences(&a).join(", ")
                )));
            }
            config.steps = exp.steps;
        }
        let (family, spec, _) = config.family_and_spec().map_err(|e| bad(e.to_string()))?;
        let record = ModelRecord {
            info: ModelInfo {
                name: String::new(),
                task_family: String::new(),
                inner_steps: 0,
                trainer_version: String::new(),
            },
            net: spec.clone(),
            layers: ck.params.clone(),
            ext: Default::default(),
        };
        record.validate().map_err(|e| bad(e.to_string()))?;
        let mut t = Self::from_parts(
            config,
            family,
            spec,
            &ck.params,
            Some((ck.adam_t, ck.adam_m, ck.adam_v)),
            ck.step,
            device,
        )?;
        t.shards = shards;
        Ok(t)
    }
}
