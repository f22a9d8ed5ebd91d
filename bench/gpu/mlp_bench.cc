// GPU benchmark of the CUDA backend: the training step of an MLP, run through the Backend
// interface exactly as the engine runs it (engine/model.cc, engine/layers.cc,
// engine/trainer.cc), in FP32, FP16 and BF16; and the cuBLASLt matmul peak of the same card.
//
//   ampd_gpu_bench [--batch 4096] [--width 4096] [--layers 4] [--steps 20] [--warmup 3]
//                  [--precisions fp32,fp16,bf16] [--peak 8192] [--plugin-dir DIR]
//                  [--json FILE]
//
// The model: `layers` Linear(width, width) layers with GELU between them, softmax
// cross-entropy over `width` classes, AdamW on FP32 master weights (the engine's default
// optimizer); FP16 with dynamic loss scaling (init 2^16, halve on overflow), BF16 and FP32
// at scale 1. One step is what Trainer::train_step does, minus the host-side batch gather:
//   cast the FP32 batch to the working dtype; per layer matmul (+FP32 bias in the epilogue)
//   or GELU; softmax_xent_forward; accumulate the loss; softmax_xent_backward; per layer
//   dW = dy^T x (FP32), bias_grad, dx = dy W, GELU backward; unscale_and_check + read the
//   flags (the step's sync point); adamw_step (which also writes the FP16/BF16 weights).
// The batch stays on the device (the engine uploads it each step; PyTorch benchmarks keep
// it resident too), so the numbers compare the step's GPU work.
//
// Matmul work per step: forward `layers` products, backward `layers` dW and `layers - 1` dx
// (the first layer needs no dx): (3 layers - 1) * 2 * batch * width^2 FLOP. "matmul TFLOP/s"
// below is that over the measured step time: the share of the card's matmul peak the whole
// step achieves.
//
// Timing: host clock around each step (every step ends in a synchronizing flags download),
// median over `steps` after `warmup`; the peak is the median of 3 runs of 10 back-to-back
// products between two synchronizations. Inputs are random (never zeros).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/backend_factory.h"

namespace {

using ampd::Backend;
using ampd::Buffer;
using ampd::DType;
using ampd::Status;
using ampd::Tensor;
using Clock = std::chrono::steady_clock;

struct Options {
  int64_t batch = 4096;
  int64_t width = 4096;
  int layers = 4;
  int steps = 20;
  int warmup = 3;
  int64_t peak = 8192;
  std::vector<std::string> precisions = {"fp32", "fp16", "bf16"};
  std::string plugin_dir;
  std::string json;
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "ampd_gpu_bench: %s\n", what.c_str());
  std::exit(2);
}

void check(const Status& s, const std::string& what) {
  if (!s.ok()) die(what + ": " + s.to_string());
}

