// Checkpoints: a safetensors file (engine/safetensors.h) holding
//   tensors   "<layer>.<param>" FP32 master weights (torch.nn.Sequential names, so
//             `model.load_state_dict(safetensors.torch.load_file(path))` works after
//             dropping the "optimizer." entries), "<layer>.running_mean/var" for
//             BatchNorm, and "optimizer.<param>.<state>" FP32 optimizer state;
//   metadata  ampd.step, ampd.applied_steps, ampd.epoch, ampd.overflow_skipped_steps,
//             ampd.scaler (the whole loss-scaler state, JSON), ampd.rng (seed and the
//             counter-based streams it drives), ampd.spec (the resolved job spec, JSON),
//             ampd.precision, ampd.backend, ampd.standardization (the feature mean and
//             stddev a user must apply to inputs), ampd.format "ampd-checkpoint-v2", and
//             the two checksums the writer adds (engine/safetensors.h), which a v2
//             checkpoint must carry (v1 files, written before the header checksum, are
//             read with the buffer checksum alone).
// Written atomically (temp file, fsync, rename); a resumed job restores everything a
// step depends on, so resume is bit-exact on the same backend and thread count.
#pragma once

#include <cstdint>
#include <string>

#include "ampd/v1/job.pb.h"
#include "engine/model.h"
#include "engine/optimizer.h"
#include "engine/safetensors.h"

namespace ampd::engine {

struct CheckpointMeta {
  int64_t step = 0;           // steps taken (applied + skipped)
  int64_t applied_steps = 0;  // optimizer updates applied
  int32_t epoch = 0;
  int64_t overflow_skipped_steps = 0;
  ampd::v1::LossScalerState scaler;
  ampd::v1::JobSpec spec;  // resolved
  std::string precision;   // resolved: fp32 / fp16 / bf16
  std::string backend;
  // The input standardization the model was trained with, JSON
  // {"mean": [...], "stddev": [...]}; "" when the job does not standardize.
  std::string standardization;
};

// Writes model + optimizer + meta to `path` atomically; returns the file size.
StatusOr<int64_t> save_checkpoint(const std::string& path, Model& model, const Optimizer& optimizer,
                                  const CheckpointMeta& meta);

// Reads and verifies a checkpoint file (checksum, format) and parses its metadata.
struct LoadedCheckpoint {
  StFile file;
  CheckpointMeta meta;
};
StatusOr<LoadedCheckpoint> read_checkpoint(const std::string& path);

// Copies the checkpoint's tensors into a model and optimizer built from the same spec;
// every expected tensor must be present with the right shape.
Status restore_checkpoint(const LoadedCheckpoint& ckpt, Model& model, Optimizer& optimizer);

}  // namespace ampd::engine
