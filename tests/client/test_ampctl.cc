// ampctl's pieces that need no server: how a gRPC status becomes a message and an exit
// status, tables, sizes, ages, states, the JSON of a job, and job-file parsing errors.
#include <gtest/gtest.h>

#include <sstream>
#include <string>

#include "client/ampctl/connection.h"
#include "client/ampctl/output.h"
#include "proto/job_spec_io.h"

namespace ampd::ampctl {
namespace {

constexpr char kServer[] = "127.0.0.1:50051";

Failure describe(grpc::StatusCode code, const std::string& message) {
  return describe_failure(grpc::Status(code, message), "get job j-1", kServer, 30);
}

TEST(DescribeFailure, RefusedConnectionSaysWhatToCheck) {
  Failure f = describe(grpc::StatusCode::UNAVAILABLE,
                       "failed to connect to all addresses; last error: UNKNOWN: "
                       "ipv4:127.0.0.1:50051: Failed to connect to remote host: Connection "
                       "refused");
  EXPECT_EQ(f.exit_code, kExitUnreachable);
  EXPECT_EQ(f.message,
            "cannot reach ampd at 127.0.0.1:50051: connection refused — is `ampd serve` "
            "running? set --server or AMPD_SERVER");
}

TEST(DescribeFailure, UnknownHost) {
  Failure f = describe(grpc::StatusCode::UNAVAILABLE,
                       "DNS resolution failed for nohost.invalid:1: C-ares status is not "
                       "ARES_SUCCESS qtype=A name=nohost.invalid is_balancer=0: Domain name "
                       "not found");
  EXPECT_EQ(f.exit_code, kExitUnreachable);
  EXPECT_NE(f.message.find("cannot resolve the host name — check the host name"), std::string::npos)
      << f.message;
}

TEST(DescribeFailure, DrainingServerIsNotATransportFailure) {
  grpc::Status s(grpc::StatusCode::UNAVAILABLE, "server is shutting down");
  EXPECT_FALSE(is_transport_failure(s));
  EXPECT_EQ(short_reason(s), "server is shutting down");
  Failure f = describe(grpc::StatusCode::UNAVAILABLE, "server is shutting down");
  EXPECT_EQ(f.exit_code, kExitUnreachable);
  EXPECT_NE(f.message.find("is unavailable: server is shutting down"), std::string::npos);
}

TEST(DescribeFailure, ExitCodesFollowTheHelpTable) {
  EXPECT_EQ(
      describe(grpc::StatusCode::INVALID_ARGUMENT, "optimizer.adamw.lr: must be > 0").exit_code,
      kExitUsage);
  EXPECT_EQ(describe(grpc::StatusCode::NOT_FOUND, "job j-1 not found").exit_code, kExitNotFound);
  EXPECT_EQ(describe(grpc::StatusCode::FAILED_PRECONDITION, "ended").exit_code, kExitConflict);
  EXPECT_EQ(describe(grpc::StatusCode::ALREADY_EXISTS, "taken").exit_code, kExitConflict);
  EXPECT_EQ(describe(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full").exit_code, kExitExhausted);
  EXPECT_EQ(describe(grpc::StatusCode::UNAUTHENTICATED, "no token").exit_code,
            kExitUnauthenticated);
  EXPECT_EQ(describe(grpc::StatusCode::DEADLINE_EXCEEDED, "").exit_code, kExitUnreachable);
  EXPECT_EQ(describe(grpc::StatusCode::INTERNAL, "boom").exit_code, kExitError);
  // The server's message is kept verbatim after what was attempted.
  EXPECT_EQ(describe(grpc::StatusCode::INVALID_ARGUMENT, "optimizer.adamw.lr: must be > 0").message,
            "get job j-1: optimizer.adamw.lr: must be > 0");
  EXPECT_NE(describe(grpc::StatusCode::UNAUTHENTICATED, "x").message.find("AMPD_TOKEN"),
            std::string::npos);
}

TEST(Output, TableAlignsColumnsWithoutTrailingBlanks) {
  Table t({"ID", "STATE", "NAME"});
  t.add_row({"j-1", "RUNNING", "a"});
  t.add_row({"j-22", "QUEUED", "bé"});  // é is one column
  std::ostringstream out;
  t.print(out);
  EXPECT_EQ(out.str(),
            "ID    STATE    NAME\n"
            "j-1   RUNNING  a\n"
            "j-22  QUEUED   bé\n");
}

TEST(Output, AgesAndSizes) {
  EXPECT_EQ(format_age(0), "0s");
  EXPECT_EQ(format_age(119), "119s");
  EXPECT_EQ(format_age(120), "2m");
  EXPECT_EQ(format_age(3 * 3600), "3h");
  EXPECT_EQ(format_age(5 * 86400), "5d");
  EXPECT_EQ(format_age(-1), "-");
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(int64_t{300} << 20), "300 MiB");
}

TEST(Output, StatesFromWhatUsersType) {
  EXPECT_EQ(parse_state("running"), ampd::v1::RUNNING);
  EXPECT_EQ(parse_state("Succeeded"), ampd::v1::SUCCEEDED);
  EXPECT_EQ(parse_state("canceled"), ampd::v1::CANCELLED);
  EXPECT_FALSE(parse_state("JOB_STATE_UNSPECIFIED"));
  EXPECT_FALSE(parse_state("done"));
  EXPECT_TRUE(is_terminal(ampd::v1::FAILED));
  EXPECT_FALSE(is_terminal(ampd::v1::QUEUED));
}

TEST(Output, JobJsonAlwaysHasTheSummaryFields) {
  ampd::v1::Job job;  // a queued job: nothing reported yet
  job.set_id("j-1");
  job.set_state(ampd::v1::QUEUED);
  const std::string json = job_json(job);
  for (const char* key :
       {"\"id\":\"j-1\"", "\"state\":\"QUEUED\"", "\"step\":", "\"metrics\":{", "\"loss_scale\":",
        "\"overflow_skipped_steps\":", "\"checkpoint\":", "\"failure_reason\":"}) {
    EXPECT_NE(json.find(key), std::string::npos) << key << " in " << json;
  }
  EXPECT_EQ(json_array({}), "[]");
  EXPECT_EQ(json_array({"1", "2"}), "[\n  1,\n  2\n]");
}

TEST(Output, JobRow) {
  ampd::v1::Job job;
  job.set_id("j-1");
  job.set_state(ampd::v1::RUNNING);
  job.mutable_spec()->set_name("digits");
  job.set_precision("fp16");
  job.set_step(20);
  job.set_total_steps(690);
  job.set_loss_scale(65536);
  job.set_overflow_skipped_steps(3);
  std::vector<std::string> row = job_row(job);
  ASSERT_EQ(row.size(), job_table_header().size());
  EXPECT_EQ(row[0], "j-1");
  EXPECT_EQ(row[1], "RUNNING");
  EXPECT_EQ(row[3], "fp16");
  EXPECT_EQ(row[4], "20/690");
  EXPECT_EQ(row[5], "-");  // not evaluated yet
  EXPECT_EQ(row[6], "65536");
  EXPECT_EQ(row[7], "3");
  EXPECT_EQ(row[8], "-");  // no creation time
  job.mutable_metrics()->set_val_accuracy(0.96);
  job.mutable_metrics()->set_val_loss(0.1);
  EXPECT_EQ(job_row(job)[5], "0.9600");
}

TEST(SpecIo, ParsesYamlAndNamesTheLineOfASyntaxError) {
  spec_io::ParseResult ok = spec_io::parse_job_spec_text(
      "name: 2024\nmodel:\n  layers:\n    - relu:\n    - linear: {out_features: 3}\n");
  ASSERT_TRUE(ok.ok()) << ok.message;
  EXPECT_EQ(ok.spec.name(), "2024");
  EXPECT_TRUE(ok.spec.model().layers(0).has_relu());
  spec_io::ParseResult bad = spec_io::parse_job_spec_text("name: x\nmodel: [\n");
  EXPECT_EQ(bad.error, spec_io::ErrorKind::kInvalid);
  EXPECT_EQ(bad.message.rfind("job spec: YAML syntax error at line", 0), 0u) << bad.message;
  spec_io::ParseResult missing = spec_io::read_job_spec_file("/nonexistent/job.yaml");
  EXPECT_EQ(missing.error, spec_io::ErrorKind::kNotFound);
  EXPECT_EQ(missing.message, "/nonexistent/job.yaml: no such file");
}

}  // namespace
}  // namespace ampd::ampctl
