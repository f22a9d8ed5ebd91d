#include "engine/model.h"

#include <algorithm>

#include "kernels/convert.h"

namespace ampd::engine {

StatusOr<std::unique_ptr<Model>> Model::create(Backend& backend, const ampd::v1::ModelSpec& spec,
                                               const Options& options) {
  if (spec.layers().empty()) return InvalidArgument("model.layers: must not be empty");
  if (options.max_batch <= 0 || options.in_features <= 0) {
    return InvalidArgument("model: batch size and input width must be positive");
  }
  std::unique_ptr<Model> m(new Model(backend, options));
  int64_t width = options.in_features;
  m->max_width_ = width;
  for (int i = 0; i < spec.layers_size(); ++i) {
    AMPD_ASSIGN_OR_RETURN(auto layer, make_layer(spec.layers(i)));
    BuildContext ctx{&backend, options.act_dtype, options.max_batch, i, options.seed};
    AMPD_RETURN_IF_ERROR(
        layer->build(ctx, width)
            .with_context("model.layers[" + std::to_string(i) + "]." + layer->kind()));
    width = layer->out_features();
    m->max_width_ = std::max(m->max_width_, width);
    m->layers_.push_back(std::move(layer));
  }
  if (width != options.out_features) {
    return InvalidArgument(
        "model.layers[" + std::to_string(spec.layers_size() - 1) + "]: the model outputs " +
        std::to_string(width) + " values per example but the data has " +
        std::to_string(options.out_features) +
        (options.loss == LossKind::kCrossEntropy ? " classes" : " targets") +
        "; set the last linear layer's out_features to " + std::to_string(options.out_features));
  }

  // Activation buffers (see the memory plan in model.h).
  const int64_t B = options.max_batch;
  const DType dt = options.act_dtype;
  m->acts_.resize(m->layers_.size() + 1);
  AMPD_RETURN_IF_ERROR(m->alloc_act(m->acts_[0], dt, B, options.in_features));
  for (size_t i = 0; i < m->layers_.size(); ++i) {
    AMPD_RETURN_IF_ERROR(m->alloc_act(m->acts_[i + 1], dt, B, m->layers_[i]->out_features()));
  }
  AMPD_RETURN_IF_ERROR(m->alloc_act(m->grad_a_, dt, B, m->max_width_));
  AMPD_RETURN_IF_ERROR(m->alloc_act(m->grad_b_, dt, B, m->max_width_));
  AMPD_RETURN_IF_ERROR(m->alloc_act(m->loss_, DType::kF32, 1, B));
  AMPD_RETURN_IF_ERROR(m->alloc_act(m->lse_, DType::kF32, 1, B));
  AMPD_RETURN_IF_ERROR(m->alloc_act(m->argmax_, DType::kI32, 1, B));
  if (options.loss == LossKind::kCrossEntropy) {
    AMPD_RETURN_IF_ERROR(m->alloc_act(m->labels_, DType::kI32, 1, B));
  } else {
    AMPD_RETURN_IF_ERROR(m->alloc_act(m->targets_, DType::kF32, B, options.out_features));
  }
  for (const auto& l : m->layers_) m->activation_bytes_ += l->aux_bytes();
  return m;
}

Status Model::alloc_act(Buffer& buf, DType dtype, int64_t rows, int64_t cols) {
  const size_t bytes = static_cast<size_t>(rows * cols) * dtype_size(dtype);
  AMPD_ASSIGN_OR_RETURN(buf, backend_->allocate(bytes));
  activation_bytes_ += static_cast<int64_t>(bytes);
  return Status::Ok();
}

Tensor Model::outputs(int64_t n) const {
  return acts_.back().view(options_.act_dtype, n, layers_.back()->out_features());
}

Status Model::load_batch(int64_t n, const float* features, const int32_t* labels,
                         const float* targets) {
  if (n <= 0 || n > options_.max_batch) {
    return InvalidArgument("batch of " + std::to_string(n) + " rows exceeds the model's " +
                           std::to_string(options_.max_batch));
  }
  // The input is rounded to the working dtype on the host (convert.h, the same RNE as
  // Backend::cast) and uploaded at its final size: no FP32 staging buffer on the device,
  // and half the host-to-device bytes in FP16/BF16.
  const Tensor x0 = acts_[0].view(options_.act_dtype, n, options_.in_features);
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
    AMPD_RETURN_IF_ERROR(backend_->upload(labels_.view(DType::kI32, 1, n), labels));
  } else {
    AMPD_RETURN_IF_ERROR(
        backend_->upload(targets_.view(DType::kF32, n, options_.out_features), targets));
  }
  return Status::Ok();
}

