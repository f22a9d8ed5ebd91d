// Checkpoint faults in the engine: writes that fail (disk full, an unwritable directory,
// fsync or rename errors; injected through TrainerOptions::write_faults) never touch the previous
// checkpoint, never leave a partial file, and never cost the training (a periodic one is
// reported and retried at the next interval; only a failed final one fails the job); and
// no corrupt or truncated checkpoint is ever read as good.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/job_spec.h"
#include "engine/safetensors.h"
#include "engine/trainer.h"
#include "engine/write_faults.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/engine/engine_test_util.h"

namespace ampd::engine {
namespace {

namespace fs = std::filesystem;

std::unique_ptr<Backend> cpu() {
  return test::cpu_backend(2);
}

using test::temp_dir;

ampd::v1::JobSpec spec() {
  auto s = parse_job_spec(R"(
name: ckfaults
precision: fp16
model:
  layers:
    - linear: {out_features: 24}
    - batch_norm: {}
    - relu: {}
    - linear: {out_features: 10}
data: {digits: {}, batch_size: 32, standardize: true}
optimizer: {adamw: {lr: 0.003}}
training: {max_steps: 40, report_every: 5, checkpoint_every: 10, seed: 5}
)",
                          "yaml");
  EXPECT_TRUE(s.ok()) << s.status().to_string();
  return s.value();
}

std::map<std::string, std::vector<uint8_t>> tensors_of(const std::string& path) {
  auto f = read_safetensors(path);
  EXPECT_TRUE(f.ok()) << f.status().to_string();
  std::map<std::string, std::vector<uint8_t>> out;
  if (f.ok()) {
    for (auto& t : f->tensors) out[t.name] = t.data;
  }
  return out;
}

std::set<std::string> files_in(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

struct CkRun {
  ampd::v1::Job job;
  std::vector<ampd::v1::JobEvent> events;
};

// The faults for one run; failing_step: the checkpoint (by its step) that fails.
class FaultScope : public WriteFaults {
 public:
  FaultScope(int64_t failing_step, StWriteFault fault)
      : suffix_("/step-" + std::to_string(failing_step) + ".safetensors"), fault_(fault) {}
  StWriteFault next(const std::string& path) override {
    const bool hit = path.size() >= suffix_.size() &&
                     path.compare(path.size() - suffix_.size(), suffix_.size(), suffix_) == 0;
    return hit ? fault_ : StWriteFault{};
  }

 private:
  const std::string suffix_;
  const StWriteFault fault_;
};

CkRun run(Backend& be, const fs::path& dir,
          const std::function<void(const ampd::v1::JobEvent&)>& on_event = nullptr,
          WriteFaults* faults = nullptr) {
  CkRun r;
  TrainerOptions o;
  o.checkpoint_dir = dir.string();
  o.write_faults = faults;
  o.on_event = [&](const ampd::v1::JobEvent& e) {
    r.events.push_back(e);
    if (on_event) on_event(e);
  };
  auto t = Trainer::create(be, spec(), std::move(o));
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  if (t.ok()) r.job = (*t)->run();
  return r;
}

struct StageCase {
  const char* name;
  StWriteFault fault;
};
const StageCase kStages[] = {
    {"disk full", {ENOSPC, StWriteStage::kWrite}},
    {"unwritable directory", {EROFS, StWriteStage::kCreate}},
    {"fsync error", {EIO, StWriteStage::kFsync}},
    {"rename error", {EXDEV, StWriteStage::kRename}},
};

TEST(CheckpointFaults, AFailedPeriodicCheckpointIsReportedAndTrainingGoesOnUnchanged) {
  auto be = cpu();
  const fs::path ref_dir = temp_dir("ref");
  const CkRun ref = run(*be, ref_dir);
  ASSERT_EQ(ref.job.state(), ampd::v1::SUCCEEDED) << ref.job.failure_reason();

  for (const StageCase& c : kStages) {
    SCOPED_TRACE(c.name);
    const fs::path dir = temp_dir("periodic");
    FaultScope fault(20, c.fault);
    bool checked_previous = false;
    const CkRun r = run(
        *be, dir,
        [&](const ampd::v1::JobEvent& e) {
          if (!e.has_checkpoint() || e.checkpoint().error().empty()) return;
          // At the moment of the failure: the previous checkpoint is whole and verifies, and
          // nothing half-written is left next to it.
          EXPECT_EQ(files_in(dir), std::set<std::string>{"step-10.safetensors"});
          EXPECT_TRUE(read_checkpoint((dir / "step-10.safetensors").string()).ok());
          checked_previous = true;
        },
        &fault);
    ASSERT_EQ(r.job.state(), ampd::v1::SUCCEEDED) << r.job.failure_reason();
    EXPECT_TRUE(checked_previous);
    std::vector<std::string> seen;
    for (const auto& e : r.events) {
      if (!e.has_checkpoint()) continue;
      const auto& ck = e.checkpoint();
      seen.push_back(std::to_string(ck.step()) + (ck.error().empty() ? "" : " failed"));
      if (ck.error().empty()) continue;
      EXPECT_EQ(ck.path(), (dir / "step-20.safetensors").string());
      EXPECT_NE(ck.error().find(ck.path()), std::string::npos) << ck.error();
      EXPECT_NE(ck.error().find(std::strerror(c.fault.err)), std::string::npos) << ck.error();
    }
    EXPECT_EQ(seen, (std::vector<std::string>{"10", "20 failed", "30", "40"}));
    // The next interval wrote again; the newest two remain; no temporary file anywhere.
    EXPECT_EQ(files_in(dir), (std::set<std::string>{"step-30.safetensors", "step-40.safetensors"}));
    EXPECT_EQ(r.job.checkpoint(), (dir / "step-40.safetensors").string());
    // A failed write changes nothing in the training: the same weights, bit for bit.
    EXPECT_TRUE(tensors_of(r.job.checkpoint()) == tensors_of(ref.job.checkpoint()));
    fs::remove_all(dir);
  }
  fs::remove_all(ref_dir);
}

TEST(CheckpointFaults, AFailedFinalCheckpointFailsTheJobAndKeepsThePreviousOne) {
  auto be = cpu();
  for (const StageCase& c : kStages) {
    SCOPED_TRACE(c.name);
    const fs::path dir = temp_dir("final");
    FaultScope fault(40, c.fault);
    const CkRun r = run(*be, dir, nullptr, &fault);
    ASSERT_EQ(r.job.state(), ampd::v1::FAILED);
    const std::string& why = r.job.failure_reason();
    const std::string path = (dir / "step-40.safetensors").string();
    const std::string previous = (dir / "step-30.safetensors").string();
    EXPECT_EQ(
        why.rfind("step 40: the final checkpoint could not be written: write checkpoint " + path,
                  0),
        0u)
        << why;
    EXPECT_NE(why.find(std::strerror(c.fault.err)), std::string::npos) << why;
    EXPECT_NE(why.find("(the last one written is " + previous + ")"), std::string::npos) << why;
    EXPECT_EQ(r.job.checkpoint(), previous);
    EXPECT_EQ(files_in(dir), (std::set<std::string>{"step-20.safetensors", "step-30.safetensors"}));
    auto ck = read_checkpoint(previous);
    ASSERT_TRUE(ck.ok()) << ck.status().to_string();
    EXPECT_EQ(ck->meta.step, 30);
    fs::remove_all(dir);
  }
}

TEST(CheckpointFaults, TheEnvironmentScheduleFailsExactlyTheNamedWrites) {
  // `ampd serve` under a test (built with AMPD_FAULT_INJECTION) reads
  // AMPD_FAULT_WRITE_ENOSPC / _EROFS once, into a ScheduledWriteFaults that counts the
  // writes it is given from 1.
  const fs::path dir = temp_dir("schedule");
  StFile f;
  f.tensors.push_back(StTensor{"x", DType::kF32, {2}, std::vector<uint8_t>(8, 1)});
  const std::string path = (dir / "a.safetensors").string();
  std::unique_ptr<ScheduledWriteFaults> faults;
  auto write = [&] { return write_safetensors(path, f, faults.get()); };
  ASSERT_TRUE(write().ok());
  const int64_t next = 1;  // the first write the schedule sees
  ::setenv("AMPD_FAULT_WRITE_ENOSPC",
           ("nth:" + std::to_string(next + 1) + "," + std::to_string(next + 3)).c_str(), 1);
  ::setenv("AMPD_FAULT_WRITE_EROFS", ("from:" + std::to_string(next + 5)).c_str(), 1);
  faults = ScheduledWriteFaults::from_environment();
  ASSERT_NE(faults, nullptr);
  std::vector<std::string> outcomes;
  for (int i = 0; i < 7; ++i) {
    const Status s = write();
    outcomes.push_back(s.ok()                                        ? "ok"
                       : s.code() == StatusCode::kResourceExhausted  ? "enospc"
                       : s.code() == StatusCode::kFailedPrecondition ? "erofs"
                                                                     : s.to_string());
  }
  ::unsetenv("AMPD_FAULT_WRITE_ENOSPC");
  ::unsetenv("AMPD_FAULT_WRITE_EROFS");
  EXPECT_EQ(outcomes,
            (std::vector<std::string>{"ok", "enospc", "ok", "enospc", "ok", "erofs", "erofs"}));
  EXPECT_EQ(files_in(dir), std::set<std::string>{"a.safetensors"});
  EXPECT_TRUE(read_safetensors(path).ok());
  fs::remove_all(dir);
}

// ---- corruption ------------------------------------------------------------------------

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Tensors and metadata, minus the checksum entries: what a checkpoint means.
std::string meaning(const StFile& f) {
  std::string out;
  for (const auto& [k, v] : f.metadata) {
    if (k != kStChecksumKey && k != kStHeaderChecksumKey) out += k + "=" + v + "\n";
  }
  for (const auto& t : f.tensors) {
    out += t.name + ":" + std::to_string(static_cast<int>(t.dtype)) + ":";
    for (auto d : t.shape) out += std::to_string(d) + ",";
    out.append(reinterpret_cast<const char*>(t.data.data()), t.data.size());
  }
  return out;
}

// A small checkpoint (the header is most of it, the part a buffer checksum alone would
// miss), every byte flipped in turn with two masks.
TEST(CheckpointFaults, EverySingleByteFlipOfACheckpointIsCaught) {
  auto be = cpu();
  const fs::path dir = temp_dir("flip");
  auto small = parse_job_spec(
      "name: flip\nprecision: fp32\n"
      "model: {layers: [{linear: {out_features: 3}}]}\n"
      "data: {synthetic: {kind: blobs, samples: 32, features: 4, classes: 3}, batch_size: 8}\n"
      "optimizer: {sgd: {lr: 0.1, momentum: 0.9}}\n"
      "training: {max_steps: 3}\n",
      "yaml");
  ASSERT_TRUE(small.ok()) << small.status().to_string();
  TrainerOptions o;
  o.checkpoint_dir = dir.string();
  auto t = Trainer::create(*be, *small, std::move(o));
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  const ampd::v1::Job job = (*t)->run();
  ASSERT_EQ(job.state(), ampd::v1::SUCCEEDED) << job.failure_reason();
  const std::string good = slurp(job.checkpoint());
  auto original = read_safetensors(job.checkpoint());
  ASSERT_TRUE(original.ok());
  const std::string want = meaning(*original);
  const std::string path = (dir / "flipped.safetensors").string();
  spit(path, good);
  const int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  auto put = [&](size_t at, char c) { ASSERT_EQ(::pwrite(fd, &c, 1, static_cast<off_t>(at)), 1); };
  int64_t caught = 0, harmless = 0;
  for (unsigned char mask : {0x01, 0x80}) {
    for (size_t i = 0; i < good.size(); ++i) {
      put(i, static_cast<char>(good[i] ^ mask));
      auto ck = read_checkpoint(path);
      put(i, good[i]);
      if (!ck.ok()) {
        ++caught;
        continue;
      }
      // Read as good: then it must mean exactly what the original meant (a flip between
      // two JSON whitespace characters).
      ++harmless;
      ASSERT_EQ(meaning(ck->file), want) << "a flip of byte " << i << " (mask " << int(mask)
                                         << ") went unnoticed and changed the checkpoint";
    }
  }
  ::close(fd);
  RecordProperty("file_bytes", static_cast<int>(good.size()));
  RecordProperty("flips_caught", static_cast<int>(caught));
  RecordProperty("flips_harmless", static_cast<int>(harmless));
  EXPECT_EQ(harmless, 0);  // each mask turns a JSON space into a non-space
  // Truncated anywhere: never read.
  for (size_t len = 0; len < good.size(); ++len) {
    ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(len)), 0);
    auto ck = read_checkpoint(path);
    ASSERT_FALSE(ck.ok()) << "truncated to " << len << " bytes of " << good.size();
    ASSERT_EQ(ck.status().code(), StatusCode::kDataLoss) << ck.status().to_string();
  }
  fs::remove_all(dir);
}

