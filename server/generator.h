// Text generation for `ampd serve` (the Generate RPC; server/trainer_service.cc is its gRPC
// side): from a language model job's checkpoint, with engine::Sampler, on a backend of its
// own, with no gRPC in sight.
//
// Why its own backend: the job manager's backend belongs to the worker thread that trains,
// and a CPU backend serializes its ops with a mutex (a CUDA backend queues them on one
// stream), so generating on it would stall a running job for as long as the generation
// takes. Every loaded model here gets a fresh backend from `make_backend` (the server
// passes the training backend's kind: a CPU backend with one thread, or a second CUDA
// backend, i.e. its own stream), so generation and training only share cores or the GPU.
// A loaded model is used by one request at a time (generating writes its activations).
//
// Loaded models are cached: the last `cached_models` idle ones (each with its backend),
// keyed by the checkpoint file's path, inode, size and modification time, so asking again
// for the same checkpoint skips reading it and building the model; a newer checkpoint is
// a new key and the oldest idle entry is dropped. Concurrent requests for one checkpoint
// each load their own copy (at most max_concurrent at once).
//
// No lock is held while a checkpoint loads or text is generated; the job manager is only
// asked which file to read (a store read).
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>

#include "base/status.h"
#include "engine/sampler.h"
#include "kernels/backend.h"
#include "server/job_manager.h"

namespace ampd::server {

// Sees generations, for metrics (server/metrics.h). Called on RPC threads, concurrently.
class GenerationObserver {
 public:
  virtual ~GenerationObserver() = default;
  virtual void on_generation_started() {}
  virtual void on_generation_ended() {}
  virtual void on_tokens_generated(int64_t /*tokens*/) {}
};

struct GeneratorOptions {
  // Generations running at once; one more is ResourceExhausted (--max-generations; 0:
  // generation is off).
  int max_concurrent = 2;
  // Tokens one request may ask for (--max-generate-tokens), 1 .. engine::kMaxSampleTokens.
  int64_t max_tokens = 2000;
  // Idle loaded models kept for later requests (0: load for every request).
  int cached_models = 2;
  // A new backend for one loaded model. Required.
  std::function<StatusOr<std::unique_ptr<Backend>>()> make_backend;
  // Optional; must outlive the generator.
  GenerationObserver* observer = nullptr;
};

struct GenerateArgs {
  std::string job_id;
  int64_t step = 0;  // 0 = the job's latest checkpoint
  // max_tokens 0 = kDefaultTokens (or the server's limit if lower).
  engine::SampleOptions sample;
};

struct GenerateStats {
  int64_t tokens = 0;
  int64_t prompt_tokens = 0;
  int64_t step = 0;         // of the checkpoint used
  double seconds = 0;       // generating, after the model was ready
  double load_seconds = 0;  // reading the checkpoint and building the model; 0 when cached
  bool stopped = false;     // on_text asked to stop before max_tokens
};

class Generator {
 public:
  static constexpr int64_t kDefaultTokens = 500;

  // `manager` must outlive the generator.
  Generator(JobManager* manager, GeneratorOptions options);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // Checks the request (InvalidArgument naming the field; ResourceExhausted past
  // max_tokens), finds the checkpoint (JobManager::language_model_checkpoint's errors),
  // takes a slot (ResourceExhausted when max_concurrent run), loads or reuses the model,
  // checks the prompt against its vocabulary, and generates, calling on_text with each
  // token's text. on_text returning false stops it at once: OK with stats.stopped.
  StatusOr<GenerateStats> generate(const GenerateArgs& args,
                                   const std::function<bool(const std::string&)>& on_text);

  int active() const;
  const GeneratorOptions& options() const { return options_; }

 private:
  struct Loaded;
  // Reads the checkpoint at `path` into a new model on a new backend.
  StatusOr<std::unique_ptr<Loaded>> load(const std::string& path, const std::string& key);
  std::unique_ptr<Loaded> take_cached(const std::string& key);
  void put_cached(std::unique_ptr<Loaded> loaded);

  JobManager* manager_;
  const GeneratorOptions options_;
  mutable std::mutex mu_;
  int active_ = 0;                           // guarded by mu_
  std::list<std::unique_ptr<Loaded>> idle_;  // guarded by mu_; most recently used first
};

}  // namespace ampd::server
