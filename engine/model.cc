#include "engine/model.h"

#include <algorithm>

#include "engine/gpt.h"
#include "kernels/convert.h"

namespace ampd::engine {

StatusOr<std::unique_ptr<Model>> Model::create(Backend& backend, const ampd::v1::ModelSpec& spec,
                                               const Options& options) {
  std::unique_ptr<Model> m(new Model(&backend, options));
  AMPD_RETURN_IF_ERROR(m->build(spec));
  return m;
}

StatusOr<MemoryTally> Model::plan(const ampd::v1::ModelSpec& spec, const Options& options) {
  Model m(nullptr, options);
  AMPD_RETURN_IF_ERROR(m.build(spec));
  return m.tally_;
}

Status Model::build(const ampd::v1::ModelSpec& spec) {
  const Options& o = options_;
  layer_specs_ = model_layers(spec, options_.in_features);
  if (layer_specs_.empty()) return invalid_argument("model.layers: must not be empty");
  if (options_.token_input != layer_specs_.Get(0).has_embedding()) {
    return invalid_argument(options_.token_input
                                ? "model.layers[0]: a model on text data starts with an embedding"
                                : "model.layers[0]: an embedding layer needs text data");
  }
  if (o.max_batch <= 0 || o.in_features <= 0 || o.time <= 0) {
    return invalid_argument("model: batch size, sequence length and input width must be positive");
  }
  BuildContext ctx;
  ctx.backend = backend_;
  ctx.act_dtype = o.act_dtype;
  ctx.max_batch = o.max_batch;
  ctx.seed = o.seed;
  ctx.time = o.time;
  ctx.token_input = o.token_input;
  ctx.tally = &tally_;
  ctx.params_by_name = &params_by_name_;
  int64_t next_index = 0;
  // The input first: its buffer is part of the activations, as before the layers'.
  if (o.token_input) {
    AMPD_ASSIGN_OR_RETURN(input_, ctx.make_activation(DType::kI32, ctx.max_rows(), 1));
  } else {
    AMPD_ASSIGN_OR_RETURN(input_, ctx.make_activation(o.act_dtype, ctx.max_rows(), o.in_features));
  }
  AMPD_RETURN_IF_ERROR(layers_.build(ctx, layer_specs_, o.in_features,
                                     spec.has_gpt() ? "model.gpt" : "model.layers", "", 0,
                                     &next_index, &scratch_));
  layers_.collect_params(params_);
  const int64_t width = layers_.out_features();
  if (width != o.out_features) {
    return invalid_argument(
        "model.layers[" + std::to_string(layer_specs_.size() - 1) + "]: the model outputs " +
        std::to_string(width) + " values per example but the data has " +
        std::to_string(o.out_features) +
        (o.loss == LossKind::kCrossEntropy ? " classes" : " targets") +
        "; set the last linear layer's out_features to " + std::to_string(o.out_features));
  }
  const int64_t rows = ctx.max_rows();
  AMPD_ASSIGN_OR_RETURN(logits_, ctx.make_activation(o.act_dtype, rows, width));
  AMPD_RETURN_IF_ERROR(scratch_.allocate(ctx));
  AMPD_ASSIGN_OR_RETURN(loss_, ctx.make_activation(DType::kF32, 1, rows));
  AMPD_ASSIGN_OR_RETURN(lse_, ctx.make_activation(DType::kF32, 1, rows));
  AMPD_ASSIGN_OR_RETURN(argmax_, ctx.make_activation(DType::kI32, 1, rows));
  if (o.loss == LossKind::kCrossEntropy) {
    AMPD_ASSIGN_OR_RETURN(labels_, ctx.make_activation(DType::kI32, 1, rows));
  } else {
    AMPD_ASSIGN_OR_RETURN(targets_, ctx.make_activation(DType::kF32, rows, o.out_features));
  }
  return Status::ok_status();
}

Status Model::check_batch(int64_t n) const {
  if (n <= 0 || n > options_.max_batch) {
    return invalid_argument("batch of " + std::to_string(n) + " rows exceeds the model's " +
                            std::to_string(options_.max_batch));
  }
  return Status::ok_status();
}

Tensor Model::input(int64_t n) const {
  if (options_.token_input) {
    return Tensor::contiguous(input_.data(), DType::kI32, {n, options_.time, 1});
  }
  return Tensor::contiguous(input_.data(), options_.act_dtype,
                            {n, options_.time, options_.in_features});
}

Tensor Model::outputs(int64_t n) const {
  return Tensor::contiguous(logits_.data(), options_.act_dtype,
                            {n, options_.time, layers_.out_features()});
}

Status Model::load_batch(int64_t n, const float* features, const int32_t* labels,
                         const float* targets) {
  if (options_.token_input) return invalid_argument("load_batch: the model's input is tokens");
  AMPD_RETURN_IF_ERROR(check_batch(n));
  const int64_t rows = n * options_.time;
  // The input is rounded to the working dtype on the host (convert.h, the same RNE as
  // Backend::cast) and uploaded at its final size: no FP32 staging buffer on the device,
  // and half the host-to-device bytes in FP16/BF16.
  const Tensor x0 = input(n);
  if (options_.act_dtype == DType::kF32) {
    AMPD_RETURN_IF_ERROR(backend_->upload(x0, features));
  } else {
    input_host_.resize(x0.bytes());
    convert(features, DType::kF32, input_host_.data(), options_.act_dtype,
            static_cast<size_t>(x0.numel()));
    AMPD_RETURN_IF_ERROR(backend_->upload(x0, input_host_.data()));
  }
  if (options_.loss == LossKind::kCrossEntropy) {
    // In [0, out_features): guaranteed by the data set (Dataset::labels, checked by
    // split_dataset); the backends' softmax cross-entropy does not check them.
    AMPD_RETURN_IF_ERROR(backend_->upload(labels_.view(DType::kI32, 1, rows), labels));
  } else {
    AMPD_RETURN_IF_ERROR(
        backend_->upload(targets_.view(DType::kF32, rows, options_.out_features), targets));
  }
  return Status::ok_status();
}

Status Model::load_tokens(int64_t n, const int32_t* tokens, const int32_t* labels) {
  if (!options_.token_input) return invalid_argument("load_tokens: the model's input is features");
  AMPD_RETURN_IF_ERROR(check_batch(n));
  const int64_t rows = n * options_.time;
  AMPD_RETURN_IF_ERROR(backend_->upload(input_.view(DType::kI32, 1, rows), tokens));
  if (labels != nullptr) {
    AMPD_RETURN_IF_ERROR(backend_->upload(labels_.view(DType::kI32, 1, rows), labels));
  }
  return Status::ok_status();
}

Status Model::forward(const PassContext& ctx, int64_t n, bool with_loss) {
  const Tensor out = outputs(n);
  AMPD_RETURN_IF_ERROR(layers_.forward(ctx, input(n), out));
  if (!with_loss) return Status::ok_status();
  const int64_t rows = n * options_.time;
  const Tensor logits = out.reshaped(rows, out.size(-1));
  if (options_.loss == LossKind::kCrossEntropy) {
    return backend_->softmax_xent_forward(logits, labels_.view(DType::kI32, 1, rows), loss_rows(n),
                                          lse_.view(DType::kF32, 1, rows));
  }
  return backend_->mse_forward(logits, targets_.view(DType::kF32, rows, options_.out_features),
                               loss_rows(n));
}

Status Model::backward(const PassContext& ctx, int64_t n, float loss_scale) {
  const DType dt = options_.act_dtype;
  const int64_t T = options_.time, rows = n * T;
  const int64_t out_w = layers_.out_features();
  for (Param* p : params_) p->grad_writes = 0;
  // d(mean loss * scale)/d(outputs): the 1/rows of the mean and the loss scale are folded
  // into one FP32 factor applied before the single rounding to the working dtype.
  const float grad_scale = loss_scale / static_cast<float>(rows);
  const Tensor dlogits = scratch_.view(0, 0, dt, rows, T, out_w);
  const Tensor logits = outputs(n).reshaped(rows, out_w);
  const Tensor d2 = dlogits.reshaped(rows, out_w);
  if (options_.loss == LossKind::kCrossEntropy) {
    AMPD_RETURN_IF_ERROR(backend_->softmax_xent_backward(logits, labels_.view(DType::kI32, 1, rows),
                                                         lse_.view(DType::kF32, 1, rows), d2,
                                                         grad_scale));
  } else {
    AMPD_RETURN_IF_ERROR(
        backend_->mse_backward(logits, targets_.view(DType::kF32, rows, out_w), d2, grad_scale));
  }
  return layers_.backward(ctx, input(n), dlogits, /*dy_slot=*/0, Tensor{});
}

Status Model::read_losses(int64_t n, float* losses) {
  return backend_->download(losses, loss_rows(n));
}

Status Model::read_predictions(int64_t n, int32_t* predictions) {
  const int64_t rows = n * options_.time;
  const Tensor am = argmax_.view(DType::kI32, 1, rows);
  AMPD_RETURN_IF_ERROR(
      backend_->argmax_rows(outputs(n).reshaped(rows, layers_.out_features()), am));
  return backend_->download(predictions, am);
}

std::vector<StateTensor*> Model::states() {
  std::vector<StateTensor*> out;
  layers_.collect_states(out);
  return out;
}

Status Model::refresh_low_precision() {
  for (auto* p : params()) {
    if (p->low) AMPD_RETURN_IF_ERROR(backend_->cast(p->master_t(), p->low_t()));
  }
  return Status::ok_status();
}

}  // namespace ampd::engine
