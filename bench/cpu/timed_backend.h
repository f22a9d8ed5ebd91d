// TimedBackend: a Backend that forwards every op to another backend and adds up the wall
// time of each (op, shapes) pair while `recording` is set. `ampd_bench gpt_ops` runs the
// real Trainer on it to show where a step's time goes, op by op. Each call goes through
// the inner backend's public (validating) method, and the label is built per call, so a
// step on it is a little slower than on the inner backend alone (gpt_ops reports both).
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <unordered_map>

#include "kernels/backend.h"

namespace ampd::bench {

class TimedBackend final : public Backend {
 public:
  struct Entry {
    double seconds = 0;
    int64_t calls = 0;
  };

  explicit TimedBackend(Backend& inner) : inner_(inner) {}

  bool recording = false;
  // op label ("matmul bf16[768x128] x bf16[384x128]^T -> ...") -> time and calls.
  const std::map<std::string, Entry>& entries() const { return entries_; }
  void clear() { entries_.clear(); }

  std::string name() const override { return inner_.name(); }
  std::string device_description() const override { return inner_.device_description(); }
  bool supports(DType dtype) const override { return inner_.supports(dtype); }
  bool prefers_bf16() const override { return inner_.prefers_bf16(); }

 protected:
  StatusOr<void*> allocate_impl(size_t bytes) override {
    auto b = inner_.allocate(bytes);
    if (!b.ok()) return b.status();
    void* p = b->data();
    owned_.emplace(p, std::move(*b));
    return p;
  }
  void free_impl(void* ptr, size_t) noexcept override { owned_.erase(ptr); }
  size_t device_total_bytes() const override { return inner_.memory_stats().device_total_bytes; }

  Status upload_impl(const Tensor& dst, const void* src) override {
    return timed([&] { return "upload " + dst.describe(); },
                 [&] { return inner_.upload(dst, src); });
  }
  Status download_impl(void* dst, const Tensor& src) override {
    return timed([&] { return "download " + src.describe(); },
                 [&] { return inner_.download(dst, src); });
  }
  Status copy_impl(const Tensor& dst, const Tensor& src) override {
    return timed([&] { return "copy " + src.describe(); }, [&] { return inner_.copy(dst, src); });
  }
  Status fill_impl(const Tensor& dst, float v) override {
    return timed([&] { return "fill " + dst.describe(); }, [&] { return inner_.fill(dst, v); });
  }
  Status synchronize_impl() override { return inner_.synchronize(); }

