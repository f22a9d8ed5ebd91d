#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/job_spec.h"
#include "engine/trainer.h"
#include "kernels/convert.h"
#include "kernels/dropout_hash.h"

namespace ampd::engine {

StatusOr<std::unique_ptr<Sampler>> Sampler::create(Backend& backend,
                                                   const std::string& checkpoint) {
  AMPD_ASSIGN_OR_RETURN(LoadedCheckpoint ck, read_checkpoint(checkpoint));
  if (!ck.meta.spec.data().has_text() || ck.meta.vocabulary.empty()) {
    return invalid_argument(checkpoint +
                            ": not a language model's checkpoint (no text data, no vocabulary)");
  }
  std::unique_ptr<Sampler> s(new Sampler());
  s->backend_ = &backend;
  AMPD_ASSIGN_OR_RETURN(s->vocab_, Vocabulary::parse(ck.meta.vocabulary));
  AMPD_ASSIGN_OR_RETURN(const ampd::v1::JobSpec spec, validate_and_resolve(ck.meta.spec));
  s->block_ = spec.model().block_size();
  s->step_ = ck.meta.step;
  s->precision_ = ck.meta.precision.empty() ? "fp32" : ck.meta.precision;
  const DType dt = precision_dtype(s->precision_);
  if (!backend.supports(dt)) {
    return invalid_argument("backend '" + backend.name() + "' does not support " + s->precision_ +
                            ", the checkpoint's precision");
  }
  Model::Options mo;
  mo.act_dtype = dt;
  mo.max_batch = 1;
  mo.time = s->block_;
  mo.token_input = true;
  mo.in_features = s->vocab_.size();
  mo.out_features = s->vocab_.size();
  mo.seed = spec.training().seed();
  AMPD_ASSIGN_OR_RETURN(s->model_, Model::create(backend, spec.model(), mo));
  AMPD_RETURN_IF_ERROR(restore_weights(ck, *s->model_).with_context(checkpoint));
  return s;
}

Status Sampler::check(const SampleOptions& o) const {
  AMPD_RETURN_IF_ERROR(check_ranges(o));
  return vocab_.encode(o.prompt, "prompt").status();
}

Status Sampler::check_ranges(const SampleOptions& o) {
  if (static_cast<int64_t>(o.prompt.size()) > kMaxPromptBytes) {
    return invalid_argument("prompt: at most " + std::to_string(kMaxPromptBytes) +
                            " characters, got " + std::to_string(o.prompt.size()));
  }
  if (o.max_tokens < 1 || o.max_tokens > kMaxSampleTokens) {
    return invalid_argument("max_tokens: must be in [1, " + std::to_string(kMaxSampleTokens) +
                            "], got " + std::to_string(o.max_tokens));
  }
  if (!(o.temperature >= 0.0f) || !std::isfinite(o.temperature) || o.temperature > 100.0f) {
    return invalid_argument("temperature: must be in [0, 100] (0 = greedy), got " +
                            std::to_string(o.temperature));
  }
  if (o.top_k < 0) {
    return invalid_argument("top_k: must be >= 0 (0 = no limit), got " + std::to_string(o.top_k));
  }
  return Status::ok_status();
}

Status Sampler::generate(const SampleOptions& o,
                         const std::function<bool(const std::string&)>& on_text) {
  AMPD_RETURN_IF_ERROR(check(o));
  AMPD_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, vocab_.encode(o.prompt, "prompt"));
  if (tokens.empty()) tokens.push_back(0);
  const int64_t V = vocab_.size(), T = block_;
  std::vector<int32_t> window(static_cast<size_t>(T));
  std::vector<float> logits(static_cast<size_t>(V));
  std::vector<uint16_t> raw(static_cast<size_t>(V));  // FP16/BF16 logits as downloaded
  std::vector<double> probs(static_cast<size_t>(V));
  std::vector<int32_t> order(static_cast<size_t>(V));
  PassContext ctx{backend_, /*training=*/false, 0, 0};
  uint64_t rng = splitmix64(o.seed ^ 0x5a3b1e5ull);
  for (int64_t produced = 0; produced < o.max_tokens; ++produced) {
    const auto len = static_cast<int64_t>(std::min<size_t>(tokens.size(), static_cast<size_t>(T)));
    std::fill(window.begin(), window.end(), 0);
    std::copy(tokens.end() - len, tokens.end(), window.begin());
    AMPD_RETURN_IF_ERROR(model_->load_tokens(1, window.data(), nullptr));
    AMPD_RETURN_IF_ERROR(model_->forward(ctx, 1, /*with_loss=*/false));
    const Tensor out = model_->outputs(1).reshaped(T, V).row_slice(len - 1, 1);
    if (out.dtype == DType::kF32) {
      AMPD_RETURN_IF_ERROR(backend_->download(logits.data(), out));
    } else {
      AMPD_RETURN_IF_ERROR(backend_->download(raw.data(), out));
      convert(raw.data(), out.dtype, logits.data(), DType::kF32, static_cast<size_t>(V));
    }
    int32_t next = 0;
    if (o.temperature == 0.0f) {
      next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    } else {
      // Top-k by value (ties by id), then softmax of logits / temperature in FP64.
      std::iota(order.begin(), order.end(), 0);
      const int64_t k = o.top_k > 0 ? std::min<int64_t>(o.top_k, V) : V;
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        const float la = logits[static_cast<size_t>(a)], lb = logits[static_cast<size_t>(b)];
        return la > lb || (la == lb && a < b);
      });
      const double top = logits[static_cast<size_t>(order[0])];
      if (!std::isfinite(top)) {
        return failed_precondition("the model's logits are not finite at token " +
                                   std::to_string(produced));
      }
      double sum = 0;
      for (int64_t i = 0; i < k; ++i) {
        const auto id = static_cast<size_t>(order[static_cast<size_t>(i)]);
        probs[static_cast<size_t>(i)] = std::exp((logits[id] - top) / o.temperature);
        sum += probs[static_cast<size_t>(i)];
      }
      rng = splitmix64(rng);
      double u = static_cast<double>(rng >> 11) * 0x1p-53 * sum;
      next = order[static_cast<size_t>(k - 1)];
      for (int64_t i = 0; i < k; ++i) {
        u -= probs[static_cast<size_t>(i)];
        if (u < 0) {
          next = order[static_cast<size_t>(i)];
          break;
        }
      }
    }
    tokens.push_back(next);
    if (!on_text(vocab_.decode_one(next))) break;
  }
  return Status::ok_status();
}

