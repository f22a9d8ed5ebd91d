// Hostile input through the running service: one real `ampd serve` (CPU backend) takes a
// table of malformed job specs (SubmitJob), data set uploads (UploadDataset) and job ids
// (GetJob, CancelJob, WatchJob, DownloadCheckpoint). Every row states the gRPC status code
// it must get and a substring of the message that names the field at fault; the test
// checks both. Afterwards the server must still be healthy: health SERVING, a valid job
// submits and succeeds, the data dir holds nothing the rows tried to write, and nothing
// was written outside it.
//
// Specs travel as protobuf messages, so "wrong types" and "unknown fields" are what a
// client with another schema puts on the wire: fields this schema lacks, and known field
// numbers with the wrong wire type (protobuf keeps both as unknown fields; the server
// refuses them instead of running a job other than the one described). Rows written as
// YAML go through engine::parse_job_spec first, exactly as ampctl does; the job-file
// syntax errors that never reach the server (unknown names, a string for an integer,
// deep nesting, alias bombs, an empty file) have their own table at the end.
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/unknown_field_set.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "ampd/v1/trainer.grpc.pb.h"
#include "engine/job_spec.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server_process.h"

namespace ampd::testing {
namespace {

// A hostile job file is refused quickly (the alias bomb and yaml-cpp's hang inputs took
// forever before the fixes). Sanitizer builds run the parser 3-10x slower.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr auto kParseTimeLimit = std::chrono::seconds(10);
#else
constexpr auto kParseTimeLimit = std::chrono::seconds(2);
#endif

namespace fs = std::filesystem;
using ampd::v1::Job;
using ampd::v1::JobSpec;
using grpc::StatusCode;
using Stub = ampd::v1::Trainer::Stub;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

JobSpec from_yaml(const std::string& yaml) {
  auto spec = engine::parse_job_spec(yaml, "yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().to_string() << "\n" << yaml;
  return spec.ok() ? spec.value() : JobSpec();
}

// A valid job: a few steps of a small MLP on synthetic blobs.
JobSpec valid_spec() {
  return from_yaml(
      "name: ok\n"
      "precision: fp32\n"
      "model: {layers: [{linear: {out_features: 16}}, {relu: {}}, {linear: {out_features: 3}}]}\n"
      "data: {synthetic: {kind: blobs, samples: 128, features: 8, classes: 3}, batch_size: 32}\n"
      "optimizer: {adamw: {lr: 0.01}}\n"
      "training: {max_steps: 3, seed: 1}\n");
}

// Unknown fields as a client with another schema sends them.
google::protobuf::UnknownFieldSet* unknown(google::protobuf::Message* m) {
  return m->GetReflection()->MutableUnknownFields(m);
}

// A length-delimited blob nested `depth` times: field 1 { field 1 { ... } }.
std::string nested_blob(int depth) {
  std::string inner = "x";
  for (int i = 0; i < depth; ++i) {
    std::string outer;
    google::protobuf::io::StringOutputStream raw(&outer);
    {
      google::protobuf::io::CodedOutputStream out(&raw);
      out.WriteTag((1 << 3) | 2);
      out.WriteVarint32(static_cast<uint32_t>(inner.size()));
      out.WriteString(inner);
    }
    inner = std::move(outer);
  }
  return inner;
}

struct SpecRow {
  const char* what;
  std::function<void(JobSpec&)> mutate;  // applied to valid_spec()
  StatusCode code;
  const char* field;  // a substring the message must contain
  std::string client_request_id = "";
};

std::vector<SpecRow> spec_rows() {
  using S = JobSpec&;
  return {
      {"empty spec", [](S s) { s.Clear(); }, StatusCode::INVALID_ARGUMENT, "model.layers"},
      {"no layers", [](S s) { s.mutable_model()->clear_layers(); }, StatusCode::INVALID_ARGUMENT,
       "model.layers"},
      {"zero width",
       [](S s) { s.mutable_model()->mutable_layers(0)->mutable_linear()->set_out_features(0); },
       StatusCode::INVALID_ARGUMENT, "model.layers[0].linear.out_features"},
      {"negative width",
       [](S s) { s.mutable_model()->mutable_layers(2)->mutable_linear()->set_out_features(-3); },
       StatusCode::INVALID_ARGUMENT, "model.layers[2].linear.out_features"},
      {"width over 65536",
       [](S s) {
         s.mutable_model()->mutable_layers(0)->mutable_linear()->set_out_features(1 << 20);
       },
       StatusCode::INVALID_ARGUMENT, "model.layers[0].linear.out_features"},
      {"layer without a kind", [](S s) { s.mutable_model()->mutable_layers(1)->Clear(); },
       StatusCode::INVALID_ARGUMENT, "model.layers[1]"},
      {"last layer not linear", [](S s) { s.mutable_model()->add_layers()->mutable_relu(); },
       StatusCode::INVALID_ARGUMENT, "model.layers[3]"},
      {"300 layers",
       [](S s) {
         for (int i = 0; i < 300; ++i) s.mutable_model()->add_layers()->mutable_tanh();
       },
       StatusCode::INVALID_ARGUMENT, "model.layers"},
      {"huge widths: terabytes of weights, refused before allocating",
       [](S s) {
         s.mutable_model()->clear_layers();
         for (int i = 0; i < 64; ++i) {
           s.mutable_model()->add_layers()->mutable_linear()->set_out_features(65536);
         }
       },
       StatusCode::RESOURCE_EXHAUSTED, "model.layers / data.batch_size: the job needs about"},
      {"huge batch of wide activations",
       [](S s) {
         s.mutable_model()->mutable_layers(0)->mutable_linear()->set_out_features(65536);
         s.mutable_data()->set_batch_size(1 << 20);
       },
       StatusCode::RESOURCE_EXHAUSTED, "model.layers / data.batch_size: the job needs about"},
      {"negative batch", [](S s) { s.mutable_data()->set_batch_size(-1); },
       StatusCode::INVALID_ARGUMENT, "data.batch_size"},
      {"batch over 2^20", [](S s) { s.mutable_data()->set_batch_size((1 << 20) + 1); },
       StatusCode::INVALID_ARGUMENT, "data.batch_size"},
      {"NaN learning rate", [](S s) { s.mutable_optimizer()->mutable_adamw()->set_lr(kNaN); },
       StatusCode::INVALID_ARGUMENT, "optimizer.adamw.lr"},
      {"infinite SGD learning rate",
       [](S s) { s.mutable_optimizer()->mutable_sgd()->set_lr(kInf); },
       StatusCode::INVALID_ARGUMENT, "optimizer.sgd.lr"},
      {"zero learning rate", [](S s) { s.mutable_optimizer()->mutable_adamw()->set_lr(0); },
       StatusCode::INVALID_ARGUMENT, "optimizer.adamw.lr"},
      {"beta2 = 1", [](S s) { s.mutable_optimizer()->mutable_adamw()->set_beta2(1.0f); },
       StatusCode::INVALID_ARGUMENT, "optimizer.adamw.beta2"},
      {"-inf epsilon", [](S s) { s.mutable_optimizer()->mutable_adamw()->set_eps(-kInf); },
       StatusCode::INVALID_ARGUMENT, "optimizer.adamw.eps"},
      {"NaN clip norm", [](S s) { s.mutable_optimizer()->set_grad_clip_norm(kNaN); },
       StatusCode::INVALID_ARGUMENT, "optimizer.grad_clip_norm"},
      {"no optimizer", [](S s) { s.mutable_optimizer()->clear_adamw(); },
       StatusCode::INVALID_ARGUMENT, "optimizer"},
      {"nesterov without momentum",
       [](S s) {
         s.mutable_optimizer()->mutable_sgd()->set_lr(0.1f);
         s.mutable_optimizer()->mutable_sgd()->set_nesterov(true);
       },
       StatusCode::INVALID_ARGUMENT, "optimizer.sgd.nesterov"},
      {"infinite initial loss scale",
       [](S s) {
         s.mutable_loss_scaling()->mutable_dynamic()->set_init_scale(
             std::numeric_limits<double>::infinity());
       },
       StatusCode::INVALID_ARGUMENT, "loss_scaling.dynamic.init_scale"},
      {"growth factor 1",
       [](S s) { s.mutable_loss_scaling()->mutable_dynamic()->set_growth_factor(1.0); },
       StatusCode::INVALID_ARGUMENT, "loss_scaling.dynamic.growth_factor"},
      {"hysteresis 0", [](S s) { s.mutable_loss_scaling()->mutable_dynamic()->set_hysteresis(0); },
       StatusCode::INVALID_ARGUMENT, "loss_scaling.dynamic.hysteresis"},
      {"NaN static scale",
       [](S s) {
         s.mutable_loss_scaling()->mutable_static_()->set_scale(
             std::numeric_limits<double>::quiet_NaN());
       },
       StatusCode::INVALID_ARGUMENT, "loss_scaling.static.scale"},
      {"dropout p = 1",
       [](S s) { s.mutable_model()->mutable_layers(1)->mutable_dropout()->set_p(1.0f); },
       StatusCode::INVALID_ARGUMENT, "model.layers[1].dropout.p"},
      {"layer_norm eps 0",
       [](S s) { s.mutable_model()->mutable_layers(1)->mutable_layer_norm()->set_eps(0.0f); },
       StatusCode::INVALID_ARGUMENT, "model.layers[1].layer_norm.eps"},
      {"unknown precision", [](S s) { s.set_precision("fp8"); }, StatusCode::INVALID_ARGUMENT,
       "precision"},
      {"unknown loss", [](S s) { s.mutable_model()->set_loss("hinge"); },
       StatusCode::INVALID_ARGUMENT, "model.loss"},
      {"no data source", [](S s) { s.mutable_data()->clear_synthetic(); },
       StatusCode::INVALID_ARGUMENT, "data"},
      {"unknown synthetic kind",
       [](S s) { s.mutable_data()->mutable_synthetic()->set_kind("moons"); },
       StatusCode::INVALID_ARGUMENT, "data.synthetic.kind"},
      {"negative samples", [](S s) { s.mutable_data()->mutable_synthetic()->set_samples(-1); },
       StatusCode::INVALID_ARGUMENT, "data.synthetic.samples"},
      {"a million features",
       [](S s) { s.mutable_data()->mutable_synthetic()->set_features(1000000); },
       StatusCode::INVALID_ARGUMENT, "data.synthetic.features"},
      {"2^31 synthetic values",
       [](S s) {
         s.mutable_data()->mutable_synthetic()->set_samples(2000000000);
         s.mutable_data()->mutable_synthetic()->set_features(65536);
       },
       StatusCode::INVALID_ARGUMENT, "data.synthetic.samples"},
      {"validation fraction 0.95", [](S s) { s.mutable_data()->set_validation_fraction(0.95f); },
       StatusCode::INVALID_ARGUMENT, "data.validation_fraction"},
      {"csv path ../", [](S s) { s.mutable_data()->mutable_csv()->set_path("../escape.csv"); },
       StatusCode::INVALID_ARGUMENT, "data.csv.path"},
      {"csv path inside then out",
       [](S s) { s.mutable_data()->mutable_csv()->set_path("sub/../../escape.csv"); },
       StatusCode::INVALID_ARGUMENT, "data.csv.path"},
      {"csv absolute path", [](S s) { s.mutable_data()->mutable_csv()->set_path("/etc/passwd"); },
       StatusCode::INVALID_ARGUMENT, "data.csv.path"},
      {"csv path with NUL",
       [](S s) { s.mutable_data()->mutable_csv()->set_path(std::string("a.csv\0../../x", 13)); },
       StatusCode::INVALID_ARGUMENT, "data.csv.path"},
      {"csv path with a newline", [](S s) { s.mutable_data()->mutable_csv()->set_path("a\n.csv"); },
       StatusCode::INVALID_ARGUMENT, "data.csv.path"},
      {"csv path 5000 bytes",
       [](S s) { s.mutable_data()->mutable_csv()->set_path(std::string(5000, 'a')); },
       StatusCode::INVALID_ARGUMENT, "data.csv.path"},
      {"csv file missing", [](S s) { s.mutable_data()->mutable_csv()->set_path("missing.csv"); },
       StatusCode::NOT_FOUND, "data.csv.path"},
      {"csv negative target columns",
       [](S s) {
         s.mutable_data()->mutable_csv()->set_path("missing.csv");
         s.mutable_data()->mutable_csv()->set_target_columns(-1);
       },
       StatusCode::INVALID_ARGUMENT, "data.csv.target_columns"},
      {"a million epochs", [](S s) { s.mutable_training()->set_epochs(1000000); },
       StatusCode::INVALID_ARGUMENT, "training.epochs"},
      {"10^12 steps", [](S s) { s.mutable_training()->set_max_steps(int64_t{1000000000000}); },
       StatusCode::INVALID_ARGUMENT, "training.max_steps"},
      {"epochs x steps per epoch over 10^9",
       [](S s) {
         s.mutable_training()->set_max_steps(0);
         s.mutable_training()->set_epochs(100000);
         s.mutable_data()->mutable_synthetic()->set_samples(1000000);
         s.mutable_data()->mutable_synthetic()->set_features(2);
         s.mutable_data()->set_batch_size(1);
       },
       StatusCode::INVALID_ARGUMENT, "training.epochs"},
      {"neither epochs nor steps", [](S s) { s.mutable_training()->set_max_steps(0); },
       StatusCode::INVALID_ARGUMENT, "training"},
      {"negative report interval", [](S s) { s.mutable_training()->set_report_every(-1); },
       StatusCode::INVALID_ARGUMENT, "training.report_every"},
      {"negative warmup", [](S s) { s.mutable_lr_schedule()->set_warmup_steps(-5); },
       StatusCode::INVALID_ARGUMENT, "lr_schedule.warmup_steps"},
      {"cosine floor 2",
       [](S s) { s.mutable_lr_schedule()->mutable_cosine()->set_min_lr_ratio(2.0f); },
       StatusCode::INVALID_ARGUMENT, "lr_schedule.cosine.min_lr_ratio"},
      {"name of 300 characters", [](S s) { s.set_name(std::string(300, 'n')); },
       StatusCode::INVALID_ARGUMENT, "name"},
      {"name with a line break (log forging)", [](S s) { s.set_name("ok\njob j-0 SUCCEEDED"); },
       StatusCode::INVALID_ARGUMENT, "name"},
      {"unknown field at the top", [](S s) { unknown(&s)->AddVarint(99, 1); },
       StatusCode::INVALID_ARGUMENT, "unknown field number 99"},
      {"unknown layer kind (a 'conv' as field 64 of LayerSpec, from a newer schema)",
       [](S s) {
         auto* layer = s.mutable_model()->mutable_layers(1);
         layer->Clear();
         unknown(layer)->AddLengthDelimited(64, "");
       },
       StatusCode::INVALID_ARGUMENT, "model.layers[1]: unknown field number 64"},
      {"unknown field in optimizer.adamw",
       [](S s) { unknown(s.mutable_optimizer()->mutable_adamw())->AddFixed32(17, 0); },
       StatusCode::INVALID_ARGUMENT, "optimizer.adamw"},
      {"wrong type: out_features sent as a string",
       [](S s) {
         auto* linear = s.mutable_model()->mutable_layers(0)->mutable_linear();
         linear->clear_out_features();
         unknown(linear)->AddLengthDelimited(1, "sixteen");
       },
       StatusCode::INVALID_ARGUMENT, "model.layers[0].linear.out_features"},
      {"wrong type: precision sent as an integer",
       [](S s) {
         s.clear_precision();
         unknown(&s)->AddVarint(6, 16);
       },
       StatusCode::INVALID_ARGUMENT, "precision"},
      {"wrong type: lr sent as a double",
       [](S s) {
         auto* adamw = s.mutable_optimizer()->mutable_adamw();
         adamw->clear_lr();
         unknown(adamw)->AddFixed64(1, 0x3f847ae147ae147bULL);
       },
       StatusCode::INVALID_ARGUMENT, "optimizer.adamw.lr"},
      {"unknown field nested 5000 deep",
       [](S s) { unknown(s.mutable_training())->AddLengthDelimited(42, nested_blob(5000)); },
       StatusCode::INVALID_ARGUMENT, "training"},
      {"client_request_id of 1000 characters", [](S) {}, StatusCode::INVALID_ARGUMENT,
       "client_request_id", std::string(1000, 'r')},
  };
}

struct UploadRow {
  const char* what;
  std::string name;
  std::string content;
  int64_t declared_size;  // -1: the content's size
  std::string sha256;     // "": the content's
  StatusCode code;
  const char* field;
};

std::vector<UploadRow> upload_rows() {
  const std::string csv = "1,2,0\n3,4,1\n";
  const std::string big(3000, '7');
  return {
      {"parent directory", "../escape.csv", csv, -1, "", StatusCode::INVALID_ARGUMENT,
       "header.name"},
      {"absolute path", "/tmp/escape.csv", csv, -1, "", StatusCode::INVALID_ARGUMENT,
       "header.name"},
      {"subdirectory", "sub/x.csv", csv, -1, "", StatusCode::INVALID_ARGUMENT, "header.name"},
      {"dot dot alone", "..", csv, -1, "", StatusCode::INVALID_ARGUMENT, "header.name"},
      {"hidden name (an upload temp file)", ".upload-1-0", csv, -1, "",
       StatusCode::INVALID_ARGUMENT, "header.name"},
      {"NUL byte", std::string("ok.csv\0/../../x", 15), csv, -1, "", StatusCode::INVALID_ARGUMENT,
       "header.name"},
      {"control character", "x\n.csv", csv, -1, "", StatusCode::INVALID_ARGUMENT, "header.name"},
      {"backslash", "..\\x.csv", csv, -1, "", StatusCode::INVALID_ARGUMENT, "header.name"},
      {"empty name", "", csv, -1, "", StatusCode::INVALID_ARGUMENT, "header.name"},
      {"very long name", std::string(4096, 'a'), csv, -1, "", StatusCode::INVALID_ARGUMENT,
       "header.name"},
      {"declared past --max-upload-bytes", "big.csv", big, -1, "", StatusCode::RESOURCE_EXHAUSTED,
       "header.size_bytes"},
      {"sent past --max-upload-bytes while declaring the limit", "liar1.csv", big, 1024, "",
       StatusCode::RESOURCE_EXHAUSTED, "--max-upload-bytes"},
      {"sent past the declared size", "liar2.csv", big, 100, "", StatusCode::INVALID_ARGUMENT,
       "header.size_bytes"},
      {"negative size", "neg.csv", csv, -5, "", StatusCode::INVALID_ARGUMENT, "header.size_bytes"},
      {"malformed sha256", "hash.csv", csv, -1, "not-a-hash", StatusCode::INVALID_ARGUMENT,
       "header.sha256"},
  };
}

grpc::Status Upload(Stub& stub, const UploadRow& row) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  ampd::v1::Dataset out;
  auto writer = stub.UploadDataset(&ctx, &out);
  ampd::v1::UploadDatasetRequest req;
  req.mutable_header()->set_name(row.name);
  req.mutable_header()->set_size_bytes(row.declared_size >= 0 || row.declared_size < -1
                                           ? row.declared_size
                                           : static_cast<int64_t>(row.content.size()));
  req.mutable_header()->set_sha256(row.sha256.empty() ? sha256_hex(row.content) : row.sha256);
  if (writer->Write(req)) {
    for (size_t off = 0; off < row.content.size(); off += 256) {
      ampd::v1::UploadDatasetRequest part;
      part.set_chunk(row.content.substr(off, 256));
      if (!writer->Write(part)) break;  // the server already answered
    }
    writer->WritesDone();
  }
  return writer->Finish();
}

// Every entry under `dir`, recursively (names relative to it).
std::vector<std::string> tree(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); it != fs::end(it); it.increment(ec)) {
    out.push_back(fs::relative(it->path(), dir).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

class MalformedSpecsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ampd-malformed-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    // The data dir is nested two levels down so that "../" and "../../" escapes would land
    // in directories this test watches.
    data_dir_ = root_ / "outer" / "data";
    fs::create_directories(data_dir_);
    std::string error;
    server_ = ServerProcess::start((root_ / "state").string(),
                                   {"--data-dir", data_dir_.string(), "--max-upload-bytes", "1KiB"},
                                   &error);
    ASSERT_NE(server_, nullptr) << error;
    stub_ = ampd::v1::Trainer::NewStub(server_->new_channel());
  }
  void TearDown() override {
    if (HasFailure() && server_ != nullptr) std::cerr << "---- server log\n" << server_->log();
    server_.reset();
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  grpc::Status submit(const JobSpec& spec, const std::string& client_request_id, Job* job) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    ampd::v1::SubmitJobRequest req;
    *req.mutable_spec() = spec;
    req.set_client_request_id(client_request_id);
    return stub_->SubmitJob(&ctx, req, job);
  }

  void expect_healthy_and_working() {
    auto health = grpc::health::v1::Health::NewStub(server_->new_channel());
    grpc::ClientContext hctx;
    hctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::health::v1::HealthCheckResponse hresp;
    ASSERT_TRUE(health->Check(&hctx, {}, &hresp).ok());
    EXPECT_EQ(hresp.status(), grpc::health::v1::HealthCheckResponse::SERVING);

    Job job;
    const grpc::Status s = submit(valid_spec(), "", &job);
    ASSERT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
    grpc::ClientContext wctx;
    wctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    ampd::v1::WatchJobRequest wreq;
    wreq.set_job_id(job.id());
    auto reader = stub_->WatchJob(&wctx, wreq);
    ampd::v1::JobEvent e;
    ampd::v1::JobState last = ampd::v1::JOB_STATE_UNSPECIFIED;
    while (reader->Read(&e)) {
      if (e.has_state_change()) last = e.state_change().state();
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(last, ampd::v1::SUCCEEDED);
  }

  fs::path root_;
  fs::path data_dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Stub> stub_;
};

TEST_F(MalformedSpecsTest, EveryMalformedSpecGetsItsCodeAndNamesTheField) {
  const std::vector<SpecRow> rows = spec_rows();
  ASSERT_GE(rows.size(), 30u);
  // The valid base really is valid: a row fails only for what it changes.
  Job job;
  ASSERT_TRUE(submit(valid_spec(), "", &job).ok());
  for (const SpecRow& row : rows) {
    SCOPED_TRACE(row.what);
    JobSpec spec = valid_spec();
    row.mutate(spec);
    const grpc::Status s = submit(spec, row.client_request_id, &job);
    EXPECT_EQ(s.error_code(), row.code) << s.error_message();
    EXPECT_NE(s.error_message().find(row.field), std::string::npos)
        << "expected '" << row.field << "' in: " << s.error_message();
    EXPECT_EQ(s.error_message().find('\0'), std::string::npos);
  }
  expect_healthy_and_working();
}

TEST_F(MalformedSpecsTest, HostileUploadsAreRefusedAndNothingLandsOutsideTheDataDir) {
  const std::vector<std::string> outside_before = tree(root_);
  for (const UploadRow& row : upload_rows()) {
    SCOPED_TRACE(row.what);
    const grpc::Status s = Upload(*stub_, row);
    EXPECT_EQ(s.error_code(), row.code) << s.error_message();
    EXPECT_NE(s.error_message().find(row.field), std::string::npos)
        << "expected '" << row.field << "' in: " << s.error_message();
    EXPECT_EQ(s.error_message().find('\0'), std::string::npos);
  }
  // Nothing stored, no temporary file left, nothing created anywhere under the test root
  // (the state dir's own files aside).
  EXPECT_TRUE(tree(data_dir_).empty()) << ::testing::PrintToString(tree(data_dir_));
  std::vector<std::string> outside_after;
  for (const std::string& p : tree(root_)) {
    if (p.rfind("state", 0) != 0) outside_after.push_back(p);
  }
  std::vector<std::string> expected;
  for (const std::string& p : outside_before) {
    if (p.rfind("state", 0) != 0) expected.push_back(p);
  }
  EXPECT_EQ(outside_after, expected);

  // A symbolic link planted in the data dir (by other means) is not listed as a data set,
  // and a job cannot read through it.
  std::ofstream(root_ / "secret.csv") << "1,2,0\n3,4,1\n";
  fs::create_symlink(root_ / "secret.csv", data_dir_ / "link.csv");
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  ampd::v1::ListDatasetsResponse list;
  ASSERT_TRUE(stub_->ListDatasets(&ctx, {}, &list).ok());
  EXPECT_EQ(list.datasets_size(), 0) << list.DebugString();
  JobSpec spec = valid_spec();
  spec.mutable_data()->mutable_csv()->set_path("link.csv");
  Job job;
  const grpc::Status s = submit(spec, "", &job);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("data.csv.path"), std::string::npos) << s.error_message();

  expect_healthy_and_working();
}

TEST_F(MalformedSpecsTest, HostileJobIdsAreNotFoundAndNeverReachAPath) {
  const std::vector<std::string> ids = {"../../etc/passwd",
                                        "/etc/passwd",
                                        "j-0000000000000000/../../x",
                                        std::string("j-0\0../x", 8),
                                        std::string(10000, 'j'),
                                        "j-'; DROP TABLE jobs; --",
                                        [] {
                                          std::string s;
                                          for (int i = 0; i < 3000; ++i) s += "\xc3\xa9";
                                          return s;  // 6000 bytes, 18000 percent-encoded
                                        }()};
  for (const std::string& id : ids) {
    SCOPED_TRACE(id.substr(0, 40));
    Job job;
    {
      grpc::ClientContext ctx;
      ampd::v1::GetJobRequest req;
      req.set_job_id(id);
      const grpc::Status s = stub_->GetJob(&ctx, req, &job);
      EXPECT_EQ(s.error_code(), StatusCode::NOT_FOUND) << s.error_message().substr(0, 200);
      EXPECT_EQ(s.error_message().rfind("job ", 0), 0u) << s.error_message().substr(0, 200);
      // Echoed ids are cut: a trailer past 8 KiB would turn the code into RESOURCE_EXHAUSTED.
      EXPECT_LE(s.error_message().size(), 6200u);
    }
    {
      grpc::ClientContext ctx;
      ampd::v1::CancelJobRequest req;
      req.set_job_id(id);
      EXPECT_EQ(stub_->CancelJob(&ctx, req, &job).error_code(), StatusCode::NOT_FOUND);
    }
    {
      grpc::ClientContext ctx;
      ampd::v1::WatchJobRequest req;
      req.set_job_id(id);
      auto reader = stub_->WatchJob(&ctx, req);
      ampd::v1::JobEvent e;
      EXPECT_FALSE(reader->Read(&e));
      EXPECT_EQ(reader->Finish().error_code(), StatusCode::NOT_FOUND);
    }
    {
      grpc::ClientContext ctx;
      ampd::v1::DownloadCheckpointRequest req;
      req.set_job_id(id);
      auto reader = stub_->DownloadCheckpoint(&ctx, req);
      ampd::v1::CheckpointChunk chunk;
      EXPECT_FALSE(reader->Read(&chunk));
      EXPECT_EQ(reader->Finish().error_code(), StatusCode::NOT_FOUND);
    }
  }
  expect_healthy_and_working();
}

// Job files that ampctl (and `ampd train`) refuse before anything is sent: the parser
// shared with the server names the line or the field, and says InvalidArgument (ampctl
// exits 2). Their wire equivalents are in the first table.
TEST(MalformedJobFiles, RefusedBeforeSubmissionWithTheFieldNamed) {
  const std::string deep_yaml =
      "name: x\nmodel: " + std::string(5000, '[') + std::string(5000, ']') + "\n";
  std::string deep_json = "{\"model\": ";
  for (int i = 0; i < 5000; ++i) deep_json += "{\"layers\": [";
  for (int i = 0; i < 5000; ++i) deep_json += "]}";
  deep_json += "}";
  std::string bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i < 12; ++i) {
    bomb += std::string(1, static_cast<char>('a' + i)) + ": &" +
            std::string(1, static_cast<char>('a' + i)) + " [";
    for (int k = 0; k < 10; ++k)
      bomb += std::string(k ? ", *" : "*") + static_cast<char>('a' + i - 1);
    bomb += "]\n";
  }
  struct FileRow {
    const char* what;
    std::string text;
    const char* substring;
  } rows[] = {
      {"empty file", "", "empty"},
      {"only a comment", "# nothing\n", "empty"},
      {"a string for an integer", "model: {layers: [{linear: {out_features: sixteen}}]}",
       "out_features"},
      {"a list for a message", "optimizer: [1, 2]", "optimizer"},
      {"unknown field name", "optimizer: {adamw: {lr: 0.1, momentum: 0.9}}", "momentum"},
      {"unknown top-level field", "epochs: 3", "epochs"},
      {"integer out of int32", "model: {layers: [{linear: {out_features: 99999999999}}]}",
       "out_features"},
      {"duplicate key", "name: a\nname: b\n", "duplicate key"},
      {"deeply nested YAML", deep_yaml, "job spec"},
      {"deeply nested JSON", deep_json, "job spec"},
      {"YAML alias bomb (10^12 nodes)", bomb, "job spec"},
      {"two documents", "name: a\n---\nname: b\n", "one YAML document"},
      {"unknown layer kind", "model: {layers: [{conv: {}}, {linear: {out_features: 2}}]}", "conv"},
      // yaml-cpp's LoadAll never returned on these (tests/fuzz regression seeds).
      {"text after a top-level flow mapping", "{\"a\": {}}, \"b\": 1}", "job spec"},
      {"NUL byte", std::string("name: a\0b\n", 10), "control character U+0000"},
      {"invalid UTF-8", "name: \xff\xfe\n", "invalid UTF-8"},
      {"over 1 MiB", std::string((1 << 20) + 1, ' ') + "x", "larger than"},
  };
  for (const FileRow& row : rows) {
    SCOPED_TRACE(row.what);
    const auto start = std::chrono::steady_clock::now();
    auto spec = engine::parse_job_spec(row.text);
    EXPECT_LT(std::chrono::steady_clock::now() - start, kParseTimeLimit);
    ASSERT_FALSE(spec.ok());
    EXPECT_EQ(spec.status().code(), ampd::StatusCode::kInvalidArgument);
    EXPECT_NE(spec.status().message().find(row.substring), std::string::npos)
        << spec.status().message();
  }
}

}  // namespace
}  // namespace ampd::testing