  Status matmul_impl(const MatmulArgs& a) override {
    return timed(
        [&] {
          return "matmul " + a.a.describe() + (a.trans_a ? "^T" : "") + " x " + a.b.describe() +
                 (a.trans_b ? "^T" : "") + " -> " + a.c.describe() +
                 (a.bias.empty() ? "" : " +bias") + (a.beta != 0 ? " +=" : "");
        },
        [&] { return inner_.matmul(a); });
  }
  Status batched_matmul_impl(const BatchedMatmulArgs& a) override {
    return timed(
        [&] {
          return "batched_matmul " + a.a.describe() + (a.trans_a ? "^T" : "") + " x " +
                 a.b.describe() + (a.trans_b ? "^T" : "") + " -> " + a.c.describe();
        },
        [&] { return inner_.batched_matmul(a); });
  }
  Status cast_impl(const Tensor& src, const Tensor& dst) override {
    return timed([&] { return "cast " + src.describe() + " -> " + dst.describe(); },
                 [&] { return inner_.cast(src, dst); });
  }
  Status add_bias_impl(const Tensor& x, const Tensor& bias) override {
    return timed([&] { return "add_bias " + x.describe(); },
                 [&] { return inner_.add_bias(x, bias); });
  }
  Status bias_grad_impl(const Tensor& dy, const Tensor& db, float beta) override {
    return timed([&] { return "bias_grad " + dy.describe(); },
                 [&] { return inner_.bias_grad(dy, db, beta); });
  }
  Status scale_impl(const Tensor& x, float alpha) override {
    return timed([&] { return "scale " + x.describe(); }, [&] { return inner_.scale(x, alpha); });
  }
  Status accumulate_impl(const Tensor& x, const Tensor& y) override {
    return timed([&] { return "accumulate " + x.describe() + " -> " + y.describe(); },
                 [&] { return inner_.accumulate(x, y); });
  }
  Status activation_forward_impl(Activation act, const Tensor& x, const Tensor& y) override {
    return timed([&] { return std::string(activation_name(act)) + "_forward " + x.describe(); },
                 [&] { return inner_.activation_forward(act, x, y); });
  }
  Status activation_backward_impl(Activation act, const Tensor& x, const Tensor& dy,
                                  const Tensor& dx) override {
    return timed([&] { return std::string(activation_name(act)) + "_backward " + x.describe(); },
                 [&] { return inner_.activation_backward(act, x, dy, dx); });
  }
  Status layernorm_forward_impl(const Tensor& x, const Tensor& g, const Tensor& b, const Tensor& y,
                                const Tensor& mean, const Tensor& rstd, float eps) override {
    return timed([&] { return "layernorm_forward " + x.describe(); },
                 [&] { return inner_.layernorm_forward(x, g, b, y, mean, rstd, eps); });
  }
  Status layernorm_backward_impl(const Tensor& dy, const Tensor& x, const Tensor& g,
                                 const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                 const Tensor& dg, const Tensor& db) override {
    return timed([&] { return "layernorm_backward " + x.describe(); },
                 [&] { return inner_.layernorm_backward(dy, x, g, mean, rstd, dx, dg, db); });
  }
  Status batchnorm_forward_train_impl(const Tensor& x, const Tensor& g, const Tensor& b,
                                      const Tensor& y, const Tensor& mean, const Tensor& rstd,
                                      const Tensor& rm, const Tensor& rv, float momentum,
                                      float eps) override {
    return timed([&] { return "batchnorm_forward_train " + x.describe(); },
                 [&] {
                   return inner_.batchnorm_forward_train(x, g, b, y, mean, rstd, rm, rv, momentum,
                                                         eps);
                 });
  }
  Status batchnorm_forward_eval_impl(const Tensor& x, const Tensor& g, const Tensor& b,
                                     const Tensor& rm, const Tensor& rv, const Tensor& y,
                                     float eps) override {
    return timed([&] { return "batchnorm_forward_eval " + x.describe(); },
                 [&] { return inner_.batchnorm_forward_eval(x, g, b, rm, rv, y, eps); });
  }
  Status batchnorm_backward_impl(const Tensor& dy, const Tensor& x, const Tensor& g,
                                 const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                 const Tensor& dg, const Tensor& db) override {
    return timed([&] { return "batchnorm_backward " + x.describe(); },
                 [&] { return inner_.batchnorm_backward(dy, x, g, mean, rstd, dx, dg, db); });
  }
  Status dropout_forward_impl(const Tensor& x, const Tensor& y, const Tensor& mask, float p,
                              uint64_t seed, uint64_t offset) override {
    return timed([&] { return "dropout_forward " + x.describe(); },
                 [&] { return inner_.dropout_forward(x, y, mask, p, seed, offset); });
  }
  Status dropout_backward_impl(const Tensor& dy, const Tensor& mask, const Tensor& dx,
                               float p) override {
    return timed([&] { return "dropout_backward " + dy.describe(); },
                 [&] { return inner_.dropout_backward(dy, mask, dx, p); });
  }
  Status softmax_xent_forward_impl(const Tensor& logits, const Tensor& labels, const Tensor& loss,
                                   const Tensor& lse) override {
    return timed([&] { return "softmax_xent_forward " + logits.describe(); },
                 [&] { return inner_.softmax_xent_forward(logits, labels, loss, lse); });
  }
  Status softmax_xent_backward_impl(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                                    const Tensor& dlogits, float grad_scale) override {
    return timed(
        [&] { return "softmax_xent_backward " + logits.describe(); },
        [&] { return inner_.softmax_xent_backward(logits, labels, lse, dlogits, grad_scale); });
  }
  Status mse_forward_impl(const Tensor& pred, const Tensor& target, const Tensor& loss) override {
    return timed([&] { return "mse_forward " + pred.describe(); },
                 [&] { return inner_.mse_forward(pred, target, loss); });
  }
  Status mse_backward_impl(const Tensor& pred, const Tensor& target, const Tensor& dpred,
                           float grad_scale) override {
    return timed([&] { return "mse_backward " + pred.describe(); },
                 [&] { return inner_.mse_backward(pred, target, dpred, grad_scale); });
  }
  Status argmax_rows_impl(const Tensor& x, const Tensor& out) override {
    return timed([&] { return "argmax_rows " + x.describe(); },
                 [&] { return inner_.argmax_rows(x, out); });
  }
  Status embedding_forward_impl(const Tensor& ids, const Tensor& table,
                                const Tensor& out) override {
    return timed([&] { return "embedding_forward " + table.describe() + " -> " + out.describe(); },
                 [&] { return inner_.embedding_forward(ids, table, out); });
  }
  Status embedding_backward_impl(const Tensor& ids, const Tensor& dy, const Tensor& dtable,
                                 float beta) override {
    return timed([&] { return "embedding_backward " + dy.describe() + " -> " + dtable.describe(); },
                 [&] { return inner_.embedding_backward(ids, dy, dtable, beta); });
  }
  Status causal_softmax_forward_impl(const Tensor& s, const Tensor& p) override {
    return timed([&] { return "causal_softmax_forward " + s.describe() + " -> " + p.describe(); },
                 [&] { return inner_.causal_softmax_forward(s, p); });
  }
  Status causal_softmax_backward_impl(const Tensor& p, const Tensor& dp,
                                      const Tensor& ds) override {
    return timed(
        [&] { return "causal_softmax_backward " + dp.describe() + " -> " + ds.describe(); },
        [&] { return inner_.causal_softmax_backward(p, dp, ds); });
  }
  Status unscale_and_check_impl(std::span<const Tensor> grads, float inv_scale,
                                const Tensor& flags) override {
    return timed([&] { return "unscale_and_check x" + std::to_string(grads.size()); },
                 [&] { return inner_.unscale_and_check(grads, inv_scale, flags); });
  }
  Status global_norm_impl(std::span<const Tensor> grads, const Tensor& out) override {
    return timed([&] { return "global_norm x" + std::to_string(grads.size()); },
                 [&] { return inner_.global_norm(grads, out); });
  }
  Status sgd_step_impl(std::span<const ParamSlot> params, const SgdParams& hp) override {
    return timed([&] { return "sgd_step x" + std::to_string(params.size()); },
                 [&] { return inner_.sgd_step(params, hp); });
  }
  Status adamw_step_impl(std::span<const ParamSlot> params, const AdamWParams& hp) override {
    return timed([&] { return "adamw_step x" + std::to_string(params.size()); },
                 [&] { return inner_.adamw_step(params, hp); });
  }

 private:
  template <typename Label, typename Op>
  Status timed(Label&& label, Op&& op) {
    if (!recording) return op();
    const auto t0 = std::chrono::steady_clock::now();
    Status s = op();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    Entry& e = entries_[label()];
    e.seconds += dt;
    ++e.calls;
    return s;
  }

  Backend& inner_;
  std::unordered_map<void*, Buffer> owned_;
  std::map<std::string, Entry> entries_;
};

}  // namespace ampd::bench
