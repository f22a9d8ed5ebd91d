// Load on one real `ampd serve` (CPU backend, one thread): 200 job submissions from 50
// concurrent clients (each its own connection), with 100 WatchJob streams attached while
// the jobs are submitted and run. Checks:
//   - every submission is either accepted or refused with the documented
//     RESOURCE_EXHAUSTED past --max-queued-jobs, and accepted + refused = 200;
//   - every accepted id is distinct, ends SUCCEEDED, has exactly one final state event
//     (seqs 1..n without gaps) and is listed by ListJobs exactly once; ListJobs lists
//     nothing else;
//   - every watcher sees a gap-free event stream that ends with the job's one final event;
//   - the server's memory stays bounded: VmRSS sampled from /proc/<pid>/status during the
//     run and VmHWM at the end stay under kMaxServerRssBytes.
// Jobs are tiny (4 steps of a 8-16-3 MLP on 64 synthetic samples), so the whole test runs
// in well under 90 s on 2 cores. Alone: ctest -L load (or build/bin/test_load).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ampd/v1/trainer.grpc.pb.h"
#include "engine/job_spec.h"
#include "server_process.h"

namespace ampd::testing {
namespace {

namespace fs = std::filesystem;
using ampd::v1::Job;
using ampd::v1::JobEvent;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

constexpr int kClients = 50;
constexpr int kJobsPerClient = 4;  // 200 submissions
constexpr int kWatchers = 100;
constexpr int kMaxQueuedJobs = 100;  // the default, stated
// The server idles at ~25 MiB here (gRPC, oneDNN, SQLite) and peaked at ~35 MiB under this
// load; 50 connections, 100 streams and the jobs' events must not take it past 256 MiB in
// all, nor grow it by more than 128 MiB.
#if defined(__SANITIZE_THREAD__)
// ThreadSanitizer keeps shadow and history memory for every access (5-10x).
constexpr int64_t kMaxServerRssBytes = int64_t{2048} << 20;
constexpr int64_t kMaxServerGrowthBytes = int64_t{1024} << 20;
#elif defined(__SANITIZE_ADDRESS__)
// Under AddressSanitizer (make test's second pass) the server's own memory is dominated by
// ASan: shadow memory and a 256 MiB quarantine of freed blocks (measured: 74 MiB idle,
// 294 MiB peak). The bound still catches growth with the number of jobs; the tight one
// is checked in the normal build.
constexpr int64_t kMaxServerRssBytes = int64_t{768} << 20;
constexpr int64_t kMaxServerGrowthBytes = int64_t{512} << 20;
#else
constexpr int64_t kMaxServerRssBytes = int64_t{256} << 20;
constexpr int64_t kMaxServerGrowthBytes = int64_t{128} << 20;
#endif

ampd::v1::JobSpec tiny_spec(int i) {
  auto spec = engine::parse_job_spec(
      "name: load-" + std::to_string(i) +
          "\n"
          "precision: fp32\n"
          "model: {layers: [{linear: {out_features: 16}}, {relu: {}}, "
          "{linear: {out_features: 3}}]}\n"
          "data: {synthetic: {kind: blobs, samples: 64, features: 8, classes: 3}, "
          "batch_size: 16}\n"
          "optimizer: {sgd: {lr: 0.1}}\n"
          "training: {max_steps: 4, report_every: 1, seed: " +
          std::to_string(i) + "}\n",
      "yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().to_string();
  return spec.ok() ? spec.value() : ampd::v1::JobSpec();
}

// "VmRSS:    12345 kB" -> bytes, or -1.
int64_t proc_status_bytes(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::istringstream fields(line.substr(key.size() + 1));
      int64_t kb = -1;
      fields >> kb;
      return kb < 0 ? -1 : kb * 1024;
    }
  }
  return -1;
}

// A connection of its own (no subchannel shared with the other clients).
std::unique_ptr<ampd::v1::Trainer::Stub> own_connection(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return ampd::v1::Trainer::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

struct WatchOutcome {
  std::string job_id;
  grpc::Status status;
  std::vector<JobEvent> events;
};

WatchOutcome watch_to_end(ampd::v1::Trainer::Stub& stub, const std::string& id) {
  WatchOutcome out;
  out.job_id = id;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(120));
  ampd::v1::WatchJobRequest req;
  req.set_job_id(id);
  auto reader = stub.WatchJob(&ctx, req);
  JobEvent e;
  while (reader->Read(&e)) out.events.push_back(e);
  out.status = reader->Finish();
  return out;
}

// The watch ended OK with the job's complete history (server_process.h), ending SUCCEEDED.
void expect_succeeded_history(const WatchOutcome& w) {
  EXPECT_TRUE(w.status.ok()) << w.job_id << ": watch ended " << w.status.error_code() << " "
                             << w.status.error_message();
  expect_complete_history(w.events, w.job_id);
  if (!w.events.empty()) {
    const JobEvent& last = w.events.back();
    EXPECT_TRUE(last.has_state_change() && last.state_change().state() == ampd::v1::SUCCEEDED)
        << w.job_id << ": last event " << last.DebugString();
  }
}

TEST(LoadTest, TwoHundredJobsFiftyClientsHundredWatchersAllAccountedForWithBoundedMemory) {
  const auto test_start = Clock::now();
  char tmpl[] = "/tmp/ampd-load-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const fs::path root = tmpl;
  std::string error;
  auto server = ServerProcess::start((root / "state").string(),
                                     {"--max-queued-jobs", std::to_string(kMaxQueuedJobs)}, &error);
  ASSERT_NE(server, nullptr) << error;
  const pid_t pid = server->pid();
  const int64_t idle_rss = proc_status_bytes(pid, "VmRSS");
  ASSERT_GT(idle_rss, 0);

  // Memory sampler: VmRSS every 50 ms while the load runs.
  std::atomic<bool> sampling{true};
  std::atomic<int64_t> max_rss{idle_rss};
  std::thread sampler([&] {
    while (sampling.load()) {
      const int64_t rss = proc_status_bytes(pid, "VmRSS");
      if (rss > max_rss.load()) max_rss.store(rss);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });

  // Accepted ids, published for the watchers as they arrive.
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> accepted;
  bool submitting_done = false;
  std::atomic<int> refused{0};
  std::vector<std::string> unexpected;  // any other outcome, described

  std::vector<WatchOutcome> watched(kWatchers);
  std::vector<std::thread> watchers;
  for (int w = 0; w < kWatchers; ++w) {
    watchers.emplace_back([&, w] {
      std::string id;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return static_cast<int>(accepted.size()) > w || submitting_done; });
        if (accepted.empty()) return;
        id = accepted[static_cast<size_t>(w) % accepted.size()];
      }
      auto stub = own_connection(server->address());
      watched[w] = watch_to_end(*stub, id);
    });
  }

  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto stub = own_connection(server->address());
      for (int k = 0; k < kJobsPerClient; ++k) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
        // 50 channels connecting at once on a loaded 2-core machine: a first connect
        // attempt can fail (seen once in ~20 runs: "failed to connect to all addresses").
        // Like any client (ampctl reconnects too), wait for the channel instead of failing
        // fast; what this test counts is the server's answer to every submission.
        ctx.set_wait_for_ready(true);
        ampd::v1::SubmitJobRequest req;
        *req.mutable_spec() = tiny_spec(c * kJobsPerClient + k);
        Job job;
        const grpc::Status s = stub->SubmitJob(&ctx, req, &job);
        std::lock_guard<std::mutex> lock(mu);
        if (s.ok()) {
          accepted.push_back(job.id());
          cv.notify_all();
        } else if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
                   s.error_message().find("--max-queued-jobs") != std::string::npos) {
          ++refused;
        } else {
          unexpected.push_back("SubmitJob: " + std::to_string(s.error_code()) + " " +
                               s.error_message());
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  {
    std::lock_guard<std::mutex> lock(mu);
    submitting_done = true;
  }
  cv.notify_all();
  for (auto& t : watchers) t.join();

  const int n_accepted = static_cast<int>(accepted.size());
  std::printf("load: %d accepted, %d refused (--max-queued-jobs %d)\n", n_accepted, refused.load(),
              kMaxQueuedJobs);
  EXPECT_TRUE(unexpected.empty()) << ::testing::PrintToString(unexpected);
  EXPECT_EQ(n_accepted + refused.load(), kClients * kJobsPerClient);
  ASSERT_GT(n_accepted, 0);
  // A refusal means the queue held kMaxQueuedJobs behind a running job.
  if (refused.load() > 0) {
    EXPECT_GT(n_accepted, kMaxQueuedJobs);
  }
  const std::set<std::string> unique(accepted.begin(), accepted.end());
  EXPECT_EQ(unique.size(), accepted.size()) << "duplicate job ids";

  // Every watcher: a complete, gap-free history ending in the one final event.
  int watched_count = 0;
  for (const WatchOutcome& w : watched) {
    if (w.job_id.empty()) continue;
    ++watched_count;
    expect_succeeded_history(w);
  }
  EXPECT_EQ(watched_count, kWatchers);

  // Every accepted job, replayed from the store: terminal exactly once.
  auto stub = own_connection(server->address());
  for (const std::string& id : accepted) expect_succeeded_history(watch_to_end(*stub, id));

  // ListJobs (paged): each accepted id once, SUCCEEDED, and nothing else.
  std::map<std::string, int> listed;
  std::string token;
  int pages = 0;
  do {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(20));
    ampd::v1::ListJobsRequest req;
    req.set_page_size(37);
    req.set_page_token(token);
    ampd::v1::ListJobsResponse resp;
    const grpc::Status s = stub->ListJobs(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    for (const Job& j : resp.jobs()) {
      ++listed[j.id()];
      EXPECT_EQ(j.state(), ampd::v1::SUCCEEDED) << j.id();
    }
    token = resp.next_page_token();
    ASSERT_LT(++pages, 100);
  } while (!token.empty());
  EXPECT_EQ(listed.size(), unique.size());
  for (const auto& [id, count] : listed) {
    EXPECT_EQ(count, 1) << id << " listed " << count << " times";
    EXPECT_TRUE(unique.count(id)) << id << " was listed but never accepted";
  }

  sampling.store(false);
  sampler.join();
  const int64_t hwm = proc_status_bytes(pid, "VmHWM");
  const int64_t rss_after = proc_status_bytes(pid, "VmRSS");
  const double elapsed = std::chrono::duration<double>(Clock::now() - test_start).count();
  std::printf(
      "load: server RSS idle %.1f MiB, peak sampled %.1f MiB, VmHWM %.1f MiB, after %.1f MiB; "
      "%d watchers; %.1f s\n",
      idle_rss / 1048576.0, max_rss.load() / 1048576.0, hwm / 1048576.0, rss_after / 1048576.0,
      watched_count, elapsed);
  EXPECT_GT(hwm, 0);
  EXPECT_LT(hwm, kMaxServerRssBytes);
  EXPECT_LT(max_rss.load(), kMaxServerRssBytes);
  EXPECT_LT(rss_after, kMaxServerRssBytes);
  EXPECT_LT(std::max(hwm, max_rss.load()) - idle_rss, kMaxServerGrowthBytes);

  if (HasFailure()) std::cerr << "---- server log\n" << server->log();
  EXPECT_EQ(server->stop(SIGTERM), 0);
  const double total = std::chrono::duration<double>(Clock::now() - test_start).count();
  std::printf("load: %.1f s in all, with the server's start and drain\n", total);
  EXPECT_LT(total, 90.0);
  std::error_code ec;
  fs::remove_all(root, ec);
}

}  // namespace
}  // namespace ampd::testing
