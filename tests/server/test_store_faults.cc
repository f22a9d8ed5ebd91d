// The job store's disk filling up under a running server (JobManager in-process on the
// reference backend; SQLite itself refuses to grow the database: JobStore's disk-full
// test seam): nothing crashes, the running job trains to its end, calls that must write
// fail with RESOURCE_EXHAUSTED and say why, reads keep working, and once writes succeed
// again every event is stored, in order, without gaps or repeats.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "engine/job_spec.h"
#include "kernels/reference/reference_backend.h"
#include "server/event_hub.h"
#include "server/job_manager.h"
#include "server/job_store.h"
#include "tests/server/manager_test_util.h"

namespace ampd::server {
namespace {

namespace fs = std::filesystem;
using ampd::v1::JobEvent;

using test::tiny_spec;

struct DiskFull {
  DiskFull() { JobStore::set_disk_full_for_testing(true); }
  ~DiskFull() { JobStore::set_disk_full_for_testing(false); }
};

TEST(StoreFaults, AFullDiskUnderTheJobStoreCrashesNothingAndLosesNoEvent) {
  char tmpl[] = "/tmp/ampd-store-fault-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const fs::path root = tmpl;
  JobManagerOptions o;
  o.state_dir = (root / "state").string();
  o.data_dir = (root / "data").string();
  auto created = JobManager::create(make_reference_backend(), o);
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  std::unique_ptr<JobManager> m = std::move(created).value();

  // One snapshot per look: reading the running job and the queue length from two info()
  // calls can see neither (the worker pops the queue between them) and call it idle.
  auto idle = [&] {
    const ManagerInfo info = m->info();
    return info.running_job.empty() && info.queued_jobs == 0;
  };
  auto wait_idle = [&] {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline && !idle()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return idle();
  };
  std::vector<std::string> ids;
  {
    DiskFull full;
    // Queue jobs (the worker has not started) until the store refuses one: then the
    // database cannot grow and has little room left in its pages. A refused call says why.
    Status refused;
    for (int i = 0; i < 500 && refused.ok(); ++i) {
      auto job = m->submit(tiny_spec(60, 20), "");
      if (job.ok()) {
        ids.push_back(job->id());
      } else {
        refused = job.status();
      }
    }
    ASSERT_FALSE(refused.ok()) << "the store never filled up";
    EXPECT_EQ(refused.code(), StatusCode::kResourceExhausted) << refused.to_string();
    EXPECT_NE(refused.message().find("database or disk is full"), std::string::npos)
        << refused.to_string();
    ASSERT_FALSE(ids.empty()) << "the store refused even the first job";
    // Every queued job trains to its end although most of its events cannot be stored.
    m->start();
    ASSERT_TRUE(wait_idle());
    // Reads keep working.
    auto got = m->get(ids[0]);
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    EXPECT_TRUE(m->list({}, 10, "").ok());
  }
  // Space again: the next job goes in, and the earlier jobs' events with it.
  auto c = m->submit(tiny_spec(5, 20), "");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  ids.push_back(c->id());
  ASSERT_TRUE(wait_idle());
  for (const std::string& id : ids) {
    Status ws;
    const auto events = test::watch_to_end(*m, id, &ws);
    EXPECT_TRUE(ws.ok()) << ws.to_string();
    ASSERT_FALSE(events.empty());
    int finals = 0, progress = 0;
    for (size_t i = 0; i < events.size(); ++i) {
      ASSERT_EQ(events[i].seq(), static_cast<int64_t>(i) + 1) << id;
      finals += EventHub::is_final(events[i]) ? 1 : 0;
      progress += events[i].has_progress() ? 1 : 0;
    }
    EXPECT_EQ(finals, 1) << id;
    EXPECT_EQ(events.back().state_change().state(), ampd::v1::SUCCEEDED) << id;
    EXPECT_EQ(progress, id == c->id() ? 5 : 60) << id;  // none lost
    auto job = m->get(id);
    ASSERT_TRUE(job.ok());
    EXPECT_EQ(job->state(), ampd::v1::SUCCEEDED) << id;
    EXPECT_EQ(job->step(), id == c->id() ? 5 : 60) << id;
  }
  RecordProperty("jobs_queued_before_full", static_cast<int>(ids.size()) - 1);
  EXPECT_TRUE(m->shutdown(std::chrono::steady_clock::now() + std::chrono::seconds(30)));
  m.reset();
  std::error_code ec;
  fs::remove_all(root, ec);
}

}  // namespace
}  // namespace ampd::server
