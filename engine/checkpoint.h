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
//
// Optimizer state is whatever the optimizer declares (engine/optimizer.h): this file saves
// and restores Optimizer::state_tensors() under the keys the optimizer gives, and knows
// no optimizer by name, so adding one (Lion, say) does not touch it. The keys have not
// changed since v1 ("optimizer.0.weight.exp_avg"), so older checkpoints still load
// (tests/engine/data/, TrainerResume.CheckpointsFromCommit42665a1ResumeBitIdentically).
//
// This file also owns the names of checkpoint files: "step-<n>.safetensors" in a job's
// checkpoint directory, "<name>.tmp-<pid>-<random>" while one is being written, and the
// functions that find the newest usable one and prune old ones (the trainer, the
// safetensors writer and the server all go through them).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

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
  // A language model's vocabulary (Vocabulary::to_string: "bytes" or "chars:<symbols>");
  // "" for other models. Stored as metadata "ampd.vocabulary".
  std::string vocabulary;
};

// Writes model + optimizer + meta to `path` atomically; returns the bytes of tensor data.
// `faults` is the test seam of write_safetensors (engine/safetensors.h); null in production.
StatusOr<int64_t> save_checkpoint(const std::string& path, Model& model, const Optimizer& optimizer,
                                  const CheckpointMeta& meta, WriteFaults* faults = nullptr);

// Reads and verifies a checkpoint file (checksum, format) and parses its metadata.
struct LoadedCheckpoint {
  StFile file;
  CheckpointMeta meta;
};
StatusOr<LoadedCheckpoint> read_checkpoint(const std::string& path);

// Copies the checkpoint's tensors into a model and optimizer built from the same spec;
// every expected tensor must be present with the right shape.
Status restore_checkpoint(const LoadedCheckpoint& ckpt, Model& model, Optimizer& optimizer);
// The model's parameters and state tensors only (inference: sampling, export).
Status restore_weights(const LoadedCheckpoint& ckpt, Model& model);

// ---- checkpoint files -------------------------------------------------------------------

// "step-40.safetensors".
std::string checkpoint_file_name(int64_t step);
// dir/"step-<step>.safetensors".
std::string checkpoint_path(const std::string& dir, int64_t step);
// The step in a checkpoint's file name (a bare name or a path: ".../step-40.safetensors"
// is 40), or -1 when the name is not one of checkpoint_file_name's.
int64_t checkpoint_step(std::string_view path);
// Where `path` is written before it is renamed into place: "<path>.tmp-<pid>-<16 hex>"
// (random, so two writers never share one), in the same directory.
std::string checkpoint_temp_path(const std::string& path);
// Whether a file name is one of checkpoint_temp_path's: a write that never finished
// (the process died before the rename). Never a checkpoint.
bool is_checkpoint_temp_name(std::string_view filename);

// The newest checkpoint in a directory that reads back and verifies (read_checkpoint:
// both checksums and the metadata); an older one is better than starting over.
struct CheckpointSearch {
  std::string path;  // "" when none verifies (or the directory is missing)
  int64_t step = -1;
  struct Skipped {
    std::string path;
    std::string reason;  // read_checkpoint's error message
  };
  std::vector<Skipped> skipped;      // newer files passed over, newest first
  std::vector<std::string> removed;  // partial writes removed (see remove_partial_writes)
  // "skipped <path>: <reason>; skipped ...", or "" when nothing was skipped.
  std::string note() const;
};
// With remove_partial_writes, temporary files (is_checkpoint_temp_name) are deleted
// first: only a process that owns the directory and is not writing may ask for that.
CheckpointSearch find_latest_checkpoint(const std::string& dir, bool remove_partial_writes);

// Deletes every checkpoint file (checkpoint_step >= 0) in `dir` whose path is not in
// `keep` (paths as checkpoint_path builds them). Best effort: errors are ignored.
void prune_checkpoints(const std::string& dir, const std::vector<std::string>& keep);

}  // namespace ampd::engine