TEST(CheckpointFaults, AFlippedMetadataDigitIsAHeaderChecksumMismatch) {
  // The buffer checksum alone does not cover the metadata: a changed step or learning
  // rate would resume a different job. The header checksum does.
  auto be = cpu();
  const fs::path dir = temp_dir("meta");
  const CkRun r = run(*be, dir);
  ASSERT_EQ(r.job.state(), ampd::v1::SUCCEEDED);
  std::string bytes = slurp(r.job.checkpoint());
  const size_t at = bytes.find("\"ampd.step\":\"40\"");
  ASSERT_NE(at, std::string::npos);
  bytes[at + std::strlen("\"ampd.step\":\"")] = '9';  // 40 -> 90, still valid JSON
  const std::string path = (dir / "step-90.safetensors").string();
  spit(path, bytes);
  auto ck = read_checkpoint(path);
  ASSERT_FALSE(ck.ok());
  EXPECT_EQ(ck.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(ck.status().message().find("header checksum mismatch"), std::string::npos)
      << ck.status().to_string();
  fs::remove_all(dir);
}

// ---- resume --------------------------------------------------------------------------

TEST(CheckpointFaults, ResumingFromTheFinalCheckpointReportsTheMetrics) {
  // A process killed after the final checkpoint but before the job was marked done
  // resumes with nothing left to train: the summary must still carry the metrics.
  auto be = cpu();
  const fs::path dir = temp_dir("atend");
  const CkRun r = run(*be, dir);
  ASSERT_EQ(r.job.state(), ampd::v1::SUCCEEDED);
  TrainerOptions o;
  o.resume_from = r.job.checkpoint();
  auto t = Trainer::create(*be, spec(), std::move(o));
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  const ampd::v1::Job again = (*t)->run();
  EXPECT_EQ(again.state(), ampd::v1::SUCCEEDED);
  EXPECT_EQ(again.step(), 40);
  EXPECT_EQ(again.metrics().val_accuracy(), r.job.metrics().val_accuracy());
  EXPECT_EQ(again.metrics().val_loss(), r.job.metrics().val_loss());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ampd::engine
