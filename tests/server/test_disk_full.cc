// A full disk and an unwritable state dir under a real `ampd serve`, injected with the
// checkpoint writer's fault schedules (AMPD_FAULT_WRITE_ENOSPC / AMPD_FAULT_WRITE_EROFS:
// the N-th checkpoint write of the process fails; chmod cannot do this for root): a
// failed periodic checkpoint is reported (a checkpoint event naming the path and the
// errno text) and the job trains on; a failed final checkpoint fails the job with the
// reason; the previous checkpoint stays whole; the server keeps serving.
#include "engine/checkpoint.h"
#include "fault_test_util.h"

namespace ampd::testing::faults {
namespace {

constexpr int64_t kSteps = 100;
constexpr int64_t kEvery = 25;  // writes at steps 25, 50, 75, 100

std::vector<ampd::v1::CheckpointEvent> checkpoints(const std::vector<JobEvent>& events) {
  std::vector<ampd::v1::CheckpointEvent> out;
  for (const auto& e : events) {
    if (e.has_checkpoint()) out.push_back(e.checkpoint());
  }
  return out;
}

class DiskFull : public FaultTest {};

TEST_F(DiskFull, CheckpointWritesThatFailAreReportedAndTheServerKeepsServing) {
  // Writes 2 and 4 (job A: step 50, and its final one at 100) find the disk full; write 6
  // (job B: step 50) finds the directory read-only.
  ASSERT_NE(start_server({}, {"AMPD_FAULT_WRITE_ENOSPC=nth:2,4", "AMPD_FAULT_WRITE_EROFS=nth:6"}),
            nullptr);
  Job a;
  AMPD_ASSERT_GRPC_OK(submit(stub(), digits_job(kSteps, kEvery, 1), &a));
  const WatchResult wa = watch_to_end(stub(), a.id());
  AMPD_ASSERT_GRPC_OK(wa.status);
  expect_complete_history(wa.events, a.id());
  const fs::path dir = job_dir(a.id());
  auto path = [&](int64_t step) {
    return (dir / ("step-" + std::to_string(step) + ".safetensors")).string();
  };
  const std::string enospc = std::strerror(ENOSPC);

  // The periodic failure: an event naming the path and the error; training went on and
  // the next interval wrote again.
  const auto cks = checkpoints(wa.events);
  ASSERT_EQ(cks.size(), 4u);
  EXPECT_TRUE(cks[0].error().empty());
  EXPECT_EQ(cks[1].step(), 50);
  EXPECT_EQ(cks[1].path(), path(50));
  EXPECT_EQ(cks[1].error().rfind("write checkpoint " + path(50) + ": write: " + enospc, 0), 0u)
      << cks[1].error();
  EXPECT_TRUE(cks[2].error().empty());
  EXPECT_EQ(cks[2].path(), path(75));
  // The final one failed: the job is FAILED with the reason, naming the path and errno.
  EXPECT_EQ(cks[3].step(), kSteps);
  EXPECT_FALSE(cks[3].error().empty());
  Job failed;
  AMPD_ASSERT_GRPC_OK(get_job(stub(), a.id(), &failed));
  EXPECT_EQ(failed.state(), ampd::v1::FAILED);
  EXPECT_EQ(failed.failure_reason(),
            "step 100: the final checkpoint could not be written: " + cks[3].error() +
                " (the last one written is " + path(75) + ")");
  EXPECT_NE(failed.failure_reason().find(enospc), std::string::npos);
  EXPECT_EQ(failed.step(), kSteps);
  // The previous checkpoint is intact, is the job's checkpoint, and downloads.
  EXPECT_EQ(failed.checkpoint(), path(75));
  auto ck = engine::read_checkpoint(path(75));
  ASSERT_TRUE(ck.ok()) << ck.status().to_string();
  EXPECT_EQ(ck->meta.step, 75);
  std::string bytes;
  int64_t step = 0;
  AMPD_ASSERT_GRPC_OK(download(stub(), a.id(), &bytes, &step));
  EXPECT_EQ(step, 75);
  EXPECT_EQ(static_cast<uintmax_t>(bytes.size()), fs::file_size(path(75)));
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  }

  // Still serving: a second job submits and runs; its one failed periodic checkpoint (an
  // unwritable directory this time) does not stop it.
  EXPECT_TRUE(serving(server()));
  Job b;
  AMPD_ASSERT_GRPC_OK(submit(stub(), digits_job(kSteps, kEvery, 2), &b));
  const WatchResult wb = watch_to_end(stub(), b.id());
  AMPD_ASSERT_GRPC_OK(wb.status);
  expect_complete_history(wb.events, b.id());
  EXPECT_EQ(wb.events.back().state_change().state(), ampd::v1::SUCCEEDED);
  const auto bks = checkpoints(wb.events);
  ASSERT_EQ(bks.size(), 4u);
  EXPECT_NE(bks[1].error().find("create temporary file: " + std::string(std::strerror(EROFS))),
            std::string::npos)
      << bks[1].error();
  Job done;
  AMPD_ASSERT_GRPC_OK(get_job(stub(), b.id(), &done));
  EXPECT_EQ(done.state(), ampd::v1::SUCCEEDED);
  EXPECT_EQ(fs::path(done.checkpoint()).filename(), "step-100.safetensors");
  EXPECT_TRUE(engine::read_checkpoint(done.checkpoint()).ok());
  EXPECT_TRUE(serving(server()));
  // The failures are in the log, with the path.
  EXPECT_NE(server().log().find("checkpoint at step 50 failed: write checkpoint " + path(50)),
            std::string::npos)
      << server().log();
}

}  // namespace
}  // namespace ampd::testing::faults
