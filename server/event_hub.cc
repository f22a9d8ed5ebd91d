#include "server/event_hub.h"

namespace ampd::server {

using ampd::v1::JobEvent;

bool EventHub::is_final(const JobEvent& event) {
  if (!event.has_state_change()) return false;
  const auto s = event.state_change().state();
  return s == ampd::v1::SUCCEEDED || s == ampd::v1::FAILED || s == ampd::v1::CANCELLED;
}

void EventHub::publish(const JobEvent& event) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = watchers_.find(event.job_id());
  if (it == watchers_.end()) return;
  for (Watcher* w : it->second) {
    if (w->buffer.size() >= options_.watcher_buffer) {
      // Full: drop what it holds (the store has it) rather than grow or wait.
      w->buffer.clear();
      w->overflowed = true;
    } else {
      w->buffer.push_back(event);
    }
    w->cv.notify_one();
  }
}

void EventHub::shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  shutdown_ = true;
  for (auto& [id, set] : watchers_) {
    for (Watcher* w : set) w->cv.notify_one();
  }
}

size_t EventHub::watcher_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& [id, set] : watchers_) n += set.size();
  return n;
}

Status EventHub::replay(const std::string& job_id, int64_t* last_seq, bool* done,
                        const std::function<bool(const JobEvent&)>& write) {
  for (;;) {
    AMPD_ASSIGN_OR_RETURN(auto page, history_(job_id, *last_seq, options_.replay_page));
    for (const JobEvent& e : page) {
      if (!write(e)) return Status(StatusCode::kCancelled, "watcher went away");
      *last_seq = e.seq();
      if (is_final(e)) {
        *done = true;
        return Status::ok_status();
      }
    }
    if (static_cast<int>(page.size()) < options_.replay_page) return Status::ok_status();
  }
}

Status EventHub::watch(const std::string& job_id, int64_t since_seq, bool job_ended,
                       const std::function<bool(const JobEvent&)>& write,
                       const std::function<bool()>& cancelled) {
  Watcher self;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_) return unavailable("server is shutting down");
    watchers_[job_id].insert(&self);
  }
  // Detaches on every return path; after this no Publish touches `self`.
  struct Detach {
    EventHub* hub;
    const std::string& id;
    Watcher* w;
    ~Detach() {
      std::lock_guard<std::mutex> lock(hub->mu_);
      auto it = hub->watchers_.find(id);
      if (it == hub->watchers_.end()) return;
      it->second.erase(w);
      if (it->second.empty()) hub->watchers_.erase(it);
    }
  } detach{this, job_id, &self};

  int64_t last_seq = since_seq;
  bool done = false;
  AMPD_RETURN_IF_ERROR(replay(job_id, &last_seq, &done, write));
  if (job_ended) return Status::ok_status();
  std::vector<JobEvent> batch;
  while (!done) {
    bool overflowed = false;
    bool closing = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      self.cv.wait_for(lock, options_.poll_interval,
                       [&] { return shutdown_ || self.overflowed || !self.buffer.empty(); });
      // On shutdown the buffered events still go out (the job's last checkpoint event is
      // usually among them); then the stream ends.
      closing = shutdown_;
      overflowed = self.overflowed;
      self.overflowed = false;
      batch.assign(std::make_move_iterator(self.buffer.begin()),
                   std::make_move_iterator(self.buffer.end()));
      self.buffer.clear();
    }
    if (cancelled && cancelled()) return Status(StatusCode::kCancelled, "watcher went away");
    // Whatever was dropped is in the store: read it first, then the buffer continues it.
    if (overflowed) AMPD_RETURN_IF_ERROR(replay(job_id, &last_seq, &done, write));
    for (const JobEvent& e : batch) {
      if (done) break;
      if (e.seq() <= last_seq) continue;  // already sent from the store
      if (e.seq() > last_seq + 1) {
        // A gap can only mean events this buffer never got (it overflowed between our
        // reads): the store has them, since events are persisted before publication.
        AMPD_RETURN_IF_ERROR(replay(job_id, &last_seq, &done, write));
        if (done || e.seq() <= last_seq) continue;
        // Still missing (an event the store failed to write): deliver rather than stall.
      }
      if (!write(e)) return Status(StatusCode::kCancelled, "watcher went away");
      last_seq = e.seq();
      done = is_final(e);
    }
    if (closing && !done) {
      return unavailable("server is shutting down; watch again from seq " +
                         std::to_string(last_seq));
    }
  }
  return Status::ok_status();
}

}  // namespace ampd::server
