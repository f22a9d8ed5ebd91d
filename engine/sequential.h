// Layers applied in order: the model's top level and the inside of every residual block.
//
// Memory plan (activations in the working dtype, rows = batch x time):
//   outputs      one buffer per layer but the last: the input of the next layer, kept
//                for its backward. The last layer writes the caller's y (the model's
//                logits, or a residual block's output).
//   GradScratch  two buffers per nesting depth, shared by every sequence at that depth
//                (siblings run their backward one after another, and a nested sequence
//                runs inside one layer's backward of its parent, so depths never share
//                a buffer in flight): each as wide as the widest boundary at that depth.
// A flat model is depth 0 only: its input, every layer's output and two ping-pong
// gradient buffers, as before blocks existed.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "engine/layers.h"

namespace ampd::engine {

class GradScratch {
 public:
  // A sequence at `depth` needs boundaries of up to `elements` elements.
  void require(int depth, int64_t elements);
  // Allocates (or, in a dry run, counts) two buffers per depth.
  Status allocate(const BuildContext& ctx);
  // Slot 0 or 1 at `depth`, viewed as a contiguous (rows / time, time, cols) tensor.
  Tensor view(int depth, int slot, DType dtype, int64_t rows, int64_t time, int64_t cols) const;

 private:
  std::vector<int64_t> need_;    // elements per depth
  std::vector<Buffer> buffers_;  // 2 per depth
};

class Sequential {
 public:
  // Makes and builds the layers of `specs` for inputs of `in` features, at nesting
  // `depth` (0: the model). `path` names them in errors ("model.layers"), `prefix` in
  // parameter names ("" at the top, "2." inside block 2).
  Status build(const BuildContext& ctx,
               const google::protobuf::RepeatedPtrField<ampd::v1::LayerSpec>& specs, int64_t in,
               const std::string& path, const std::string& prefix, int depth, int64_t* next_index,
               GradScratch* scratch);

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  const std::vector<std::unique_ptr<Layer>>& layers() const { return layers_; }

  // x (B, T, in) -> y (B, T, out).
  Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y);
  // dy (B, T, out) -> dx (B, T, in) and the parameter gradients. dy is either the
  // caller's or, with dy_slot 0/1, this depth's scratch slot (the model's dlogits);
  // dx may be empty when no input gradient is wanted.
  Status backward(const PassContext& ctx, const Tensor& x, const Tensor& dy, int dy_slot,
                  const Tensor& dx);

  void collect_params(std::vector<Param*>& out);
  void collect_states(std::vector<StateTensor*>& out);

 private:
  Tensor output(size_t i, const Tensor& like) const;  // layer i's output buffer
  std::string describe(size_t i) const;

  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<std::string> names_;  // "2.1", for errors
  std::vector<Buffer> outputs_;     // layers_.size() - 1 buffers
  GradScratch* scratch_ = nullptr;
  int depth_ = 0;
  DType dtype_ = DType::kF32;
  int64_t in_ = 0, out_ = 0;
};

}  // namespace ampd::engine
