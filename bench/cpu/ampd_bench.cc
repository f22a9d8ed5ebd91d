// ampd_bench: the CPU side of `make bench` (bench/cpu/run.sh drives it; RESULTS.md has
// the numbers). Each mode prints one JSON object per line.
//
//   ampd_bench steps  precision=fp32 width=1024 batch=256 steps=40 warmup=5 threads=2
//       Trains the MLP 784-W-W-10 (ReLU, cross-entropy, AdamW, synthetic blobs) through
//       engine::Trainer::run(), the code path of a real job, with report_every=1, and
//       takes the step times from the progress events' timestamps: median/min step time,
//       activation bytes (Job.memory) and the matmul FLOPs of one step.
//   ampd_bench matmul precision=fp32 width=1024 batch=256 reps=30 threads=2
//       The same step's matrix products alone: every forward, weight-gradient and
//       input-gradient matmul of the MLP (same shapes, dtypes, transposes and bias as the
//       Linear layer issues), called on the CPU backend directly, in step order; the
//       median time of the whole sequence and its FLOP/s.
//   ampd_bench paired precision=fp32 width=1024 batch=256 steps=40 warmup=5 threads=2
//       The two above, interleaved: after every trainer step, the step's matmuls once; the
//       median over steps of (matmul sequence time / step time), each pair moments apart.
//   ampd_bench phases precision=fp32 width=1024 batch=256 steps=30 threads=2
//       A timing breakdown of the same step through Model and Optimizer (load_batch,
//       forward, backward, unscale+check, optimizer) to show where the non-matmul time goes.
//
// The character-level GPT of a job file (spec=examples/shakespeare-char-fp32.yaml; its
// precision unless precision= is given):
//   ampd_bench gpt_steps spec=... steps=50 warmup=10 threads=2
//       The job through engine::Trainer for warmup + steps steps (no evaluation but one
//       batch at the end, no checkpoints); step times from TrainerOptions::on_step (batch,
//       forward, backward, checks, clipping, AdamW); median/min, the step's matmul FLOPs.
//   ampd_bench gpt_matmul spec=... reps=50       The step's 75 matrix products alone
//       (every Linear's forward / dW / dx, attention's 6 batched products on the same
//       strided head views), on oneDNN directly; median time, linear and attention apart.
//   ampd_bench gpt_paired spec=... steps=50 warmup=10   Each trainer step followed by the
//       products alone; median of raw / step.
//   ampd_bench gpt_ops spec=... steps=50 warmup=10   The trainer on a timing wrapper of the
//       backend (timed_backend.h): ms per step of every op (kind and shapes).
//   ampd_bench gpt_train spec=... [eval_batches=200]   The job as written (2000 steps);
//       the final validation loss (mean over eval_batches validation batches) and times.
//
// Every mode takes backend=cpu|cuda (default cpu; cuda loads the plugin next to this
// executable, as `ampd --backend cuda` does; bench/gpu/engine_check.sh uses it).
//
// FLOPs: 2*B*in*out per product; forward and weight gradient for every Linear, input
// gradient for every Linear but the first.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/job_spec.h"
#include "engine/loss_scaler.h"
#include "engine/model.h"
#include "engine/optimizer.h"
#include "engine/trainer.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/cpu_backend.h"
#include "timed_backend.h"

namespace {

using Clock = std::chrono::steady_clock;
using ampd::DType;
using ampd::Status;
using ampd::Tensor;

struct Config {
  std::string mode;
  std::string precision = "fp32";
  int64_t width = 1024;
  int64_t batch = 256;
  int64_t steps = 40;
  int64_t warmup = 5;
  int64_t reps = 30;
  int threads = 2;
  std::string backend = "cpu";  // cpu | cuda (the plugin; bench/gpu/engine_check.sh)
  // GPT modes: the job file (its precision unless precision= is given) and, for
  // gpt_train, the validation batches of the final evaluation (0: the file's).
  std::string spec = "examples/shakespeare-char-fp32.yaml";
  bool precision_given = false;
  int64_t eval_batches = 0;
};

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "ampd_bench: %s\n", msg.c_str());
  std::exit(1);
}

void check(const Status& s, const char* what) {
  if (!s.ok()) die(std::string(what) + ": " + s.message());
}

Config parse(int argc, char** argv) {
  if (argc < 2) {
    die("usage: ampd_bench steps|matmul|paired|phases|gpt_steps|gpt_matmul|gpt_paired|gpt_ops|"
        "gpt_train key=value...");
  }
  Config c;
  c.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (eq == std::string::npos) die("expected key=value, got " + arg);
    const std::string k = arg.substr(0, eq), v = arg.substr(eq + 1);
    if (k == "precision") {
      c.precision = v;
      c.precision_given = true;
    } else if (k == "spec") {
      c.spec = v;
    } else if (k == "eval_batches") {
      c.eval_batches = std::stoll(v);
    } else if (k == "width") {
      c.width = std::stoll(v);
    } else if (k == "batch") {
      c.batch = std::stoll(v);
    } else if (k == "steps") {
      c.steps = std::stoll(v);
    } else if (k == "warmup") {
      c.warmup = std::stoll(v);
    } else if (k == "reps") {
      c.reps = std::stoll(v);
    } else if (k == "threads") {
      c.threads = std::stoi(v);
    } else if (k == "backend") {
      c.backend = v;
    } else {
      die("unknown option " + k);
    }
  }
  return c;
}

