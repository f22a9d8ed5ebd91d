#include "engine/sequential.h"

#include <algorithm>

#include "engine/layer_registry.h"

namespace ampd::engine {

void GradScratch::require(int depth, int64_t elements) {
  if (need_.size() <= static_cast<size_t>(depth)) need_.resize(static_cast<size_t>(depth) + 1, 0);
  need_[static_cast<size_t>(depth)] = std::max(need_[static_cast<size_t>(depth)], elements);
}

Status GradScratch::allocate(const BuildContext& ctx) {
  buffers_.clear();
  for (int64_t elements : need_) {
    for (int slot = 0; slot < 2; ++slot) {
      AMPD_ASSIGN_OR_RETURN(Buffer b, ctx.make_activation(ctx.act_dtype, 1, elements));
      buffers_.push_back(std::move(b));
    }
  }
  return Status::ok_status();
}

Tensor GradScratch::view(int depth, int slot, DType dtype, int64_t rows, int64_t time,
                         int64_t cols) const {
  const Buffer& b = buffers_[static_cast<size_t>(2 * depth + slot)];
  return Tensor::contiguous(b.data(), dtype, {rows / time, time, cols});
}

Status Sequential::build(const BuildContext& ctx,
                         const google::protobuf::RepeatedPtrField<ampd::v1::LayerSpec>& specs,
                         int64_t in, const std::string& path, const std::string& prefix, int depth,
                         int64_t* next_index, GradScratch* scratch) {
  if (specs.empty()) return invalid_argument(path + ": must not be empty");
  scratch_ = scratch;
  depth_ = depth;
  dtype_ = ctx.act_dtype;
  in_ = in;
  int64_t width = in, widest = in;
  for (int i = 0; i < specs.size(); ++i) {
    const ampd::v1::LayerSpec& spec = specs.Get(i);
    const LayerKind* kind = find_layer_kind(spec.kind_case());
    const std::string at = path + "[" + std::to_string(i) + "]";
    if (kind == nullptr) return invalid_argument(at + ": no layer kind");
    std::unique_ptr<Layer> layer = kind->make(spec);
    BuildContext lc = ctx;
    lc.index = (*next_index)++;
    lc.named = !spec.name().empty();
    lc.name = lc.named ? spec.name() : prefix + std::to_string(i);
    // Only the model's first layer sees the token ids.
    lc.token_input = ctx.token_input && depth == 0 && i == 0;
    lc.depth = depth;
    lc.next_index = next_index;
    lc.scratch = scratch;
    AMPD_RETURN_IF_ERROR(layer->build(lc, width).with_context(at + "." + std::string(kind->name)));
    width = layer->out_features();
    widest = std::max(widest, width);
    if (ctx.params_by_name != nullptr) {  // for weight tying by a later layer
      std::vector<Param*> own;
      layer->collect_params(own);
      for (Param* p : own) {
        // A block's parameters were entered by its inner sequence already (same Param).
        const auto [it, added] = ctx.params_by_name->emplace(p->name, p);
        if (!added && it->second != p) {
          return invalid_argument(at + ".name: parameter " + quote(p->name) +
                                  " is named twice; give the layers distinct names");
        }
      }
    }
    names_.push_back(lc.name);
    layers_.push_back(std::move(layer));
  }
  out_ = width;
  for (size_t i = 0; i + 1 < layers_.size(); ++i) {
    AMPD_ASSIGN_OR_RETURN(
        Buffer b, ctx.make_activation(ctx.act_dtype, ctx.max_rows(), layers_[i]->out_features()));
    outputs_.push_back(std::move(b));
  }
  scratch->require(depth, MemoryTally::sat_mul(ctx.max_rows(), widest));
  return Status::ok_status();
}

Tensor Sequential::output(size_t i, const Tensor& like) const {
  return Tensor::contiguous(outputs_[i].data(), dtype_,
                            {like.size(0), like.size(1), layers_[i]->out_features()});
}

std::string Sequential::describe(size_t i) const {
  return "layer " + names_[i] + " (" + layers_[i]->kind() + ")";
}

Status Sequential::forward(const PassContext& ctx, const Tensor& x, const Tensor& y) {
  Tensor in = x;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Tensor out = i + 1 < layers_.size() ? output(i, x) : y;
    // The context string is built only on failure: this runs every layer, every step.
    if (Status st = layers_[i]->forward(ctx, in, out); !st.ok()) {
      return st.with_context(describe(i) + " forward");
    }
    in = out;
  }
  return Status::ok_status();
}

Status Sequential::backward(const PassContext& ctx, const Tensor& x, const Tensor& dy, int dy_slot,
                            const Tensor& dx) {
  const int64_t B = x.size(0), T = x.size(1), rows = B * T;
  Tensor g = dy;       // the gradient flowing back: of layer k's output
  int slot = dy_slot;  // the scratch slot g lives in, or -1 (the caller's buffer)
  for (size_t k = layers_.size(); k-- > 0;) {
    Layer& l = *layers_[k];
    const Tensor in = k > 0 ? output(k - 1, x) : x;
    const int free_slot = slot == 0 ? 1 : 0;
    Tensor d;
    if (k > 0) {
      d = scratch_->view(depth_, free_slot, dtype_, rows, T, l.in_features());
    } else if (!dx.empty()) {
      d = dx;
    } else if (l.requires_dx()) {
      d = scratch_->view(depth_, free_slot, dtype_, rows, T, l.in_features());
    }
    if (Status st = l.backward(ctx, in, g, d); !st.ok()) {
      return st.with_context(describe(k) + " backward");
    }
    g = d;
    slot = free_slot;
  }
  return Status::ok_status();
}

void Sequential::collect_params(std::vector<Param*>& out) {
  for (auto& l : layers_) l->collect_params(out);
}

void Sequential::collect_states(std::vector<StateTensor*>& out) {
  for (auto& l : layers_) l->collect_states(out);
}

}  // namespace ampd::engine
