// Crash recovery of a real `ampd serve` (CPU backend, one thread): SIGKILL at a random
// step, then a restart on the same state dir, finishes every job from its last good
// checkpoint with final weights bit-identical to an uninterrupted run; several jobs
// (one running, others queued) all finish once; a corrupt or truncated newest checkpoint
// is passed over (the job's RUNNING event says which and why) for the previous one, and
// with none usable the job starts over from step 0.
//
// The kill step is random: the seed is printed, and AMPD_TEST_SEED=<n> replays it.
#include <signal.h>

#include <algorithm>
#include <cstdlib>
#include <random>
#include <set>

#include "fault_test_util.h"

namespace ampd::testing::faults {
namespace {

constexpr int64_t kSteps = 1000;
constexpr int64_t kEvery = 25;

uint64_t test_seed() {
  if (const char* s = std::getenv("AMPD_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}

// The step number in "resumed from .../step-<n>.safetensors ...".
int64_t resumed_step(const std::string& reason) {
  const std::string head = "resumed from ";
  if (reason.rfind(head, 0) != 0) return -1;
  const auto pos = reason.find("/step-");
  if (pos == std::string::npos) return -1;
  return std::stoll(reason.substr(pos + 6));
}

class CrashRecovery : public FaultTest {
 protected:
  // Runs `spec` uninterrupted on the current server; returns its final checkpoint.
  std::string reference(const JobSpec& spec) {
    Job job;
    EXPECT_TRUE(submit(stub(), spec, &job).ok());
    const WatchResult w = watch_to_end(stub(), job.id());
    EXPECT_TRUE(w.status.ok()) << w.status.error_message();
    EXPECT_TRUE(!w.events.empty() && w.events.back().state_change().state() == ampd::v1::SUCCEEDED);
    std::string bytes;
    EXPECT_TRUE(download(stub(), job.id(), &bytes).ok());
    return bytes;
  }

  // The job's final checkpoint equals the reference, byte for byte: every tensor (FP32
  // masters, optimizer state) and the whole file (metadata too: step, scaler, spec).
  void expect_same_weights(const std::string& id, const std::string& reference) {
    std::string bytes;
    int64_t step = -1;
    AMPD_ASSERT_GRPC_OK(download(stub(), id, &bytes, &step));
    EXPECT_EQ(step, kSteps);
    const auto got = tensors_of(bytes, root_ / "got.safetensors");
    const auto want = tensors_of(reference, root_ / "want.safetensors");
    ASSERT_EQ(got.size(), want.size());
    ASSERT_FALSE(got.empty());
    for (const auto& [name, data] : want) {
      ASSERT_TRUE(got.count(name)) << name;
      EXPECT_TRUE(got.at(name) == data) << name << " differs from the uninterrupted run";
    }
    EXPECT_TRUE(bytes == reference) << "the checkpoint files differ";
  }
};

TEST_F(CrashRecovery, SigkillAtARandomStepResumesBitIdenticalToAnUninterruptedRun) {
  const uint64_t seed = test_seed();
  std::mt19937_64 rng(seed);
  const int64_t kill_after = std::uniform_int_distribution<int64_t>(30, 300)(rng);
  std::cout << "[ seed ] AMPD_TEST_SEED=" << seed << " (SIGKILL after step " << kill_after << ")"
            << std::endl;
  RecordProperty("seed", std::to_string(seed));
  RecordProperty("kill_after_step", static_cast<int>(kill_after));

  ASSERT_NE(start_server(), nullptr);
  const JobSpec spec = digits_job(kSteps, kEvery);
  Job job;
  AMPD_ASSERT_GRPC_OK(submit(stub(), spec, &job));
  ASSERT_TRUE(wait_for_step(stub(), job.id(), kill_after));
  EXPECT_EQ(server().stop(SIGKILL), 128 + SIGKILL);

  ASSERT_NE(start_server(), nullptr);
  const WatchResult w = watch_to_end(stub(), job.id());
  AMPD_ASSERT_GRPC_OK(w.status);
  expect_complete_history(w.events, job.id());
  EXPECT_EQ(w.events.back().state_change().state(), ampd::v1::SUCCEEDED);
  const auto reasons = running_reasons(w.events);
  ASSERT_EQ(reasons.size(), 2u) << "killed after the job ended? (step " << kill_after << ")";
  // The newest checkpoint at or before the kill: the one of step kill_after rounded down
  // (or the one before it, when the kill came while that one was being written).
  const int64_t resumed =
      reasons[1].find("started from step 0") == 0 ? 0 : resumed_step(reasons[1]);
  EXPECT_GE(resumed, (kill_after - 1) / kEvery * kEvery - kEvery) << reasons[1];
  EXPECT_EQ(resumed % kEvery, 0) << reasons[1];
  RecordProperty("resumed_from_step", static_cast<int>(resumed));
  Job done;
  AMPD_ASSERT_GRPC_OK(get_job(stub(), job.id(), &done));
  EXPECT_EQ(done.state(), ampd::v1::SUCCEEDED);
  EXPECT_EQ(done.step(), kSteps);

  expect_same_weights(job.id(), reference(spec));
}

TEST_F(CrashRecovery, SigkillWithQueuedJobsFinishesEveryJobOnce) {
  ASSERT_NE(start_server(), nullptr);
  std::vector<JobSpec> specs;
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    specs.push_back(digits_job(kSteps, kEvery, 100 + i));
    Job job;
    AMPD_ASSERT_GRPC_OK(submit(stub(), specs.back(), &job, "crash-" + std::to_string(i)));
    ids.push_back(job.id());
  }
  // Job 0 done, job 1 running, jobs 2 and 3 queued: then SIGKILL.
  ASSERT_TRUE(wait_for_step(stub(), ids[1], 60));
  {
    Job j;
    AMPD_ASSERT_GRPC_OK(get_job(stub(), ids[2], &j));
    EXPECT_EQ(j.state(), ampd::v1::QUEUED);
  }
  EXPECT_EQ(server().stop(SIGKILL), 128 + SIGKILL);

  ASSERT_NE(start_server(), nullptr);
  for (size_t i = 0; i < ids.size(); ++i) {
    SCOPED_TRACE(ids[i]);
    const WatchResult w = watch_to_end(stub(), ids[i]);
    AMPD_ASSERT_GRPC_OK(w.status);
    expect_complete_history(w.events, ids[i]);
    EXPECT_EQ(w.events.back().state_change().state(), ampd::v1::SUCCEEDED);
    // Only the running job ran twice.
    EXPECT_EQ(running_reasons(w.events).size(), i == 1 ? 2u : 1u);
  }
  // Nothing lost, nothing duplicated: exactly these jobs, and a retried submission is
  // still the same job.
  ampd::v1::ListJobsResponse all;
  {
    grpc::ClientContext ctx;
    set_deadline(&ctx);
    ampd::v1::ListJobsRequest req;
    req.set_page_size(100);
    AMPD_ASSERT_GRPC_OK(stub().ListJobs(&ctx, req, &all));
  }
  std::vector<std::string> listed;
  for (const auto& j : all.jobs()) {
    listed.push_back(j.id());
    EXPECT_EQ(j.state(), ampd::v1::SUCCEEDED) << j.id();
    EXPECT_EQ(j.step(), kSteps) << j.id();
  }
  EXPECT_EQ(listed, ids);
  for (int i = 0; i < 4; ++i) {
    Job again;
    AMPD_ASSERT_GRPC_OK(
        submit(stub(), specs[static_cast<size_t>(i)], &again, "crash-" + std::to_string(i)));
    EXPECT_EQ(again.id(), ids[static_cast<size_t>(i)]);
  }
  // The interrupted job's result is the uninterrupted one.
  expect_same_weights(ids[1], reference(specs[1]));
}

// ---- corrupt checkpoints on resume --------------------------------------------------------

enum class Damage { kFlipByte, kTruncate, kBothNewest };

void flip_byte(const fs::path& p) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(0, std::ios::end);
  const auto size = static_cast<std::streamoff>(f.tellg());
  f.seekg(size - 100);
  const char c = static_cast<char>(f.get());
  f.seekp(size - 100);
  f.put(static_cast<char>(c ^ 0x10));
}

void truncate(const fs::path& p) {
  fs::resize_file(p, fs::file_size(p) / 2);  // what a crash without fsync can leave
}

TEST_F(CrashRecovery, ACorruptNewestCheckpointIsPassedOverForThePreviousOne) {
  const JobSpec spec = digits_job(kSteps, kEvery);
  std::string reference_checkpoint;
  for (Damage damage : {Damage::kFlipByte, Damage::kTruncate, Damage::kBothNewest}) {
    const char* what = damage == Damage::kFlipByte   ? "flipped byte"
                       : damage == Damage::kTruncate ? "truncated"
                                                     : "both corrupt";
    SCOPED_TRACE(what);
    servers_.clear();
    state_dir_ =
        (root_ / (std::string("state-") + std::to_string(static_cast<int>(damage)))).string();
    ASSERT_NE(start_server(), nullptr);
    Job job;
    AMPD_ASSERT_GRPC_OK(submit(stub(), spec, &job));
    ASSERT_TRUE(wait_for_step(stub(), job.id(), 4 * kEvery + 5));
    EXPECT_EQ(server().stop(SIGKILL), 128 + SIGKILL);

    // The two newest checkpoints (the trainer keeps two).
    std::vector<std::pair<int64_t, fs::path>> found;
    for (const auto& e : fs::directory_iterator(job_dir(job.id()))) {
      const std::string name = e.path().filename().string();
      if (name.rfind("step-", 0) == 0 && e.path().extension() == ".safetensors") {
        found.emplace_back(std::stoll(name.substr(5)), e.path());
      }
    }
    std::sort(found.rbegin(), found.rend());
    // Two (a third only when the kill came between a write and the pruning after it).
    ASSERT_GE(found.size(), 2u);
    const fs::path newest = found[0].second, previous = found[1].second;
    if (damage == Damage::kTruncate) {
      truncate(newest);
    } else {
      flip_byte(newest);
    }
    if (damage == Damage::kBothNewest) {
      for (size_t i = 1; i < found.size(); ++i) truncate(found[i].second);
    }
    // A write the kill interrupted: removed, never read.
    const fs::path partial = job_dir(job.id()) / "step-999.safetensors.tmp-1-0123456789abcdef";
    std::ofstream(partial) << "half a checkpoint";

    ASSERT_NE(start_server(), nullptr);
    const WatchResult w = watch_to_end(stub(), job.id());
    AMPD_ASSERT_GRPC_OK(w.status);
    expect_complete_history(w.events, job.id());
    EXPECT_EQ(w.events.back().state_change().state(), ampd::v1::SUCCEEDED);
    const auto reasons = running_reasons(w.events);
    ASSERT_EQ(reasons.size(), 2u);
    const std::string& why = reasons[1];
    const std::string newest_note =
        "skipped " + newest.string() + ": checkpoint " + newest.string() + " is corrupt: ";
    EXPECT_NE(why.find(newest_note), std::string::npos) << why;
    if (damage == Damage::kBothNewest) {
      // Nothing usable: the job starts again from step 0 and says why.
      EXPECT_EQ(why.rfind("started from step 0 (skipped " + newest.string(), 0), 0u) << why;
      EXPECT_NE(why.find("; skipped " + previous.string() + ": checkpoint " + previous.string() +
                         " is corrupt: "),
                std::string::npos)
          << why;
    } else {
      EXPECT_EQ(why.rfind("resumed from " + previous.string() + " (skipped ", 0), 0u) << why;
      EXPECT_NE(why.find(damage == Damage::kFlipByte ? "checksum mismatch" : "truncated"),
                std::string::npos)
          << why;
    }
    EXPECT_FALSE(fs::exists(partial));
    if (reference_checkpoint.empty()) reference_checkpoint = reference(spec);
    expect_same_weights(job.id(), reference_checkpoint);
  }
}

}  // namespace
}  // namespace ampd::testing::faults