constexpr int64_t kIn = 784;
constexpr int64_t kClasses = 10;

// (in, out) of each Linear of 784-W-W-10.
std::vector<std::pair<int64_t, int64_t>> linears(int64_t w) {
  return {{kIn, w}, {w, w}, {w, kClasses}};
}

double step_flops(const Config& c) {
  double f = 0;
  const auto ls = linears(c.width);
  for (size_t i = 0; i < ls.size(); ++i) {
    const double prod = 2.0 * static_cast<double>(c.batch * ls[i].first * ls[i].second);
    f += prod * (i == 0 ? 2 : 3);
  }
  return f;
}

std::string job_json(const Config& c, int64_t total_steps, int64_t report_every) {
  // One epoch of synthetic data covers 8 batches; the last step's evaluation (after the
  // last progress event) reads them all and is not timed.
  const int64_t samples = c.batch * 8;
  const std::string w = std::to_string(c.width);
  return R"({"name":"bench","precision":")" + c.precision +
         R"(","model":{"layers":[{"linear":{"outFeatures":)" + w +
         R"(}},{"relu":{}},{"linear":{"outFeatures":)" + w +
         R"(}},{"relu":{}},{"linear":{"outFeatures":10}}],"loss":"cross_entropy"},)"
         R"("data":{"synthetic":{"kind":"blobs","samples":)" +
         std::to_string(samples) + R"(,"features":784,"classes":10},"batchSize":)" +
         std::to_string(c.batch) +
         R"(,"validationFraction":0,"standardize":false},)"
         R"("optimizer":{"adamw":{"lr":0.001,"weightDecay":0.01}},)"
         R"("training":{"maxSteps":)" +
         std::to_string(total_steps) + R"(,"reportEvery":)" + std::to_string(report_every) +
         R"(,"seed":1}})";
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double secs(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// The backend the run measures: CPU (oneDNN, `threads` threads) or the CUDA plugin found
// next to this executable. Every timed region ends with synchronize() (a no-op on the CPU).
std::unique_ptr<ampd::Backend> make_backend(const Config& c) {
  ampd::BackendRequest req;
  req.kind = c.backend;
  req.threads = c.threads;
  auto choice = ampd::create_backend(req);
  check(choice.status(), "backend");
  return std::move(choice->backend);
}

std::string common_json(const Config& c) {
  return R"("backend":")" + c.backend + R"(","precision":")" + c.precision + R"(","width":)" +
         std::to_string(c.width) + R"(,"batch":)" + std::to_string(c.batch) + R"(,"threads":)" +
         std::to_string(c.threads);
}

// Trains the benchmark MLP (warmup + steps steps, a progress event every step) through
// engine::Trainer::run(), calling on_progress at each progress event; dies unless the job
// succeeds.
ampd::v1::Job train(ampd::Backend& backend, const Config& c, std::function<void()> on_progress) {
  auto spec = ampd::engine::parse_job_spec(job_json(c, c.warmup + c.steps, 1), "json");
  check(spec.status(), "job spec");
  ampd::engine::TrainerOptions opts;
  opts.on_event = [&](const ampd::v1::JobEvent& e) {
    if (e.has_progress()) on_progress();
  };
  auto trainer = ampd::engine::Trainer::create(backend, *spec, std::move(opts));
  check(trainer.status(), "trainer");
  ampd::v1::Job job = (*trainer)->run();
  if (job.state() != ampd::v1::SUCCEEDED) die("job failed: " + job.failure_reason());
  return job;
}

// ---- steps: the real Trainer ---------------------------------------------------------

void run_steps(const Config& c) {
  const auto owned = make_backend(c);
  ampd::Backend& backend = *owned;
  std::vector<Clock::time_point> marks;
  const Clock::time_point start = Clock::now();
  const ampd::v1::Job job = train(backend, c, [&] { marks.push_back(Clock::now()); });
  std::vector<double> times;
  for (size_t i = static_cast<size_t>(c.warmup) + 1; i < marks.size(); ++i) {
    times.push_back(secs(marks[i - 1], marks[i]));
  }
  if (times.empty()) die("no timed steps");
  const double med = median(times);
  const double total = secs(marks[static_cast<size_t>(c.warmup)], marks.back());
  std::printf(
      R"({"mode":"steps",%s,"steps":%zu,"step_ms_median":%.4f,"step_ms_min":%.4f,)"
      R"("samples_per_s":%.1f,"step_gflop":%.5f,"gflops":%.2f,"activation_bytes":%lld,)"
      R"("parameter_bytes":%lld,"optimizer_bytes":%lld,"peak_bytes":%lld,"overflow_skips":%lld,)"
      R"("first_step_ms":%.3f})"
      "\n",
      common_json(c).c_str(), times.size(), med * 1e3,
      *std::min_element(times.begin(), times.end()) * 1e3,
      static_cast<double>(c.batch * static_cast<int64_t>(times.size())) / total,
      step_flops(c) * 1e-9, step_flops(c) / med * 1e-9,
      static_cast<long long>(job.memory().activation_bytes()),
      static_cast<long long>(job.memory().parameter_bytes()),
      static_cast<long long>(job.memory().optimizer_bytes()),
      static_cast<long long>(job.memory().peak_bytes()),
      static_cast<long long>(job.overflow_skipped_steps()), secs(start, marks[0]) * 1e3);
}

// ---- matmul: the step's products alone ------------------------------------------------

struct Owned {
  ampd::Buffer buf;
  Tensor t;
};

Owned make_tensor(ampd::Backend& be, DType dt, int64_t rows, int64_t cols, std::mt19937& rng) {
  Owned o;
  auto b = be.allocate(static_cast<size_t>(rows * cols) * ampd::dtype_size(dt));
  check(b.status(), "allocate");
  o.buf = std::move(*b);
  o.t = o.buf.view(dt, rows, cols);
  std::vector<float> host(static_cast<size_t>(rows * cols));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (float& v : host) v = u(rng);
  if (dt == DType::kF32) {
    check(be.upload(o.t, host.data()), "upload");
  } else {
    auto tb = be.allocate(host.size() * sizeof(float));
    check(tb.status(), "allocate");
    const Tensor t32 = tb->view(DType::kF32, rows, cols);
    check(be.upload(t32, host.data()), "upload");
    check(be.cast(t32, o.t), "cast");
  }
  return o;
}

// Every matmul of one step of the MLP, on its own buffers, in step order.
class MatmulSequence {
 public:
  MatmulSequence(ampd::Backend& be, const Config& c) : be_(be) {
    const DType dt = ampd::engine::precision_dtype(c.precision);
    std::mt19937 rng(1);
    const auto ls = linears(c.width);
    const int64_t B = c.batch;
    for (size_t i = 0; i < ls.size(); ++i) {
      const auto [in, out] = ls[i];
      keep_.push_back(make_tensor(be, dt, B, in, rng));             // x
      keep_.push_back(make_tensor(be, dt, out, in, rng));           // W (working copy)
      keep_.push_back(make_tensor(be, DType::kF32, 1, out, rng));   // bias (F32 master)
      keep_.push_back(make_tensor(be, dt, B, out, rng));            // y
      keep_.push_back(make_tensor(be, dt, B, out, rng));            // dy
      keep_.push_back(make_tensor(be, DType::kF32, out, in, rng));  // dW
      keep_.push_back(make_tensor(be, dt, B, in, rng));             // dx
    }
    for (size_t i = 0; i < ls.size(); ++i) {  // forward
      const Owned* t = &keep_[i * 7];
      ampd::MatmulArgs m;
      m.a = t[0].t;
      m.b = t[1].t;
      m.trans_b = true;
      m.c = t[3].t;
      m.bias = t[2].t;
      calls_.push_back(m);
    }
    for (size_t k = ls.size(); k-- > 0;) {  // backward: dW, then dx
      const Owned* t = &keep_[k * 7];
      ampd::MatmulArgs dw;
      dw.a = t[4].t;
      dw.trans_a = true;
      dw.b = t[0].t;
      dw.c = t[5].t;
      calls_.push_back(dw);
      if (k == 0) continue;
      ampd::MatmulArgs dx;
      dx.a = t[4].t;
      dx.b = t[1].t;
      dx.c = t[6].t;
      calls_.push_back(dx);
    }
  }
  size_t size() const { return calls_.size(); }
  // Runs the sequence once; per_call (if given) gets each product's seconds.
  double run(std::vector<double>* per_call = nullptr) {
    const Clock::time_point s0 = Clock::now();
    for (size_t i = 0; i < calls_.size(); ++i) {
      const Clock::time_point t0 = Clock::now();
      check(be_.matmul(calls_[i]), "matmul");
      check(be_.synchronize(), "synchronize");
      if (per_call != nullptr) (*per_call)[i] = secs(t0, Clock::now());
    }
    return secs(s0, Clock::now());
  }

 private:
  ampd::Backend& be_;
  std::vector<Owned> keep_;
  std::vector<ampd::MatmulArgs> calls_;
};

void run_matmul(const Config& c) {
  const auto owned = make_backend(c);
  MatmulSequence mm(*owned, c);
  std::vector<double> seq;
  std::vector<std::vector<double>> per(mm.size());
  std::vector<double> one(mm.size());
  for (int64_t r = 0; r < c.reps + 3; ++r) {
    const double t = mm.run(&one);
    if (r < 3) continue;
    seq.push_back(t);
    for (size_t i = 0; i < one.size(); ++i) per[i].push_back(one[i]);
  }
  const double med = median(seq);
  std::string parts;
  for (size_t i = 0; i < per.size(); ++i) {
    if (i) parts += ",";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.4f", median(per[i]) * 1e3);
    parts += buf;
  }
  std::printf(R"({"mode":"matmul",%s,"matmul_ms_median":%.4f,"step_gflop":%.5f,"gflops":%.2f,)"
              R"("per_call_ms":[%s]})"
              "\n",
              common_json(c).c_str(), med * 1e3, step_flops(c) * 1e-9, step_flops(c) / med * 1e-9,
              parts.c_str());
}

// ---- paired: each training step beside the raw matmuls, moments apart --------------------

// The trainer as in `steps`, and after every step (inside its progress callback) the
// step's matmuls alone, once. Each step is paired with the sequence run right after it,
// so both see the same state of this shared machine (whose speed drifts by up to 25% over
// seconds); the step's time excludes the sequence. Reports the median of the per-pair
// ratios raw/step, beside each side's median. The sequence's buffers evict some of the
// step's data from the caches, so the step here can only look slower than alone.
void run_paired(const Config& c) {
  const auto owned = make_backend(c);
  ampd::Backend& backend = *owned;
  MatmulSequence mm(backend, c);
  std::vector<double> step_s, raw_s;
  Clock::time_point last{};
  int64_t seen = 0;
  train(backend, c, [&] {
    const Clock::time_point now = Clock::now();
    if (seen++ > c.warmup) step_s.push_back(secs(last, now));
    const double raw = mm.run();
    if (seen > c.warmup + 1) raw_s.push_back(raw);
    last = Clock::now();
  });
  const size_t n = std::min(step_s.size(), raw_s.size());
  if (n == 0) die("no timed steps");
  std::vector<double> ratios;
  for (size_t i = 0; i < n; ++i) ratios.push_back(raw_s[i] / step_s[i]);
  std::printf(R"({"mode":"paired",%s,"pairs":%zu,"step_ms_median":%.4f,"matmul_ms_median":%.4f,)"
              R"("raw_over_step_median":%.4f})"
              "\n",
              common_json(c).c_str(), n, median(step_s) * 1e3, median(raw_s) * 1e3, median(ratios));
}

// ---- phases: where the time of one step goes ------------------------------------------

void run_phases(const Config& c) {
  const auto owned = make_backend(c);
  ampd::Backend& be = *owned;
  auto spec = ampd::engine::parse_job_spec(job_json(c, c.steps, 1), "json");
  check(spec.status(), "job spec");
  auto resolved = ampd::engine::validate_and_resolve(*spec);
  check(resolved.status(), "resolve");
  ampd::engine::Model::Options mo;
  mo.act_dtype = ampd::engine::precision_dtype(c.precision);
  mo.max_batch = c.batch;
  mo.in_features = kIn;
  mo.out_features = kClasses;
  auto model = ampd::engine::Model::create(be, resolved->model(), mo);
  check(model.status(), "model");
  auto opt = ampd::engine::Optimizer::create(be, resolved->optimizer(), (*model)->params());
  check(opt.status(), "optimizer");
  std::vector<ampd::Tensor> grads;
  for (auto* p : (*model)->params()) grads.push_back(p->grad_t());
  auto flags_buf = be.allocate(sizeof(int32_t) * grads.size());
  check(flags_buf.status(), "allocate");
  const Tensor flags = flags_buf->view(DType::kI32, 1, static_cast<int64_t>(grads.size()));
  std::vector<int32_t> host_flags(grads.size());
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(c.batch * kIn));
  for (float& v : x) v = nd(rng);
  std::vector<int32_t> y(static_cast<size_t>(c.batch));
  for (size_t i = 0; i < y.size(); ++i) y[i] = static_cast<int32_t>(i % kClasses);
  const float scale = c.precision == "fp16" ? 65536.0f : 1.0f;
  const char* names[] = {"load_batch", "forward", "backward", "unscale_check", "optimizer"};
  std::vector<std::vector<double>> t(5);
  for (int64_t s = 0; s < c.steps + 3; ++s) {
    ampd::engine::PassContext ctx{&be, true, s, 1};
    Clock::time_point p[6];
    p[0] = Clock::now();
    check((*model)->load_batch(c.batch, x.data(), y.data(), nullptr), "load_batch");
    check(be.synchronize(), "synchronize");
    p[1] = Clock::now();
    check((*model)->forward(ctx, c.batch), "forward");
    check(be.synchronize(), "synchronize");
    p[2] = Clock::now();
    check((*model)->backward(ctx, c.batch, scale), "backward");
    check(be.synchronize(), "synchronize");
    p[3] = Clock::now();
    check(be.unscale_and_check(grads, 1.0f / scale, flags), "unscale");
    check(be.download(host_flags.data(), flags), "download");
    p[4] = Clock::now();
    check((*opt)->step(1e-4, 1.0f), "optimizer");
    check(be.synchronize(), "synchronize");
    p[5] = Clock::now();
    if (s >= 3) {
      for (int i = 0; i < 5; ++i) t[i].push_back(secs(p[i], p[i + 1]));
    }
  }
  std::string parts;
  for (int i = 0; i < 5; ++i) {
    char buf[96];
    std::snprintf(buf, sizeof buf, R"(%s"%s":%.4f)", i ? "," : "", names[i], median(t[i]) * 1e3);
    parts += buf;
  }
  std::printf(R"({"mode":"phases",%s,"phase_ms":{%s}})"
              "\n",
              common_json(c).c_str(), parts.c_str());
}

// ---- GPT: the character-level GPT of examples/shakespeare-char-*.yaml --------------------

struct GptShape {
  int64_t layers = 0, heads = 0, embd = 0, block = 0, batch = 0, vocab = 0;
  int64_t rows() const { return batch * block; }
};

// The job file, with precision= applied (else c.precision becomes the file's).
ampd::v1::JobSpec gpt_spec(Config& c) {
  auto spec = ampd::engine::load_job_spec_file(c.spec);
  check(spec.status(), "job spec");
  if (!spec->model().has_gpt()) die(c.spec + ": not a gpt model");
  if (c.precision_given) {
    spec->set_precision(c.precision);
  } else {
    c.precision = spec->precision();
  }
  return *spec;
}

GptShape gpt_shape(const ampd::v1::JobSpec& spec, const ampd::engine::Model& model) {
  const auto& g = spec.model().gpt();
  GptShape s;
  s.layers = g.n_layer();
  s.heads = g.n_head();
  s.embd = g.n_embd();
  s.block = model.options().time;
  s.batch = model.options().max_batch;
  s.vocab = model.options().in_features;
  return s;
}

// (in, out) of every Linear-like product of one block: attn.c_attn, attn.c_proj,
// mlp.c_fc, mlp.c_proj.
std::vector<std::pair<int64_t, int64_t>> gpt_block_linears(const GptShape& g) {
  const int64_t C = g.embd;
  return {{C, 3 * C}, {C, C}, {C, 4 * C}, {4 * C, C}};
}

// The matrix products of one step, 2 FLOPs per multiply-add. Every Linear (the four of
// each block and the tied lm_head) runs forward, weight gradient and input gradient:
// 3 x 2 x rows x in x out, i.e. 6 x (parameters in matmuls) x tokens. Attention's two
// batched products (Q K^T and P V, 2 x B x H x T x T x D each, the full square though
// half of it is masked) also run 3 times each (forward; dP and dV; dQ and dK).
struct GptFlops {
  double linear = 0, attention = 0;
  double total() const { return linear + attention; }
};
GptFlops gpt_step_flops(const GptShape& g) {
  GptFlops f;
  const double rows = static_cast<double>(g.rows());
  for (const auto& [in, out] : gpt_block_linears(g)) {
    f.linear += 6.0 * rows * static_cast<double>(in * out) * static_cast<double>(g.layers);
  }
  f.linear += 6.0 * rows * static_cast<double>(g.embd * g.vocab);
  f.attention = 3.0 * 2.0 * 2.0 * static_cast<double>(g.batch * g.block * g.block * g.embd) *
                static_cast<double>(g.layers);
  return f;
}

std::string gpt_json(const Config& c, const GptShape& g) {
  return R"("backend":")" + c.backend + R"(","model":"gpt","precision":")" + c.precision +
         R"(","layers":)" + std::to_string(g.layers) + R"(,"heads":)" + std::to_string(g.heads) +
         R"(,"embd":)" + std::to_string(g.embd) + R"(,"block":)" + std::to_string(g.block) +
         R"(,"batch":)" + std::to_string(g.batch) + R"(,"vocab":)" + std::to_string(g.vocab) +
         R"(,"threads":)" + std::to_string(c.threads);
}

// Every matrix product of one GPT training step on its own buffers, in step order, with
// the shapes, dtypes, transposes, strided head views and bias the layers issue
// (engine/layers/linear.cc, causal_self_attention.cc): forward block by block, then
// lm_head, then backward in reverse. Each block has buffers of its own, as in the model.
class GptMatmulSequence {
 public:
  enum Group { kLinear = 0, kAttention = 1 };

  GptMatmulSequence(ampd::Backend& be, DType dt, const GptShape& g) : be_(be) {
    std::mt19937 rng(1);
    const int64_t R = g.rows(), C = g.embd, B = g.batch, T = g.block, H = g.heads, D = C / H;
    auto alloc = [&](DType t, int64_t r, int64_t cols) {
      keep_.push_back(make_tensor(be, t, r, cols, rng));
      return keep_.back().t;
    };
    // Linear: y = x W^T (+ b); dW = dy^T x; dx = dy W.
    auto linear = [&](int64_t in, int64_t out, bool bias, std::vector<Call>& fwd,
                      std::vector<Call>& bwd) {
      const Tensor x = alloc(dt, R, in), w = alloc(dt, out, in), y = alloc(dt, R, out),
                   dy = alloc(dt, R, out), dw = alloc(DType::kF32, out, in), dx = alloc(dt, R, in);
      Call f(kLinear);
      f.m.a = x;
      f.m.b = w;
      f.m.trans_b = true;
      f.m.c = y;
      if (bias) f.m.bias = alloc(DType::kF32, 1, out);
      fwd.push_back(f);
      Call gw(kLinear);
      gw.m.a = dy;
      gw.m.trans_a = true;
      gw.m.b = x;
      gw.m.c = dw;
      bwd.push_back(gw);
      Call gx(kLinear);
      gx.m.a = dy;
      gx.m.b = w;
      gx.m.c = dx;
      bwd.push_back(gx);
    };
    auto batched = [](const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c,
                      float alpha) {
      Call k(kAttention);
      k.batched = true;
      k.bm.a = a;
      k.bm.trans_a = ta;
      k.bm.b = b;
      k.bm.trans_b = tb;
      k.bm.c = c;
      k.bm.alpha = alpha;
      return k;
    };
    const float alpha = 1.0f / std::sqrt(static_cast<float>(D));
    std::vector<std::vector<Call>> bwd_blocks;
    for (int64_t l = 0; l < g.layers; ++l) {
      std::vector<Call> bwd_attn, bwd_proj, bwd_fc, bwd_mproj;
      linear(C, 3 * C, true, calls_, bwd_attn);
      // (B, T, 3C) projection -> (B, H, T, D) heads; (B, H, T, T) scores.
      const auto fused = [&](DType t) {
        return Tensor::contiguous(alloc(t, R, 3 * C).data, t, {B, T, 3 * C});
      };
      const auto head = [&](const Tensor& f, int which) {
        return f.narrowed(-1, which * C, C).split(-1, H, D).transposed(1, 2);
      };
      const auto heads = [&](DType t) {
        return Tensor::contiguous(alloc(t, R, C).data, t, {B, T, C})
            .split(-1, H, D)
            .transposed(1, 2);
      };
      const auto square = [&](DType t) {
        return Tensor::contiguous(alloc(t, B * H * T, T).data, t, {B, H, T, T});
      };
      const Tensor qkv = fused(dt), dqkv = fused(dt), yh = heads(dt), dyh = heads(dt);
      const Tensor scores = square(DType::kF32), probs = square(dt), ds = square(dt);
      const Tensor q = head(qkv, 0), k = head(qkv, 1), v = head(qkv, 2);
      calls_.push_back(batched(q, false, k, true, scores, alpha));  // S = a Q K^T
      calls_.push_back(batched(probs, false, v, false, yh, 1.0f));  // Yh = P V
      linear(C, C, true, calls_, bwd_proj);
      linear(C, 4 * C, true, calls_, bwd_fc);
      linear(4 * C, C, true, calls_, bwd_mproj);
      std::vector<Call> bwd;
      bwd.insert(bwd.end(), bwd_mproj.begin(), bwd_mproj.end());
      bwd.insert(bwd.end(), bwd_fc.begin(), bwd_fc.end());
      bwd.insert(bwd.end(), bwd_proj.begin(), bwd_proj.end());
      bwd.push_back(batched(dyh, false, v, true, scores, 1.0f));             // dP = dYh V^T
      bwd.push_back(batched(probs, true, dyh, false, head(dqkv, 2), 1.0f));  // dV = P^T dYh
      bwd.push_back(batched(ds, false, k, false, head(dqkv, 0), alpha));     // dQ = a dS K
      bwd.push_back(batched(ds, true, q, false, head(dqkv, 1), alpha));      // dK = a dS^T Q
      bwd.insert(bwd.end(), bwd_attn.begin(), bwd_attn.end());
      bwd_blocks.push_back(std::move(bwd));
    }
    linear(C, g.vocab, false, calls_, calls_);  // lm_head forward, then its backward
    for (size_t l = bwd_blocks.size(); l-- > 0;) {
      calls_.insert(calls_.end(), bwd_blocks[l].begin(), bwd_blocks[l].end());
    }
  }

  size_t size() const { return calls_.size(); }
  // Runs the sequence once; returns its seconds, and each group's in group_s.
  double run(double group_s[2]) {
    group_s[0] = group_s[1] = 0;
    const Clock::time_point s0 = Clock::now();
    for (const Call& k : calls_) {
      const Clock::time_point t0 = Clock::now();
      check(k.batched ? be_.batched_matmul(k.bm) : be_.matmul(k.m), "matmul");
      check(be_.synchronize(), "synchronize");
      group_s[k.group] += secs(t0, Clock::now());
    }
    return secs(s0, Clock::now());
  }

 private:
  struct Call {
    explicit Call(int g) : group(g) {}
    int group;
    bool batched = false;
    ampd::MatmulArgs m;
    ampd::BatchedMatmulArgs bm;
  };
  ampd::Backend& be_;
  std::vector<Owned> keep_;
  std::vector<Call> calls_;
};

// A Trainer for the job file's GPT. steps > 0: warmup + steps steps, one progress event
// at the end, one validation batch after the last step, no checkpoints (the timing
// modes); steps == 0: the job as written (gpt_train), eval_batches overridden when > 0.
// on_step gets every step's StepStats (the wall time of train_step: batch, forward,
// backward, checks, clipping, optimizer).
std::unique_ptr<ampd::engine::Trainer> gpt_trainer(
    ampd::Backend& be, const Config& c, ampd::v1::JobSpec spec,
    std::function<void(const ampd::engine::StepStats&)> on_step,
    std::function<void(const ampd::v1::JobEvent&)> on_event = nullptr) {
  if (c.steps > 0) {
    auto* tr = spec.mutable_training();
    tr->set_max_steps(c.warmup + c.steps);
    tr->set_report_every(c.warmup + c.steps);
    tr->set_eval_every(0);
    spec.mutable_data()->mutable_text()->set_eval_batches(1);
  } else if (c.eval_batches > 0) {
    spec.mutable_data()->mutable_text()->set_eval_batches(static_cast<int32_t>(c.eval_batches));
  }
  ampd::engine::TrainerOptions opts;
  opts.on_step = std::move(on_step);
  opts.on_event = std::move(on_event);
  auto trainer = ampd::engine::Trainer::create(be, spec, std::move(opts));
  check(trainer.status(), "trainer");
  return std::move(*trainer);
}

void run_gpt_job(ampd::engine::Trainer& t) {
  const ampd::v1::Job job = t.run();
  if (job.state() != ampd::v1::SUCCEEDED) die("job failed: " + job.failure_reason());
}

void run_gpt_steps(Config c) {
  const ampd::v1::JobSpec spec = gpt_spec(c);
  const auto owned = make_backend(c);
  std::vector<double> times;
  auto t = gpt_trainer(*owned, c, spec, [&](const ampd::engine::StepStats& s) {
    if (s.step > c.warmup) times.push_back(s.seconds);
  });
  const GptShape g = gpt_shape(spec, t->model());
  run_gpt_job(*t);
  if (times.empty()) die("no timed steps");
  const double med = median(times);
  const GptFlops f = gpt_step_flops(g);
  std::printf(R"({"mode":"gpt_steps",%s,"steps":%zu,"step_ms_median":%.4f,"step_ms_min":%.4f,)"
              R"("step_gflop":%.5f,"gflops":%.2f,"parameters":%lld,"activation_bytes":%lld})"
              "\n",
              gpt_json(c, g).c_str(), times.size(), med * 1e3,
              *std::min_element(times.begin(), times.end()) * 1e3, f.total() * 1e-9,
              f.total() / med * 1e-9, static_cast<long long>(t->model().parameter_count()),
              static_cast<long long>(t->model().activation_bytes()));
}

void run_gpt_matmul(Config c) {
  const ampd::v1::JobSpec spec = gpt_spec(c);
  const auto owned = make_backend(c);
  GptShape g;
  {
    // The trainer only for the shapes (vocabulary, block, batch) the job resolves to.
    Config probe = c;
    probe.steps = 1;
    g = gpt_shape(spec, gpt_trainer(*owned, probe, spec, nullptr)->model());
  }
  GptMatmulSequence mm(*owned, ampd::engine::precision_dtype(c.precision), g);
  std::vector<double> seq, lin, att;
  for (int64_t r = 0; r < c.reps + 3; ++r) {
    double grp[2];
    const double t = mm.run(grp);
    if (r < 3) continue;
    seq.push_back(t);
    lin.push_back(grp[0]);
    att.push_back(grp[1]);
  }
  const GptFlops f = gpt_step_flops(g);
  const double med = median(seq), ml = median(lin), ma = median(att);
  std::printf(R"({"mode":"gpt_matmul",%s,"products":%zu,"matmul_ms_median":%.4f,)"
              R"("linear_ms_median":%.4f,"attention_ms_median":%.4f,"step_gflop":%.5f,)"
              R"("linear_gflop":%.5f,"attention_gflop":%.5f,"gflops":%.2f,"linear_gflops":%.2f,)"
              R"("attention_gflops":%.2f})"
              "\n",
              gpt_json(c, g).c_str(), mm.size(), med * 1e3, ml * 1e3, ma * 1e3, f.total() * 1e-9,
              f.linear * 1e-9, f.attention * 1e-9, f.total() / med * 1e-9, f.linear / ml * 1e-9,
              f.attention / ma * 1e-9);
}

// As `paired` for the MLP: after every trainer step, the step's matrix products alone,
// once; the median over steps of raw / step.
void run_gpt_paired(Config c) {
  const ampd::v1::JobSpec spec = gpt_spec(c);
  const auto owned = make_backend(c);
  std::unique_ptr<GptMatmulSequence> mm;
  std::vector<double> step_s, raw_s, ratios;
  auto t = gpt_trainer(*owned, c, spec, [&](const ampd::engine::StepStats& s) {
    double grp[2];
    const double raw = mm->run(grp);
    if (s.step <= c.warmup) return;
    step_s.push_back(s.seconds);
    raw_s.push_back(raw);
    ratios.push_back(raw / s.seconds);
  });
  const GptShape g = gpt_shape(spec, t->model());
  mm = std::make_unique<GptMatmulSequence>(*owned, ampd::engine::precision_dtype(c.precision), g);
  run_gpt_job(*t);
  if (ratios.empty()) die("no timed steps");
  const GptFlops f = gpt_step_flops(g);
  std::printf(R"({"mode":"gpt_paired",%s,"pairs":%zu,"step_ms_median":%.4f,)"
              R"("matmul_ms_median":%.4f,"raw_over_step_median":%.4f,"step_gflop":%.5f})"
              "\n",
              gpt_json(c, g).c_str(), ratios.size(), median(step_s) * 1e3, median(raw_s) * 1e3,
              median(ratios), f.total() * 1e-9);
}

// Where a step's time goes: the trainer on a TimedBackend, every op timed, per (op,
// shapes) and per op kind: the median over the timed steps of each one's ms in a step
// (medians, because this shared VM's load comes in bursts); "other_ms" is the median of
// the step time no backend op accounts for (host work: drawing windows, the loop).
void run_gpt_ops(Config c) {
  const ampd::v1::JobSpec spec = gpt_spec(c);
  const auto owned = make_backend(c);
  ampd::bench::TimedBackend timed(*owned);
  const int64_t last = c.warmup + c.steps;
  std::vector<double> times, op_totals, others;
  // label -> per timed step (seconds, calls); kind -> per timed step seconds.
  std::map<std::string, std::vector<std::pair<double, int64_t>>> per_op;
  std::map<std::string, std::vector<double>> per_kind;
  size_t step_index = 0;
  auto t = gpt_trainer(timed, c, spec, [&](const ampd::engine::StepStats& s) {
    if (timed.recording) {
      double total = 0;
      std::map<std::string, double> kinds;
      for (const auto& [label, e] : timed.entries()) {
        auto& v = per_op[label];
        v.resize(step_index + 1);
        v[step_index] = {e.seconds, e.calls};
        kinds[label.substr(0, label.find(' '))] += e.seconds;
        total += e.seconds;
      }
      for (const auto& [k, sec] : kinds) {
        auto& v = per_kind[k];
        v.resize(step_index + 1);
        v[step_index] = sec;
      }
      times.push_back(s.seconds);
      op_totals.push_back(total);
      others.push_back(s.seconds - total);
      ++step_index;
      timed.clear();
    }
    timed.recording = s.step >= c.warmup && s.step < last;
  });
  const GptShape g = gpt_shape(spec, t->model());
  run_gpt_job(*t);
  if (times.empty()) die("no timed steps");
  const auto n = static_cast<double>(times.size());
  auto esc = [](std::string str) {
    for (char& ch : str) {
      if (ch == '"' || ch == '\\') ch = '\'';
    }
    return str;
  };
  std::vector<std::pair<double, std::string>> rows, krows;
  std::map<std::string, double> calls;
  for (auto& [label, v] : per_op) {
    v.resize(times.size());
    std::vector<double> sec;
    int64_t ncalls = 0;
    for (const auto& [x, k] : v) {
      sec.push_back(x);
      ncalls += k;
    }
    rows.emplace_back(median(sec), label);
    calls[label] = static_cast<double>(ncalls) / n;
    calls[label.substr(0, label.find(' '))] += static_cast<double>(ncalls) / n;
  }
  for (auto& [k, v] : per_kind) {
    v.resize(times.size());
    krows.emplace_back(median(v), k);
  }
  std::sort(rows.rbegin(), rows.rend());
  std::sort(krows.rbegin(), krows.rend());
  std::string ops, kinds;
  char buf[64];
  for (const auto& [sec, label] : rows) {
    std::snprintf(buf, sizeof buf, R"(",%.4f,%.2f])", sec * 1e3, calls[label]);
    ops += std::string(ops.empty() ? "" : ",") + "[\"" + esc(label) + buf;
  }
  for (const auto& [sec, k] : krows) {
    std::snprintf(buf, sizeof buf, R"(",%.4f,%.2f])", sec * 1e3, calls[k]);
    kinds += std::string(kinds.empty() ? "" : ",") + "[\"" + k + buf;
  }
  std::printf(R"({"mode":"gpt_ops",%s,"steps":%zu,"step_ms_median":%.4f,"step_ms_min":%.4f,)"
              R"("ops_ms":%.4f,"other_ms":%.4f,"by_kind":[%s],"ops":[%s]})"
              "\n",
              gpt_json(c, g).c_str(), times.size(), median(times) * 1e3,
              *std::min_element(times.begin(), times.end()) * 1e3, median(op_totals) * 1e3,
              median(others) * 1e3, kinds.c_str(), ops.c_str());
}