Status Model::forward(const PassContext& ctx, int64_t n) {
  const DType dt = options_.act_dtype;
  for (size_t i = 0; i < layers_.size(); ++i) {
    Layer& l = *layers_[i];
    const Tensor x = acts_[i].view(dt, n, l.in_features());
    const Tensor y = acts_[i + 1].view(dt, n, l.out_features());
    AMPD_RETURN_IF_ERROR(l.forward(ctx, x, y).with_context("layer " + std::to_string(i) + " (" +
                                                           l.kind() + ") forward"));
  }
  const Tensor out = outputs(n);
  if (options_.loss == LossKind::kCrossEntropy) {
    return backend_->softmax_xent_forward(out, labels_.view(DType::kI32, 1, n), loss_rows(n),
                                          lse_.view(DType::kF32, 1, n));
  }
  return backend_->mse_forward(out, targets_.view(DType::kF32, n, options_.out_features),
                               loss_rows(n));
}

Status Model::backward(const PassContext& ctx, int64_t n, float loss_scale) {
  const DType dt = options_.act_dtype;
  const int64_t out_w = layers_.back()->out_features();
  // d(mean loss * scale)/d(outputs): the 1/n of the mean and the loss scale are folded
  // into one FP32 factor applied before the single rounding to the working dtype.
  const float grad_scale = loss_scale / static_cast<float>(n);
  Buffer* dy_buf = &grad_a_;
  Buffer* dx_buf = &grad_b_;
  const Tensor dlogits = dy_buf->view(dt, n, out_w);
  if (options_.loss == LossKind::kCrossEntropy) {
    AMPD_RETURN_IF_ERROR(
        backend_->softmax_xent_backward(outputs(n), labels_.view(DType::kI32, 1, n),
                                        lse_.view(DType::kF32, 1, n), dlogits, grad_scale));
  } else {
    AMPD_RETURN_IF_ERROR(backend_->mse_backward(outputs(n), targets_.view(DType::kF32, n, out_w),
                                                dlogits, grad_scale));
  }
  for (size_t k = layers_.size(); k-- > 0;) {
    Layer& l = *layers_[k];
    const Tensor x = acts_[k].view(dt, n, l.in_features());
    const Tensor y = acts_[k + 1].view(dt, n, l.out_features());
    const Tensor dy = dy_buf->view(dt, n, l.out_features());
    const bool need_dx = k > 0 || l.requires_dx();
    const Tensor dx = need_dx ? dx_buf->view(dt, n, l.in_features()) : Tensor{};
    AMPD_RETURN_IF_ERROR(
        l.backward(ctx, x, y, dy, dx)
            .with_context("layer " + std::to_string(k) + " (" + l.kind() + ") backward"));
    std::swap(dy_buf, dx_buf);
  }
  return Status::Ok();
}

Status Model::read_losses(int64_t n, float* losses) {
  return backend_->download(losses, loss_rows(n));
}

Status Model::read_predictions(int64_t n, int32_t* predictions) {
  const Tensor am = argmax_.view(DType::kI32, 1, n);
  AMPD_RETURN_IF_ERROR(backend_->argmax_rows(outputs(n), am));
  return backend_->download(predictions, am);
}

std::vector<Layer*> Model::layers() const {
  std::vector<Layer*> out;
  for (const auto& l : layers_) out.push_back(l.get());
  return out;
}

std::vector<Param*> Model::params() {
  std::vector<Param*> out;
  for (auto& l : layers_) {
    for (auto& p : l->params()) out.push_back(&p);
  }
  return out;
}

std::vector<StateTensor*> Model::states() {
  std::vector<StateTensor*> out;
  for (auto& l : layers_) {
    for (auto& s : l->states()) out.push_back(&s);
  }
  return out;
}

int64_t Model::parameter_count() const {
  int64_t n = 0;
  for (const auto& l : layers_) {
    for (const auto& p : l->params()) n += p.rows * p.cols;
  }
  return n;
}

int64_t Model::parameter_bytes() const {
  int64_t bytes = 0;
  for (const auto& l : layers_) {
    for (const auto& p : l->params()) {
      bytes += static_cast<int64_t>(p.master.bytes() + p.low.bytes() + p.grad.bytes());
    }
  }
  return bytes;
}

Status Model::refresh_low_precision() {
  for (auto* p : params()) {
    if (p->low) AMPD_RETURN_IF_ERROR(backend_->cast(p->master_t(), p->low_t()));
  }
  return Status::Ok();
}

}  // namespace ampd::engine
