// The server's core pieces in-process: the SQLite job store, the event hub's replay and
// overflow paths (driven deterministically, which a real network cannot do), and data set
// uploads.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

#include "engine/job_spec.h"
#include "engine/job_summary.h"
#include "kernels/reference/reference_backend.h"
#include "server/dataset_store.h"
#include "server/event_hub.h"
#include "server/job_manager.h"
#include "server/job_store.h"
#include "tests/server/manager_test_util.h"

namespace ampd::server {
namespace {

namespace fs = std::filesystem;
using ampd::v1::Job;
using ampd::v1::JobEvent;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/ampd-core-test-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

JobEvent event(const std::string& job, int64_t seq, bool final = false) {
  JobEvent e;
  e.set_job_id(job);
  e.set_seq(seq);
  if (final) {
    e.mutable_state_change()->set_state(ampd::v1::SUCCEEDED);
  } else {
    e.mutable_progress()->set_step(seq);
  }
  return e;
}

// ---- JobStore --------------------------------------------------------------------------

TEST(JobStore, PersistsJobsAndEventsAcrossReopen) {
  TempDir dir;
  const std::string db = (dir.path() / "ampd.db").string();
  {
    auto store = JobStore::open(db);
    ASSERT_TRUE(store.ok()) << store.status().to_string();
    Job job;
    job.set_id("j-000000000001aaaa");
    job.set_state(ampd::v1::QUEUED);
    job.set_client_request_id("r1");
    job.mutable_spec()->set_name("one");
    ASSERT_TRUE((*store)->insert_job(job, event(job.id(), 1)).ok());
    // The same client_request_id cannot name a second job.
    Job dup = job;
    dup.set_id("j-000000000002aaaa");
    EXPECT_EQ((*store)->insert_job(dup, event(dup.id(), 1)).code(), StatusCode::kAlreadyExists);
    job.set_state(ampd::v1::RUNNING);
    for (int64_t seq = 2; seq <= 10; ++seq) {
      job.set_step(seq);
      ASSERT_TRUE((*store)->append_event(job, event(job.id(), seq), seq % 5 == 0).ok());
    }
    // A seq cannot be stored twice.
    EXPECT_FALSE((*store)->append_event(job, event(job.id(), 10), false).ok());
  }
  auto store = JobStore::open(db);
  ASSERT_TRUE(store.ok());
  auto job = (*store)->get_job("j-000000000001aaaa");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), ampd::v1::RUNNING);
  EXPECT_EQ(job->step(), 10);
  EXPECT_EQ(*(*store)->last_seq(job->id()), 10);
  auto events = (*store)->list_events(job->id(), 3, 4);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 4u);
  EXPECT_EQ((*events)[0].seq(), 4);
  EXPECT_EQ((*events)[3].seq(), 7);
  auto found = (*store)->find_by_client_request_id("r1");
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_EQ((*found)->id(), job->id());
  EXPECT_EQ((*store)->get_job("j-ffffffffffffffff").status().code(), StatusCode::kNotFound);
  auto running = (*store)->list_jobs({ampd::v1::RUNNING}, "", 10);
  ASSERT_TRUE(running.ok());
  EXPECT_EQ(running->size(), 1u);
  EXPECT_EQ((*store)->list_jobs({ampd::v1::QUEUED}, "", 10)->size(), 0u);
  EXPECT_EQ(*(*store)->max_job_id(), "j-000000000001aaaa");
}

TEST(JobStore, RefusesAFileThatIsNotADatabase) {
  TempDir dir;
  const fs::path p = dir.path() / "junk.db";
  std::FILE* f = std::fopen(p.c_str(), "w");
  std::fputs("this is not sqlite, just text long enough to look like a header........", f);
  std::fclose(f);
  auto store = JobStore::open(p.string());
  EXPECT_FALSE(store.ok());
}

// ---- EventHub --------------------------------------------------------------------------

// An in-memory "store" with the manager's discipline: persist, then publish.
class FakeLog {
 public:
  StatusOr<std::vector<JobEvent>> read(const std::string&, int64_t after, int limit) {
    std::lock_guard<std::mutex> lock(mu_);
    // Appended in seq order from 1, so seq n sits at index n - 1.
    std::vector<JobEvent> out;
    for (size_t i = static_cast<size_t>(std::max<int64_t>(0, after));
         i < events_.size() && static_cast<int>(out.size()) < limit; ++i) {
      out.push_back(events_[i]);
    }
    return out;
  }
  void append(const JobEvent& e) {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(e);
  }

 private:
  std::mutex mu_;
  std::vector<JobEvent> events_;
};

