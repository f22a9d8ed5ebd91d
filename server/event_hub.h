// Per-job fan-out of events to watchers (WatchJob streams), with replay from the store.
//
// The job manager persists every event and only then publishes it here. A watcher
// subscribes first and reads the store second, so every event is either in what it reads
// (published before) or arrives in its buffer (published after); events in both are
// dropped by seq. That gives "history from since_seq, then live, no gap, no duplicate".
//
// Publishing never blocks on a watcher: each watcher has a bounded buffer (Options::
// watcher_buffer events). When a publish finds it full, the buffer is emptied and marked
// overflowed, and the watcher, when it next runs, re-reads what it missed from the store
// by seq (in pages). A slow or vanished client therefore costs at most one buffer of
// memory and never slows training; it just moves from live delivery to store replay.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "base/status.h"

namespace ampd::server {

class EventHub {
 public:
  struct Options {
    // Live events buffered per watcher before it falls back to the store.
    size_t watcher_buffer = 256;
    // Events read from the store per page during replay.
    int replay_page = 256;
    // How often a waiting watcher checks whether its client went away (the sync gRPC API
    // has no cancellation callback). A gone client is noticed at once when an event is
    // written to it; this only bounds how long its thread lingers while the job is quiet.
    // Each check wakes a thread on the trainer's cores: 50 watchers polling every 200 ms
    // cost 0.8% of a core (bench/RESULTS.md), every second 0.2%.
    std::chrono::milliseconds poll_interval{1000};
  };
  // Reads up to `limit` stored events of a job with seq > after_seq, in order.
  using HistoryReader = std::function<StatusOr<std::vector<ampd::v1::JobEvent>>(
      const std::string& job_id, int64_t after_seq, int limit)>;

  EventHub(Options options, HistoryReader history)
      : options_(options), history_(std::move(history)) {}
  EventHub(const EventHub&) = delete;
  EventHub& operator=(const EventHub&) = delete;

  // Hands an event (already persisted) to the job's watchers. Never blocks on them.
  void publish(const ampd::v1::JobEvent& event);

  // Streams a job's events with seq > since_seq through `write` until the job's final
  // state event has been written. `job_ended` says the job was already final before the
  // call: then its whole history is in the store and the watch ends after the replay,
  // even when since_seq is past the final event. `write` returns false when the client is gone;
  // `cancelled` is polled while waiting. Returns OK after the final event, Cancelled when
  // the client left, Unavailable when the hub shuts down (the server is draining: the
  // client reconnects with its last seq), or the store's error.
  Status watch(const std::string& job_id, int64_t since_seq, bool job_ended,
               const std::function<bool(const ampd::v1::JobEvent&)>& write,
               const std::function<bool()>& cancelled);

  // Ends every watch (they return Unavailable) and refuses new ones.
  void shutdown();

  // Watchers currently attached (for tests and server info).
  size_t watcher_count() const;

  static bool is_final(const ampd::v1::JobEvent& event);

 private:
  struct Watcher {
    std::deque<ampd::v1::JobEvent> buffer;
    bool overflowed = false;
    std::condition_variable cv;
  };

  // Sends stored events after *last_seq; sets *done at a final event. False when the
  // client is gone.
  Status replay(const std::string& job_id, int64_t* last_seq, bool* done,
                const std::function<bool(const ampd::v1::JobEvent&)>& write);

  const Options options_;
  const HistoryReader history_;
  mutable std::mutex mu_;
  bool shutdown_ = false;
  std::map<std::string, std::set<Watcher*>> watchers_;  // by job id
};

}  // namespace ampd::server
