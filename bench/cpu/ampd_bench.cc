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
// Every mode takes backend=cpu|cuda (default cpu; cuda loads the plugin next to this
// executable, as `ampd --backend cuda` does; bench/gpu/engine_check.sh uses it).
//
// FLOPs: 2*B*in*out per product; forward and weight gradient for every Linear, input
// gradient for every Linear but the first.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
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
};

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "ampd_bench: %s\n", msg.c_str());
  std::exit(1);
}

void check(const Status& s, const char* what) {
  if (!s.ok()) die(std::string(what) + ": " + s.message());
}

Config parse(int argc, char** argv) {
  if (argc < 2) die("usage: ampd_bench steps|matmul|paired|phases key=value...");
  Config c;
  c.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (eq == std::string::npos) die("expected key=value, got " + arg);
    const std::string k = arg.substr(0, eq), v = arg.substr(eq + 1);
    if (k == "precision") {
      c.precision = v;
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
  } else {
    die("unknown mode " + c.mode);
  }
  return 0;
}