EventHub::Options small_hub() {
  EventHub::Options o;
  o.watcher_buffer = 8;
  o.replay_page = 16;
  o.poll_interval = std::chrono::milliseconds(20);
  return o;
}

void expect_seqs(const std::vector<int64_t>& got, int64_t from, int64_t to) {
  ASSERT_EQ(got.size(), static_cast<size_t>(to - from + 1));
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], from + static_cast<int64_t>(i));
}

TEST(EventHub, FastSlowAndLateWatchersGetEverySeqOnceInOrder) {
  FakeLog log;
  EventHub hub(small_hub(), [&](const std::string& id, int64_t after, int limit) {
    return log.read(id, after, limit);
  });
  constexpr int64_t kEvents = 3000;
  auto publish = [&](int64_t seq) {
    const JobEvent e = event("j", seq, seq == kEvents);
    log.append(e);
    hub.publish(e);
  };
  for (int64_t seq = 1; seq <= 100; ++seq) publish(seq);  // history before anyone watches

  std::vector<int64_t> fast, slow, late, resumed;
  auto watch = [&](std::vector<int64_t>* out, int64_t since, int sleep_every) {
    return hub.watch(
        "j", since, false,
        [&, out, sleep_every](const JobEvent& e) {
          out->push_back(e.seq());
          if (sleep_every > 0 && e.seq() % sleep_every == 0) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
          }
          return true;
        },
        nullptr);
  };
  Status s_fast, s_slow, s_late, s_resumed;
  std::thread t_fast([&] { s_fast = watch(&fast, 0, 0); });
  std::thread t_slow([&] { s_slow = watch(&slow, 0, 3); });  // overflows its 8 events
  std::thread t_resumed([&] { s_resumed = watch(&resumed, 50, 0); });
  std::thread producer([&] {
    for (int64_t seq = 101; seq <= kEvents; ++seq) {
      publish(seq);
      if (seq == 1500) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  std::thread t_late([&] { s_late = watch(&late, 0, 0); });
  producer.join();
  t_fast.join();
  t_slow.join();
  t_resumed.join();
  t_late.join();
  for (const Status* s : {&s_fast, &s_slow, &s_late, &s_resumed}) EXPECT_TRUE(s->ok());
  expect_seqs(fast, 1, kEvents);
  expect_seqs(slow, 1, kEvents);
  expect_seqs(late, 1, kEvents);
  expect_seqs(resumed, 51, kEvents);
  EXPECT_EQ(hub.watcher_count(), 0u);
}

TEST(EventHub, ABlockedWatcherNeverBlocksThePublisherAndCatchesUpAfterwards) {
  FakeLog log;
  EventHub hub(small_hub(), [&](const std::string& id, int64_t after, int limit) {
    return log.read(id, after, limit);
  });
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::atomic<bool> first_written{false};
  std::vector<int64_t> got;
  Status status;
  std::thread watcher([&] {
    status = hub.watch(
        "j", 0, false,
        [&](const JobEvent& e) {
          got.push_back(e.seq());
          first_written = true;
          // A client that stops reading: the first write blocks until released.
          std::unique_lock<std::mutex> lock(mu);
          cv.wait(lock, [&] { return release; });
          return true;
        },
        nullptr);
  });
  const JobEvent first = event("j", 1);
  log.append(first);
  hub.publish(first);
  while (!first_written) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  // 100k events while the watcher is stuck: publishing stays fast (bounded buffer).
  const auto t0 = std::chrono::steady_clock::now();
  constexpr int64_t kEvents = 100000;
  for (int64_t seq = 2; seq <= kEvents; ++seq) {
    const JobEvent e = event("j", seq, seq == kEvents);
    log.append(e);
    hub.publish(e);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 5.0);
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  watcher.join();
  EXPECT_TRUE(status.ok()) << status.to_string();
  expect_seqs(got, 1, kEvents);
}

TEST(EventHub, ShutdownEndsWatchesWithUnavailable) {
  FakeLog log;
  EventHub hub(small_hub(), [&](const std::string& id, int64_t after, int limit) {
    return log.read(id, after, limit);
  });
  Status status;
  std::thread watcher([&] {
    status = hub.watch(
        "j", 0, false, [](const JobEvent&) { return true; }, nullptr);
  });
  while (hub.watcher_count() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  hub.shutdown();
  watcher.join();
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(hub.watch(
                   "j", 0, false, [](const JobEvent&) { return true; }, nullptr)
                .code(),
            StatusCode::kUnavailable);
}

TEST(EventHub, AWatchOfAnEndedJobEndsAfterTheReplayEvenPastTheEnd) {
  FakeLog log;
  EventHub hub(small_hub(), [&](const std::string& id, int64_t after, int limit) {
    return log.read(id, after, limit);
  });
  for (int64_t seq = 1; seq <= 40; ++seq) log.append(event("j", seq, seq == 40));
  std::vector<int64_t> got;
  auto collect = [&](const JobEvent& e) {
    got.push_back(e.seq());
    return true;
  };
  EXPECT_TRUE(hub.watch("j", 17, true, collect, nullptr).ok());
  expect_seqs(got, 18, 40);
  got.clear();
  EXPECT_TRUE(hub.watch("j", 40, true, collect, nullptr).ok());
  EXPECT_TRUE(got.empty());
}

TEST(EventHub, AClientThatLeavesEndsItsWatch) {
  FakeLog log;
  EventHub hub(small_hub(), [&](const std::string& id, int64_t after, int limit) {
    return log.read(id, after, limit);
  });
  std::atomic<bool> gone{false};
  Status status;
  std::thread watcher([&] {
    status = hub.watch(
        "j", 0, false, [](const JobEvent&) { return true; }, [&] { return gone.load(); });
  });
  gone = true;
  watcher.join();
  EXPECT_EQ(status.code(), StatusCode::kCancelled);
  EXPECT_EQ(hub.watcher_count(), 0u);
}

// ---- engine::apply_event (engine/job_summary.h)
// ------------------------------------------------------------------------

TEST(ApplyEvent, KeepsTheJobSummaryInStepWithEvents) {
  Job job;
  JobEvent e;
  e.mutable_state_change()->set_state(ampd::v1::RUNNING);
  e.mutable_time()->set_seconds(100);
  engine::apply_event(e, &job);
  EXPECT_EQ(job.state(), ampd::v1::RUNNING);
  EXPECT_EQ(job.started_at().seconds(), 100);
  e.mutable_progress()->set_step(20);
  e.mutable_progress()->set_loss(0.5);
  e.mutable_progress()->set_loss_scale(1024);
  engine::apply_event(e, &job);
  EXPECT_EQ(job.step(), 20);
  EXPECT_EQ(job.metrics().train_loss(), 0.5);
  e.mutable_checkpoint()->set_path("/x/step-20.safetensors");
  engine::apply_event(e, &job);
  EXPECT_EQ(job.checkpoint(), "/x/step-20.safetensors");
  e.mutable_state_change()->set_state(ampd::v1::FAILED);
  e.mutable_state_change()->set_reason("boom");
  e.mutable_time()->set_seconds(200);
  engine::apply_event(e, &job);
  EXPECT_EQ(job.failure_reason(), "boom");
  EXPECT_EQ(job.started_at().seconds(), 100);
  EXPECT_EQ(job.finished_at().seconds(), 200);
}

// ---- JobManager (in-process, on the reference backend) ----------------------------------

using test::tiny_spec;
using test::watch_to_end;

std::unique_ptr<JobManager> new_manager(const TempDir& dir) {
  JobManagerOptions o;
  o.state_dir = (dir.path() / "state").string();
  o.data_dir = (dir.path() / "data").string();
  o.max_queued_jobs = 100;
  auto m = JobManager::create(make_reference_backend(), o);
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  if (!m.ok()) return nullptr;
  (*m)->start();
  return std::move(m).value();
}

void expect_contiguous(const std::vector<JobEvent>& events) {
  for (size_t i = 0; i < events.size(); ++i) {
    ASSERT_EQ(events[i].seq(), static_cast<int64_t>(i) + 1);
  }
}

TEST(JobManager, ConcurrentSubmitsAndCancelsAllEndOnce) {
  TempDir dir;
  auto m = new_manager(dir);
  ASSERT_NE(m, nullptr);
  std::mutex mu;
  std::vector<std::string> ids;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < 3; ++k) {
        auto job = m->submit(tiny_spec(3 + k), "c" + std::to_string(t) + "-" + std::to_string(k));
        ASSERT_TRUE(job.ok()) << job.status().to_string();
        if (k == 1) (void)m->cancel(job->id());  // queued or running: either way it ends
        std::lock_guard<std::mutex> lock(mu);
        ids.push_back(job->id());
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(ids.size(), 12u);
  for (const auto& id : ids) {
    Status s;
    const auto events = watch_to_end(*m, id, &s);
    ASSERT_TRUE(s.ok()) << s.to_string();
    expect_contiguous(events);
    int finals = 0;
    for (const auto& e : events) finals += EventHub::is_final(e) ? 1 : 0;
    EXPECT_EQ(finals, 1) << id;
  }
  auto page = m->list({ampd::v1::SUCCEEDED, ampd::v1::CANCELLED}, 0, "");
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->jobs.size(), 12u);
}

TEST(JobManager, ShutdownLeavesTheJobRunningAndTheNextStartResumesIt) {
  TempDir dir;
  std::string id;
  {
    auto m = new_manager(dir);
    ASSERT_NE(m, nullptr);
    auto job = m->submit(tiny_spec(1000000), "");
    ASSERT_TRUE(job.ok());
    id = job->id();
    // Follow it until step 12, then stop the watch.
    std::atomic<bool> far{false};
    Status s = m->watch(
        id, 0,
        [&](const JobEvent& e) {
          if (e.has_progress() && e.progress().step() >= 12) far = true;
          return !far.load();
        },
        nullptr);
    EXPECT_EQ(s.code(), StatusCode::kCancelled);
    EXPECT_TRUE(m->shutdown(std::chrono::steady_clock::now() + std::chrono::seconds(30)));
    EXPECT_EQ(m->submit(tiny_spec(3), "").status().code(), StatusCode::kUnavailable);
    auto stopped = m->get(id);
    ASSERT_TRUE(stopped.ok());
    EXPECT_EQ(stopped->state(), ampd::v1::RUNNING);
    EXPECT_FALSE(stopped->checkpoint().empty());
  }
  auto m = new_manager(dir);
  ASSERT_NE(m, nullptr);
  // The restarted job checkpoints again; then a user cancel ends it for good.
  std::thread canceller;
  Status s = m->watch(
      id, 0,
      [&](const JobEvent& e) {
        if (e.has_state_change() && e.state_change().state() == ampd::v1::RUNNING &&
            e.state_change().reason().rfind("resumed from", 0) == 0) {
          canceller = std::thread([&m, id] { (void)m->cancel(id); });
        }
        return true;
      },
      nullptr);
  if (canceller.joinable()) canceller.join();
  EXPECT_TRUE(s.ok()) << s.to_string();
  auto done = m->get(id);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), ampd::v1::CANCELLED);
  Status ws;
  const auto events = watch_to_end(*m, id, &ws);
  expect_contiguous(events);
  int cancelled = 0;
  for (const auto& e : events) {
    cancelled += e.has_state_change() && e.state_change().state() == ampd::v1::CANCELLED;
  }
  EXPECT_EQ(cancelled, 1);  // the shutdown's stop left no CANCELLED behind
}

