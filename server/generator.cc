#include "server/generator.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

namespace ampd::server {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// "path|inode|size|mtime": a checkpoint rewritten in place (a job resumed after a crash
// writes its step again) is a new key.
std::string file_key(const std::string& path, const struct stat& st) {
  return path + "|" + std::to_string(st.st_ino) + "|" + std::to_string(st.st_size) + "|" +
         std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
}

bool file_gone(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) != 0 && errno == ENOENT;
}

}  // namespace

struct Generator::Loaded {
  std::string key;
  // Declared before the sampler: the model's buffers go back to it first.
  std::unique_ptr<Backend> backend;
  std::unique_ptr<engine::Sampler> sampler;
};

Generator::Generator(JobManager* manager, GeneratorOptions options)
    : manager_(manager), options_(std::move(options)) {}

Generator::~Generator() = default;

int Generator::active() const {
  std::lock_guard<std::mutex> lock(mu_);
  return active_;
}

std::unique_ptr<Generator::Loaded> Generator::take_cached(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = idle_.begin(); it != idle_.end(); ++it) {
    if ((*it)->key == key) {
      std::unique_ptr<Loaded> found = std::move(*it);
      idle_.erase(it);
      return found;
    }
  }
  return nullptr;
}

void Generator::put_cached(std::unique_ptr<Loaded> loaded) {
  std::list<std::unique_ptr<Loaded>> evicted;  // freed after the lock is released
  {
    std::lock_guard<std::mutex> lock(mu_);
    idle_.push_front(std::move(loaded));
    const auto keep = static_cast<size_t>(std::max(0, options_.cached_models));
    while (idle_.size() > keep) {
      evicted.push_back(std::move(idle_.back()));
      idle_.pop_back();
    }
  }
}

StatusOr<std::unique_ptr<Generator::Loaded>> Generator::load(const std::string& path,
                                                             const std::string& key) {
  if (!options_.make_backend) return internal("generation: no backend factory");
  auto loaded = std::make_unique<Loaded>();
  loaded->key = key;
  AMPD_ASSIGN_OR_RETURN(loaded->backend, options_.make_backend());
  auto sampler = engine::Sampler::create(*loaded->backend, path);
  if (!sampler.ok()) {
    // Not the request's fault: the job's checkpoint cannot serve (another precision than
    // this backend has, say).
    if (sampler.status().code() == StatusCode::kInvalidArgument) {
      return failed_precondition(sampler.status().message());
    }
    return sampler.status();
  }
  loaded->sampler = std::move(sampler).value();
  return loaded;
}

StatusOr<GenerateStats> Generator::generate(
    const GenerateArgs& args, const std::function<bool(const std::string&)>& on_text) {
  engine::SampleOptions so = args.sample;
  if (so.max_tokens == 0) so.max_tokens = std::min(kDefaultTokens, options_.max_tokens);
  if (so.max_tokens > options_.max_tokens) {
    return resource_exhausted(
        "max_tokens: " + std::to_string(so.max_tokens) + " is over this server's limit of " +
        std::to_string(options_.max_tokens) +
        " tokens per request (ampd serve --max-generate-tokens); ask for fewer, or continue "
        "in another request with the text so far as its prompt");
  }
  AMPD_RETURN_IF_ERROR(engine::Sampler::check_ranges(so));
  if (options_.max_concurrent <= 0) {
    return resource_exhausted(
        "text generation is off on this server (ampd serve --max-generations 0); start it "
        "with --max-generations 1 or more");
  }
  AMPD_ASSIGN_OR_RETURN(JobManager::CheckpointRef ref,
                        manager_->language_model_checkpoint(args.job_id, args.step));

  {
    std::lock_guard<std::mutex> lock(mu_);
    if (active_ >= options_.max_concurrent) {
      return resource_exhausted(std::to_string(active_) + " generation" +
                                (active_ == 1 ? " is" : "s are") +
                                " running, this server's limit (ampd serve --max-generations " +
                                std::to_string(options_.max_concurrent) +
                                "); try again when one ends, or raise --max-generations");
    }
    ++active_;
  }
  struct Slot {
    Generator* g;
    ~Slot() {
      {
        std::lock_guard<std::mutex> lock(g->mu_);
        --g->active_;
      }
      if (g->options_.observer != nullptr) g->options_.observer->on_generation_ended();
    }
  } slot{this};
  if (options_.observer != nullptr) options_.observer->on_generation_started();

  // The trainer keeps its two newest checkpoints: the file the store names can be deleted
  // before it is read; the store then names its successor (or, for a step, says it is gone).
  std::unique_ptr<Loaded> loaded;
  double load_seconds = 0;
  for (int attempt = 0; loaded == nullptr; ++attempt) {
    struct stat st {};
    if (::stat(ref.path.c_str(), &st) == 0) {
      const std::string key = file_key(ref.path, st);
      loaded = take_cached(key);
      if (loaded != nullptr) break;
      const Clock::time_point start = Clock::now();
      auto fresh = load(ref.path, key);
      if (fresh.ok()) {
        loaded = std::move(fresh).value();
        load_seconds = seconds_since(start);
        break;
      }
      if (!file_gone(ref.path)) return fresh.status();
    } else if (errno != ENOENT) {
      return internal("cannot stat checkpoint " + ref.path + ": " + std::strerror(errno));
    }
    if (attempt >= 2) {
      return unavailable("the checkpoint of job " + args.job_id + " is being replaced; retry");
    }
    AMPD_ASSIGN_OR_RETURN(ref, manager_->language_model_checkpoint(args.job_id, args.step));
  }

  if (Status s = loaded->sampler->check(so); !s.ok()) {
    put_cached(std::move(loaded));
    return s;
  }
  GenerateStats stats;
  stats.step = loaded->sampler->step();
  stats.load_seconds = load_seconds;
  stats.prompt_tokens = static_cast<int64_t>(so.prompt.size());  // one token per byte
  GenerationObserver* const observer = options_.observer;
  const Clock::time_point start = Clock::now();
  const Status s = loaded->sampler->generate(so, [&](const std::string& text) {
    ++stats.tokens;
    if (observer != nullptr) observer->on_tokens_generated(1);
    if (!on_text(text)) {
      stats.stopped = true;
      return false;
    }
    return true;
  });
  stats.seconds = seconds_since(start);
  put_cached(std::move(loaded));
  if (!s.ok()) return s;
  return stats;
}

}  // namespace ampd::server