Buffer alloc(Backend& be, size_t bytes, const std::string& what) {
  auto b = be.allocate(bytes);
  if (!b.ok()) die("allocate " + what + ": " + b.status().to_string());
  return std::move(b).value();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<float> random_floats(size_t n, float lo, float hi, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<float> v(n);
  const double scale = (static_cast<double>(hi) - lo) * 0x1p-64;
  for (float& x : v) x = static_cast<float>(lo + static_cast<double>(gen()) * scale);
  return v;
}

DType dtype_of(const std::string& p) {
  return p == "fp16" ? DType::kF16 : p == "bf16" ? DType::kBF16 : DType::kF32;
}

// ---- the matmul peak ----------------------------------------------------------------------

double matmul_peak_tflops(Backend& be, DType dt, int64_t s) {
  const size_t n = static_cast<size_t>(s * s);
  Buffer f32 = alloc(be, n * 4, "peak f32");
  const std::vector<float> host = random_floats(n, -1.0f, 1.0f, 7);
  const Tensor t32 = f32.view(DType::kF32, s, s);
  check(be.upload(t32, host.data()), "peak upload");
  Buffer a = alloc(be, n * ampd::dtype_size(dt), "peak a");
  Buffer c = alloc(be, n * ampd::dtype_size(dt), "peak c");
  const Tensor ta = a.view(dt, s, s), tc = c.view(dt, s, s);
  check(be.cast(t32, ta), "peak cast");
  ampd::MatmulArgs m;
  m.a = ta;
  m.b = ta;
  m.trans_b = true;  // A A^T: a different operand layout from A alone, random products
  m.c = tc;
  for (int i = 0; i < 3; ++i) check(be.matmul(m), "peak warmup");
  check(be.synchronize(), "peak sync");
  std::vector<double> runs;
  const int reps = dt == DType::kF32 ? 3 : 10;
  for (int r = 0; r < 3; ++r) {
    const auto t0 = Clock::now();
    for (int i = 0; i < reps; ++i) check(be.matmul(m), "peak matmul");
    check(be.synchronize(), "peak sync");
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count() / reps;
    runs.push_back(2.0 * static_cast<double>(s) * s * s / secs * 1e-12);
  }
  return median(runs);
}

// ---- the MLP step -------------------------------------------------------------------------

struct Param {
  Buffer master, grad, m, v, low;
  int64_t rows = 0, cols = 0;
  bool has_low = false;
  DType low_dtype = DType::kF32;
  Tensor master_t() const { return master.view(DType::kF32, rows, cols); }
  Tensor grad_t() const { return grad.view(DType::kF32, rows, cols); }
  Tensor compute_t() const { return has_low ? low.view(low_dtype, rows, cols) : master_t(); }
};

struct PhaseTimes {
  double forward = 0, backward = 0, unscale = 0, optimizer = 0;
  // Per operation (synchronized before and after each; host clock), in step order.
  std::vector<std::pair<std::string, double>> ops;
  void add_op(const std::string& name, double ms) {
    for (auto& [n, t] : ops) {
      if (n == name) {
        t += ms;
        return;
      }
    }
    ops.emplace_back(name, ms);
  }
};

class Mlp {
 public:
  Mlp(Backend& be, const Options& o, DType dt) : be_(be), o_(o), dt_(dt) {
    const int64_t B = o.batch, W = o.width;
    const size_t act = static_cast<size_t>(B * W) * ampd::dtype_size(dt);
    const float bound = 1.0f / std::sqrt(static_cast<float>(W));
    for (int l = 0; l < o.layers; ++l) {
      for (int which = 0; which < 2; ++which) {  // weight (W x W), bias (1 x W)
        Param p;
        p.rows = which == 0 ? W : 1;
        p.cols = W;
        const size_t n = static_cast<size_t>(p.rows * p.cols);
        p.master = alloc(be, n * 4, "master");
        p.grad = alloc(be, n * 4, "grad");
        p.m = alloc(be, n * 4, "adam m");
        p.v = alloc(be, n * 4, "adam v");
        const auto init = random_floats(n, -bound, bound, 100 + 2 * l + which);
        check(be.upload(p.master_t(), init.data()), "init");
        check(be.fill(p.grad_t(), 0.0f), "init");
        check(be.fill(p.m.view(DType::kF32, p.rows, p.cols), 0.0f), "init");
        check(be.fill(p.v.view(DType::kF32, p.rows, p.cols), 0.0f), "init");
        if (which == 0 && dt != DType::kF32) {  // the bias stays FP32 (epilogue), as in layers.cc
          p.has_low = true;
          p.low_dtype = dt;
          p.low = alloc(be, n * ampd::dtype_size(dt), "low");
          check(be.cast(p.master_t(), p.compute_t()), "init cast");
        }
        params_.push_back(std::move(p));
      }
    }
    // Activations: input + one per layer (Linear, GELU, ..., Linear), as model.cc plans them.
    const int n_layers = 2 * o.layers - 1;
    for (int i = 0; i <= n_layers; ++i) acts_.push_back(alloc(be, act, "activation"));
    grad_a_ = alloc(be, act, "grad a");
    grad_b_ = alloc(be, act, "grad b");
    input_ = alloc(be, static_cast<size_t>(B * W) * 4, "input");
    loss_ = alloc(be, static_cast<size_t>(B) * 4, "loss");
    lse_ = alloc(be, static_cast<size_t>(B) * 4, "lse");
    labels_ = alloc(be, static_cast<size_t>(B) * 4, "labels");
    loss_accum_ = alloc(be, static_cast<size_t>(B) * 4, "loss accum");
    flags_ = alloc(be, params_.size() * 4, "flags");
    const auto x = random_floats(static_cast<size_t>(B * W), -2.0f, 2.0f, 1);
    check(be.upload(input_.view(DType::kF32, B, W), x.data()), "input");
    std::vector<int32_t> labels(static_cast<size_t>(B));
    std::mt19937 gen(3);
    for (auto& l : labels) l = static_cast<int32_t>(gen() % static_cast<uint32_t>(W));
    check(be.upload(labels_.view(DType::kI32, 1, B), labels.data()), "labels");
    check(be.fill(loss_accum_.view(DType::kF32, 1, B), 0.0f), "loss accum");
    for (const Param& p : params_) grads_.push_back(p.grad_t());
    host_flags_.resize(params_.size());
    scale_ = dt == DType::kF16 ? 65536.0 : 1.0;
  }

  // One training step; with `phases`, synchronizes between phases to time them.
  void step(PhaseTimes* phases) {
    const int64_t B = o_.batch, W = o_.width;
    const int n_layers = 2 * o_.layers - 1;
    auto act = [&](int i) { return acts_[static_cast<size_t>(i)].view(dt_, B, W); };
    auto mark = [&](double* slot, Clock::time_point& t) {
      if (phases == nullptr) return;
      check(be_.synchronize(), "phase sync");
      const auto now = Clock::now();
      *slot += std::chrono::duration<double, std::milli>(now - t).count();
      t = now;
    };
    // With `phases`, each operation is also timed on its own (synchronized around it).
    auto run = [&](const std::string& name, auto&& fn) {
      if (phases == nullptr) {
        check(fn(), name.c_str());
        return;
      }
      check(be_.synchronize(), "op sync");
      const auto t0 = Clock::now();
      check(fn(), name.c_str());
      check(be_.synchronize(), "op sync");
      phases->add_op(name, std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    };
    Clock::time_point t = Clock::now();
    // forward
    run("cast input", [&] { return be_.cast(input_.view(DType::kF32, B, W), act(0)); });
    for (int i = 0; i < n_layers; ++i) {
      if (i % 2 == 0) {
        const Param& w = params_[static_cast<size_t>(i)];  // layer i/2: params 2(i/2), +1
        const Param& b = params_[static_cast<size_t>(i + 1)];
        ampd::MatmulArgs m;
        m.a = act(i);
        m.b = w.compute_t();
        m.trans_b = true;
        m.c = act(i + 1);
        m.bias = b.master_t();
        run("fwd matmul L" + std::to_string(i / 2), [&] { return be_.matmul(m); });
      } else {
        run("fwd gelu",
            [&] { return be_.activation_forward(ampd::Activation::kGELU, act(i), act(i + 1)); });
      }
    }
    const Tensor out = act(n_layers);
    const Tensor labels = labels_.view(DType::kI32, 1, B);
    const Tensor lse = lse_.view(DType::kF32, 1, B), loss = loss_.view(DType::kF32, 1, B);
    run("loss", [&] { return be_.softmax_xent_forward(out, labels, loss, lse); });
    run("loss accum", [&] { return be_.accumulate(loss, loss_accum_.view(DType::kF32, 1, B)); });
    mark(phases ? &phases->forward : nullptr, t);
    // backward
    Buffer* dy_buf = &grad_a_;
    Buffer* dx_buf = &grad_b_;
    run("loss backward", [&] {
      return be_.softmax_xent_backward(out, labels, lse, dy_buf->view(dt_, B, W),
                                       static_cast<float>(scale_ / static_cast<double>(B)));
    });
    for (int k = n_layers - 1; k >= 0; --k) {
      const Tensor x = act(k), dy = dy_buf->view(dt_, B, W), dx = dx_buf->view(dt_, B, W);
      if (k % 2 == 0) {
        const Param& w = params_[static_cast<size_t>(k)];
        const Param& b = params_[static_cast<size_t>(k + 1)];
        ampd::MatmulArgs dw;
        dw.a = dy;
        dw.trans_a = true;
        dw.b = x;
        dw.c = w.grad_t();
        run("dW L" + std::to_string(k / 2), [&] { return be_.matmul(dw); });
        run("db", [&] { return be_.bias_grad(dy, b.grad_t()); });
        if (k > 0) {
          ampd::MatmulArgs mx;
          mx.a = dy;
          mx.b = w.compute_t();
          mx.c = dx;
          run("dx L" + std::to_string(k / 2), [&] { return be_.matmul(mx); });
        }
      } else {
        run("bwd gelu",
            [&] { return be_.activation_backward(ampd::Activation::kGELU, x, dy, dx); });
      }
      std::swap(dy_buf, dx_buf);
    }
    mark(phases ? &phases->backward : nullptr, t);
    // unscale + check: the step's sync point
    const Tensor flags = flags_.view(DType::kI32, 1, static_cast<int64_t>(params_.size()));
    run("unscale",
        [&] { return be_.unscale_and_check(grads_, static_cast<float>(1.0 / scale_), flags); });
    check(be_.download(host_flags_.data(), flags), "flags");
    mark(phases ? &phases->unscale : nullptr, t);
    bool bad = false;
    for (int32_t f : host_flags_) bad |= f != 0;
    if (bad) {
      ++skipped_;
      scale_ /= 2;
      return;
    }
    std::vector<ampd::ParamSlot> slots;
    for (size_t i = 0; i < params_.size(); ++i) {
      const Param& p = params_[i];
      ampd::ParamSlot s;
      s.master = p.master_t();
      s.grad = p.grad_t();
      s.state1 = p.m.view(DType::kF32, p.rows, p.cols);
      s.state2 = p.v.view(DType::kF32, p.rows, p.cols);
      if (p.has_low) s.low_precision = p.compute_t();
      s.weight_decay_multiplier = i % 2 == 0 ? 1.0f : 0.0f;
      slots.push_back(s);
    }
    ampd::AdamWParams hp;
    hp.lr = 1e-3f;
    hp.weight_decay = 0.01f;
    hp.step = ++applied_;
    run("adamw", [&] { return be_.adamw_step(slots, hp); });
    mark(phases ? &phases->optimizer : nullptr, t);
  }

  // Mean loss over the steps accumulated since the last call.
  double take_mean_loss(int steps) {
    std::vector<float> acc(static_cast<size_t>(o_.batch));
    const Tensor t = loss_accum_.view(DType::kF32, 1, o_.batch);
    check(be_.download(acc.data(), t), "loss");
    check(be_.fill(t, 0.0f), "loss reset");
    double s = 0;
    for (float v : acc) s += v;
    return s / static_cast<double>(o_.batch) / std::max(1, steps);
  }

  int skipped() const { return skipped_; }
  double scale() const { return scale_; }

 private:
  Backend& be_;
  const Options& o_;
  DType dt_;
  std::vector<Param> params_;
  std::vector<Buffer> acts_;
  Buffer grad_a_, grad_b_, input_, loss_, lse_, labels_, loss_accum_, flags_;
  std::vector<Tensor> grads_;
  std::vector<int32_t> host_flags_;
  double scale_ = 1.0;
  int skipped_ = 0;
  int64_t applied_ = 0;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) die("missing value after " + a);
      return argv[++i];
    };
    if (a == "--batch") {
      o.batch = std::stoll(next());
    } else if (a == "--width") {
      o.width = std::stoll(next());
    } else if (a == "--layers") {
      o.layers = std::stoi(next());
    } else if (a == "--steps") {
      o.steps = std::stoi(next());
    } else if (a == "--warmup") {
      o.warmup = std::stoi(next());
    } else if (a == "--peak") {
      o.peak = std::stoll(next());
    } else if (a == "--plugin-dir") {
      o.plugin_dir = next();
    } else if (a == "--json") {
      o.json = next();
    } else if (a == "--precisions") {
      o.precisions.clear();
      std::stringstream ss(next());
      std::string p;
      while (std::getline(ss, p, ',')) {
        if (p != "fp32" && p != "fp16" && p != "bf16") die("unknown precision " + p);
        o.precisions.push_back(p);
      }
    } else if (a == "-h" || a == "--help") {
      std::printf(
          "ampd_gpu_bench [--batch N] [--width N] [--layers N] [--steps N] [--warmup N]\n"
          "               [--precisions fp32,fp16,bf16] [--peak N] [--plugin-dir DIR]\n"
          "               [--json FILE]\n");
      std::exit(0);
    } else {
      die("unknown argument " + a);
    }
  }
  if (o.layers < 1 || o.batch < 1 || o.width < 1 || o.steps < 1) die("sizes must be positive");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  auto loaded = ampd::load_cuda_backend(o.plugin_dir);
  if (!loaded.ok()) die("no CUDA backend: " + loaded.status().message());
  std::unique_ptr<Backend> be = std::move(loaded).value();
  std::printf("device: %s\n", be->device_description().c_str());
  std::ofstream json;
  if (!o.json.empty()) json.open(o.json);
  auto emit = [&](const std::string& line) {
    if (json.is_open()) json << line << "\n" << std::flush;
  };
  char buf[512];
  std::snprintf(buf, sizeof buf, "{\"kind\":\"device\",\"description\":\"%s\"}",
                be->device_description().c_str());
  emit(buf);

  // Peaks.
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32}) {
    const double tf = matmul_peak_tflops(*be, dt, o.peak);
    const std::string name(ampd::dtype_name(dt));
    std::printf("matmul peak %s %lld^3: %.1f TFLOP/s\n", name.c_str(),
                static_cast<long long>(o.peak), tf);
    std::snprintf(buf, sizeof buf,
                  "{\"kind\":\"peak\",\"dtype\":\"%s\",\"size\":%lld,\"tflops\":%.3f}",
                  name.c_str(), static_cast<long long>(o.peak), tf);
    emit(buf);
  }

  const double flop = (3.0 * o.layers - 1.0) * 2.0 * static_cast<double>(o.batch) *
                      static_cast<double>(o.width) * static_cast<double>(o.width);
  for (const std::string& p : o.precisions) {
    be->reset_peak_memory();
    const DType dt = dtype_of(p);
    double loss_first = 0, loss_last = 0;
    std::vector<double> times;
    PhaseTimes phases;
    int profiled = 0;
    {
      Mlp mlp(*be, o, dt);
      for (int i = 0; i < o.warmup; ++i) mlp.step(nullptr);
      check(be->synchronize(), "sync");
      loss_first = mlp.take_mean_loss(std::max(1, o.warmup));
      for (int i = 0; i < o.steps; ++i) {
        const auto t0 = Clock::now();
        mlp.step(nullptr);
        check(be->synchronize(), "sync");
        times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      }
      loss_last = mlp.take_mean_loss(o.steps);
      profiled = std::min(5, o.steps);
      for (int i = 0; i < profiled; ++i) mlp.step(&phases);
      const double ms = median(times);
      const double mean = [&] {
        double s = 0;
        for (double t : times) s += t;
        return s / static_cast<double>(times.size());
      }();
      const double tflops = flop / (ms * 1e-3) * 1e-12;
      const double peak_gib =
          static_cast<double>(be->memory_stats().peak_bytes) / (1024.0 * 1024.0 * 1024.0);
      const double pd = profiled > 0 ? profiled : 1;
      std::printf(
          "mlp %s: step %.3f ms (median of %d, mean %.3f), matmul %.1f TFLOP/s, loss %.4f -> "
          "%.4f, skipped %d, scale %g, peak memory %.2f GiB\n"
          "  phases (synchronized, mean of %d): forward %.3f ms, backward %.3f ms, unscale+flags "
          "%.3f ms, adamw %.3f ms\n",
          p.c_str(), ms, o.steps, mean, tflops, loss_first, loss_last, mlp.skipped(), mlp.scale(),
          peak_gib, profiled, phases.forward / pd, phases.backward / pd, phases.unscale / pd,
          phases.optimizer / pd);
      std::snprintf(buf, sizeof buf,
                    "{\"kind\":\"mlp\",\"precision\":\"%s\",\"batch\":%lld,\"width\":%lld,"
                    "\"layers\":%d,\"step_ms\":%.4f,\"mean_ms\":%.4f,\"matmul_tflops\":%.3f,"
                    "\"loss_first\":%.5f,\"loss_last\":%.5f,\"skipped\":%d,\"peak_gib\":%.3f,"
                    "\"forward_ms\":%.4f,\"backward_ms\":%.4f,\"unscale_ms\":%.4f,"
                    "\"optimizer_ms\":%.4f}",
                    p.c_str(), static_cast<long long>(o.batch), static_cast<long long>(o.width),
                    o.layers, ms, mean, tflops, loss_first, loss_last, mlp.skipped(), peak_gib,
                    phases.forward / pd, phases.backward / pd, phases.unscale / pd,
                    phases.optimizer / pd);
      emit(buf);
      std::string ops_line =
          "  ops (ms, synchronized each, mean of " + std::to_string(profiled) + "):";
      for (const auto& [name, total] : phases.ops) {
        char item[96];
        std::snprintf(item, sizeof item, " %s %.3f;", name.c_str(), total / pd);
        ops_line += item;
      }
      std::printf("%s\n", ops_line.c_str());
      if (!std::isfinite(loss_last)) die("mlp " + p + ": the loss is not finite");
    }
  }
  return 0;
}