StatusOr<std::vector<float>> Sampler::prompt_logits(const std::string& prompt) {
  AMPD_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, vocab_.encode(prompt, "prompt"));
  const int64_t V = vocab_.size(), T = block_, len = static_cast<int64_t>(tokens.size());
  if (len < 1 || len > T) {
    return invalid_argument("prompt: must be 1 to " + std::to_string(T) +
                            " characters (the block size) for logits, got " + std::to_string(len));
  }
  std::vector<int32_t> window(static_cast<size_t>(T), 0);
  std::copy(tokens.begin(), tokens.end(), window.begin());
  PassContext ctx{backend_, /*training=*/false, 0, 0};
  AMPD_RETURN_IF_ERROR(model_->load_tokens(1, window.data(), nullptr));
  AMPD_RETURN_IF_ERROR(model_->forward(ctx, 1, /*with_loss=*/false));
  const Tensor out = model_->outputs(1).reshaped(T, V).row_slice(0, len);
  std::vector<float> logits(static_cast<size_t>(len * V));
  if (out.dtype == DType::kF32) {
    AMPD_RETURN_IF_ERROR(backend_->download(logits.data(), out));
  } else {
    std::vector<uint16_t> raw(logits.size());
    AMPD_RETURN_IF_ERROR(backend_->download(raw.data(), out));
    convert(raw.data(), out.dtype, logits.data(), DType::kF32, logits.size());
  }
  return logits;
}

}  // namespace ampd::engine