// The job as written (2000 steps, evaluation every eval_every and at the end over
// eval_batches validation batches): the final validation loss and the run's time.
void run_gpt_train(Config c) {
  const ampd::v1::JobSpec spec = gpt_spec(c);
  const auto owned = make_backend(c);
  std::vector<double> times;
  std::string evals;
  double val_loss = 0, train_loss = 0;
  c.steps = 0;
  const Clock::time_point start = Clock::now();
  auto t = gpt_trainer(
      *owned, c, spec, [&](const ampd::engine::StepStats& s) { times.push_back(s.seconds); },
      [&](const ampd::v1::JobEvent& e) {
        if (!e.has_evaluation()) return;
        char buf[64];
        std::snprintf(buf, sizeof buf, "%s[%lld,%.5f]", evals.empty() ? "" : ",",
                      static_cast<long long>(e.evaluation().step()), e.evaluation().val_loss());
        evals += buf;
        val_loss = e.evaluation().val_loss();
        train_loss = e.evaluation().train_loss();
      });
  const GptShape g = gpt_shape(spec, t->model());
  run_gpt_job(*t);
  const double wall = secs(start, Clock::now());
  std::printf(
      R"({"mode":"gpt_train",%s,"steps":%zu,"eval_batches":%d,"val_loss":%.5f,)"
      R"("train_loss":%.5f,"evals":[%s],"train_s":%.2f,"wall_s":%.2f,)"
      R"("step_ms_median":%.4f})"
      "\n",
      gpt_json(c, g).c_str(), times.size(),
      c.eval_batches > 0 ? static_cast<int>(c.eval_batches) : spec.data().text().eval_batches(),
      val_loss, train_loss, evals.c_str(), std::accumulate(times.begin(), times.end(), 0.0), wall,
      median(times) * 1e3);
}

}  // namespace

int main(int argc, char** argv) {
  const Config c = parse(argc, argv);
  if (c.mode == "steps") {
    run_steps(c);
  } else if (c.mode == "matmul") {
    run_matmul(c);
  } else if (c.mode == "paired") {
    run_paired(c);
  } else if (c.mode == "phases") {
    run_phases(c);
  } else if (c.mode == "gpt_steps") {
    run_gpt_steps(c);
  } else if (c.mode == "gpt_matmul") {
    run_gpt_matmul(c);
  } else if (c.mode == "gpt_paired") {
    run_gpt_paired(c);
  } else if (c.mode == "gpt_ops") {
    run_gpt_ops(c);
  } else if (c.mode == "gpt_train") {
    run_gpt_train(c);
  } else {
    die("unknown mode " + c.mode);
  }
  return 0;
}