// ---- DatasetStore ----------------------------------------------------------------------

TEST(Sha256, KnownVectors) {
  Sha256 empty;
  EXPECT_EQ(empty.hex_digest(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  Sha256 abc;
  abc.update("a");
  abc.update("bc");
  EXPECT_EQ(abc.hex_digest(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(DatasetStore, VerifiedUploadsOnlyAndNoPartialFiles) {
  TempDir dir;
  DatasetStore::Options o;
  o.data_dir = (dir.path() / "data").string();
  o.max_upload_bytes = 16;
  auto store = DatasetStore::create(o);
  ASSERT_TRUE(store.ok());
  const std::string abc_sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  {
    auto up = (*store)->begin_upload("abc.csv", 3, abc_sha);
    ASSERT_TRUE(up.ok());
    ASSERT_TRUE((*up)->append("ab").ok());
    ASSERT_TRUE((*up)->append("c").ok());
    auto info = (*up)->finish();
    ASSERT_TRUE(info.ok()) << info.status().to_string();
    EXPECT_EQ(info->sha256, abc_sha);
  }
  {
    auto up = (*store)->begin_upload("bad.csv", 3, std::string(64, 'a'));
    ASSERT_TRUE(up.ok());
    ASSERT_TRUE((*up)->append("abc").ok());
    EXPECT_EQ((*up)->finish().status().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_EQ((*store)->begin_upload("abc.csv", 3, abc_sha).status().code(),
            StatusCode::kAlreadyExists);
  EXPECT_EQ((*store)->begin_upload("big.csv", 17, abc_sha).status().code(),
            StatusCode::kResourceExhausted);
  for (const char* name : {"", ".hidden", "../x", "a/b", "a b"}) {
    EXPECT_EQ((*store)->begin_upload(name, 3, abc_sha).status().code(),
              StatusCode::kInvalidArgument)
        << name;
  }
  EXPECT_EQ((*store)->begin_upload("x.csv", 3, "abc").status().code(),
            StatusCode::kInvalidArgument);
  auto list = (*store)->list();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "abc.csv");
  EXPECT_EQ((*list)[0].sha256, abc_sha);
  // Only the finished upload is in the directory: no temporary files remain.
  int files = 0;
  for (const auto& entry : fs::directory_iterator(o.data_dir)) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

}  // namespace
}  // namespace ampd::server
