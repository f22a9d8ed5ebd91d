// Authentication and TLS of a real `ampd serve` (CPU backend, one thread, loopback):
// every ampd.v1.Trainer call is refused UNAUTHENTICATED without the right bearer token and
// works with it, health stays open, TLS clients trust the right CA only, plaintext and TLS
// do not mix, mutual TLS, startup errors for bad files, the cleartext warning, the
// ampd_auth_failures_total counter, and no token in the server's log. Certificates are made
// at test time by make_test_certs.sh (the openssl CLI).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "ampd/v1/trainer.grpc.pb.h"
#include "engine/job_spec.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "server_process.h"

namespace ampd::testing {
namespace {

namespace fs = std::filesystem;
using ampd::v1::JobSpec;
using Stub = ampd::v1::Trainer::Stub;
using grpc::StatusCode;

bool has(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string random_hex(size_t n) {
  std::random_device rd;
  std::string out;
  const char* digits = "0123456789abcdef";
  for (size_t i = 0; i < n; ++i) out.push_back(digits[rd() % 16]);
  return out;
}

JobSpec tiny_spec(int64_t max_steps, const std::string& name) {
  auto spec = engine::parse_job_spec(
      "name: " + name +
          "\nprecision: fp32\n"
          "model: {layers: [{linear: {out_features: 16}}, {relu: {}}, "
          "{linear: {out_features: 3}}]}\n"
          "data: {synthetic: {kind: blobs, samples: 256, features: 8, classes: 3}, "
          "batch_size: 32}\n"
          "optimizer: {sgd: {lr: 0.1}}\n"
          "training: {max_steps: " +
          std::to_string(max_steps) + ", seed: 3, checkpoint_every: 5}\n",
      "yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().to_string();
  return spec.ok() ? spec.value() : JobSpec();
}

// How a call authenticates: no metadata, or `authorization: <value>`.
struct Credential {
  std::string authorization;  // "" = none
};

void prepare(grpc::ClientContext* ctx, const Credential& cred) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  if (!cred.authorization.empty()) ctx->AddMetadata("authorization", cred.authorization);
}

// ---- one call of each ampd.v1.Trainer method ------------------------------------------------

struct Rpc {
  const char* name;
  // The call, with a request that the server answers `with_token` when authenticated.
  std::function<grpc::Status(Stub&, const Credential&)> call;
  StatusCode with_token;
};

// gtest prints the parameter in test names and failures: the method's name, not its bytes.
void PrintTo(const Rpc& rpc, std::ostream* os) {
  *os << rpc.name;
}

const char kMissingJob[] = "j-00000000deadbeef";

std::vector<Rpc> all_rpcs() {
  return {
      {"SubmitJob",
       [](Stub& stub, const Credential& c) {
         grpc::ClientContext ctx;
         prepare(&ctx, c);
         ampd::v1::SubmitJobRequest req;
         *req.mutable_spec() = tiny_spec(10, "auth-submit");
         ampd::v1::Job job;
         return stub.SubmitJob(&ctx, req, &job);
       },
       StatusCode::OK},
      {"GetJob",
       [](Stub& stub, const Credential& c) {
         grpc::ClientContext ctx;
         prepare(&ctx, c);
         ampd::v1::GetJobRequest req;
         req.set_job_id(kMissingJob);
         ampd::v1::Job job;
         return stub.GetJob(&ctx, req, &job);
       },
       StatusCode::NOT_FOUND},
      {"ListJobs",
       [](Stub& stub, const Credential& c) {
         grpc::ClientContext ctx;
         prepare(&ctx, c);
         ampd::v1::ListJobsResponse resp;
         return stub.ListJobs(&ctx, ampd::v1::ListJobsRequest(), &resp);
       },
       StatusCode::OK},
      {"CancelJob",
       [](Stub& stub, const Credential& c) {
         grpc::ClientContext ctx;
         prepare(&ctx, c);
         ampd::v1::CancelJobRequest req;
         req.set_job_id(kMissingJob);
         ampd::v1::Job job;
         return stub.CancelJob(&ctx, req, &job);
       },
       StatusCode::NOT_FOUND},
      {"WatchJob",
       [](Stub& stub, const Credential& c) {
         grpc::ClientContext ctx;
         prepare(&ctx, c);
         ampd::v1::WatchJobRequest req;
         req.set_job_id(kMissingJob);
         auto reader = stub.WatchJob(&ctx, req);
         ampd::v1::JobEvent e;
         while (reader->Read(&e)) {
         }
         return reader->Finish();
       },
       StatusCode::NOT_FOUND},
      {"UploadDataset",
       [](Stub& stub, const Credential& c) {
         grpc::ClientContext ctx;
         prepare(&ctx, c);
         ampd::v1::Dataset ds;
         auto writer = stub.UploadDataset(&ctx, &ds);
         const std::string content = "x,y\n1,0\n";
         ampd::v1::UploadDatasetRequest req;
         req.mutable_header()->set_name("auth.csv");
         req.mutable_header()->set_size_bytes(static_cast<int64_t>(content.size()));
         req.mutable_header()->set_sha256(sha256_hex(content));
         if (writer->Write(req)) {
           ampd::v1::UploadDatasetRequest part;
           part.set_chunk(content);
           writer->Write(part);
           writer->WritesDone();
         }
         return writer->Finish();
       },
       StatusCode::OK},
      {"ListDatasets",
       [](Stub& stub, const Credential& c) {
         grpc::ClientContext ctx;
         prepare(&ctx, c);
         ampd::v1::ListDatasetsResponse resp;
         return stub.ListDatasets(&ctx, ampd::v1::ListDatasetsRequest(), &resp);
       },
       StatusCode::OK},
      {"DownloadCheckpoint",
       [](Stub& stub, const Credential& c) {
         grpc::ClientContext ctx;
         prepare(&ctx, c);
         ampd::v1::DownloadCheckpointRequest req;
         req.set_job_id(kMissingJob);
         auto reader = stub.DownloadCheckpoint(&ctx, req);
         ampd::v1::CheckpointChunk chunk;
         while (reader->Read(&chunk)) {
         }
         return reader->Finish();
       },
       StatusCode::NOT_FOUND},
      {"Generate",
       [](Stub& stub, const Credential& c) {
         grpc::ClientContext ctx;
         prepare(&ctx, c);
         ampd::v1::GenerateRequest req;
         req.set_job_id(kMissingJob);
         req.set_max_tokens(10);
         auto reader = stub.Generate(&ctx, req);
         ampd::v1::GenerateResponse m;
         while (reader->Read(&m)) {
         }
         return reader->Finish();
       },
       StatusCode::NOT_FOUND},
      {"GetServerInfo",
       [](Stub& stub, const Credential& c) {
         grpc::ClientContext ctx;
         prepare(&ctx, c);
         ampd::v1::ServerInfo info;
         return stub.GetServerInfo(&ctx, ampd::v1::GetServerInfoRequest(), &info);
       },
       StatusCode::OK},
  };
}

// ---- Prometheus scrape over plain HTTP ---------------------------------------------------

// The metrics port from the server's "metrics on http://127.0.0.1:PORT/metrics" line.
int metrics_port(const std::string& log) {
  const std::string marker = "metrics on http://127.0.0.1:";
  const size_t at = log.find(marker);
  return at == std::string::npos ? 0 : std::atoi(log.c_str() + at + marker.size());
}

std::string http_get(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  return out;
}

// ---- fixture -----------------------------------------------------------------------------

class AuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ampd-auth-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    certs_ = (root_ / "certs").string();
    const std::string cmd = std::string(MAKE_TEST_CERTS) + " " + certs_ + " > " +
                            (root_ / "certs.log").string() + " 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0)
        << "make_test_certs.sh failed: " << read_file((root_ / "certs.log").string());
    token_ = "right-token-" + random_hex(32);
    wrong_token_ = "wrong-token-" + random_hex(32);
    token_file_ = (root_ / "token").string();
    std::ofstream(token_file_) << token_ << "\n";
    ::chmod(token_file_.c_str(), 0600);
  }

  void TearDown() override {
    for (auto& s : servers_) {
      const std::string log = s->log();
      // Whatever happened, neither the server's token nor a client's wrong one is logged.
      EXPECT_FALSE(has(log, token_)) << "the token is in the server log";
      EXPECT_FALSE(has(log, wrong_token_)) << "the wrong token is in the server log";
      if (HasFailure()) std::cerr << "---- server log (" << s->address() << ")\n" << log;
    }
    servers_.clear();
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  std::string cert(const std::string& name) const { return certs_ + "/" + name; }

  std::shared_ptr<grpc::ChannelCredentials> tls_credentials(const std::string& ca,
                                                            const std::string& client = "") {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = read_file(cert(ca));
    if (!client.empty()) {
      o.pem_cert_chain = read_file(cert(client + ".crt"));
      o.pem_private_key = read_file(cert(client + ".key"));
    }
    return grpc::SslCredentials(o);
  }

  // A server with TLS (server.crt) and the token file; new_channel() trusts ca.crt.
  ServerProcess* start_secure_server(std::vector<std::string> extra = {}) {
    ServerProcess::Options o;
    o.extra_args = {"--tls-cert",       cert("server.crt"), "--tls-key",
                    cert("server.key"), "--token-file",     token_file_};
    o.extra_args.insert(o.extra_args.end(), extra.begin(), extra.end());
    o.credentials = tls_credentials("ca.crt");
    return start(o);
  }

  ServerProcess* start(const ServerProcess::Options& o) {
    std::string error;
    auto p = ServerProcess::start_with(
        (root_ / ("state" + std::to_string(servers_.size()))).string(), o, &error);
    EXPECT_NE(p, nullptr) << error;
    if (p == nullptr) return nullptr;
    servers_.push_back(std::move(p));
    return servers_.back().get();
  }

  // Starts a server that must refuse to start: its exit code and log.
  std::string start_failing(const ServerProcess::Options& o, const std::string& want_in_log) {
    std::string error;
    auto p = ServerProcess::start_with((root_ / "failing").string(), o, &error);
    EXPECT_EQ(p, nullptr) << "the server started";
    EXPECT_TRUE(has(error, "ampd serve exited with 2")) << error;
    EXPECT_TRUE(has(error, want_in_log)) << error;
    return error;
  }

  Credential right() const { return {"Bearer " + token_}; }
  Credential wrong() const { return {"Bearer " + wrong_token_}; }

  fs::path root_;
  std::string certs_, token_, wrong_token_, token_file_;
  std::vector<std::unique_ptr<ServerProcess>> servers_;
};

// ---- every Trainer method ------------------------------------------------------------------

class TrainerRpcAuth : public AuthTest, public ::testing::WithParamInterface<Rpc> {};

TEST_P(TrainerRpcAuth, RefusedWithoutTheRightTokenAnsweredWithIt) {
  const Rpc& rpc = GetParam();
  ServerProcess* server = start_secure_server();
  ASSERT_NE(server, nullptr);
  auto stub = ampd::v1::Trainer::NewStub(server->new_channel());

  struct Case {
    const char* what;
    Credential cred;
    const char* message;
  };
  for (const Case& c : {Case{"no token", {}, "this server requires a bearer token"},
                        Case{"wrong token", wrong(), "the bearer token is not valid"},
                        Case{"no Bearer scheme", {token_}, "is not a single `Bearer <token>`"},
                        Case{"Basic", {"Basic " + token_}, "is not a single `Bearer <token>`"}}) {
    const grpc::Status s = rpc.call(*stub, c.cred);
    EXPECT_EQ(s.error_code(), StatusCode::UNAUTHENTICATED)
        << rpc.name << " with " << c.what << ": " << s.error_message();
    EXPECT_TRUE(has(s.error_message(), c.message)) << s.error_message();
    EXPECT_TRUE(has(s.error_message(), "authorization: Bearer <token>")) << s.error_message();
    EXPECT_TRUE(has(s.error_message(), "--token-file")) << s.error_message();
    EXPECT_FALSE(has(s.error_message(), token_)) << s.error_message();
    EXPECT_FALSE(has(s.error_message(), wrong_token_)) << s.error_message();
  }
  const grpc::Status s = rpc.call(*stub, right());
  EXPECT_EQ(s.error_code(), rpc.with_token) << rpc.name << ": " << s.error_message();
}

INSTANTIATE_TEST_SUITE_P(EveryMethod, TrainerRpcAuth, ::testing::ValuesIn(all_rpcs()),
                         [](const ::testing::TestParamInfo<Rpc>& info) {
                           return std::string(info.param.name);
                         });

// ---- the right token, end to end -----------------------------------------------------------

TEST_F(AuthTest, RightTokenOverTlsRunsAJobEndToEndAndRefusalsAreCounted) {
  ServerProcess* server = start_secure_server();
  ASSERT_NE(server, nullptr);
  auto stub = ampd::v1::Trainer::NewStub(server->new_channel());

  // Two refusals first: they are counted, by reason and as calls with their code.
  for (const Rpc& rpc : all_rpcs()) {
    if (std::string(rpc.name) == "GetServerInfo") {
      EXPECT_EQ(rpc.call(*stub, {}).error_code(), StatusCode::UNAUTHENTICATED);
      EXPECT_EQ(rpc.call(*stub, wrong()).error_code(), StatusCode::UNAUTHENTICATED);
    }
  }

  grpc::ClientContext submit_ctx;
  prepare(&submit_ctx, right());
  ampd::v1::SubmitJobRequest submit;
  *submit.mutable_spec() = tiny_spec(20, "auth-e2e");
  ampd::v1::Job job;
  grpc::Status s = stub->SubmitJob(&submit_ctx, submit, &job);
  ASSERT_TRUE(s.ok()) << s.error_message();

  grpc::ClientContext watch_ctx;
  prepare(&watch_ctx, right());
  ampd::v1::WatchJobRequest watch;
  watch.set_job_id(job.id());
  auto reader = stub->WatchJob(&watch_ctx, watch);
  ampd::v1::JobEvent event;
  int events = 0;
  while (reader->Read(&event)) ++events;
  s = reader->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_GT(events, 0);

  grpc::ClientContext get_ctx;
  prepare(&get_ctx, right());
  ampd::v1::GetJobRequest get;
  get.set_job_id(job.id());
  s = stub->GetJob(&get_ctx, get, &job);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(job.state(), ampd::v1::SUCCEEDED);

  grpc::ClientContext dl_ctx;
  prepare(&dl_ctx, right());
  ampd::v1::DownloadCheckpointRequest dl;
  dl.set_job_id(job.id());
  auto chunks = stub->DownloadCheckpoint(&dl_ctx, dl);
  ampd::v1::CheckpointChunk chunk;
  size_t bytes = 0;
  while (chunks->Read(&chunk)) bytes += chunk.data().size();
  s = chunks->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_GT(bytes, 0u);

  grpc::ClientContext info_ctx;
  prepare(&info_ctx, right());
  ampd::v1::ServerInfo info;
  ASSERT_TRUE(stub->GetServerInfo(&info_ctx, {}, &info).ok());
  EXPECT_EQ(info.backend(), "cpu");

  const int port = metrics_port(server->log());
  ASSERT_GT(port, 0) << server->log();
  const std::string metrics = http_get(port, "/metrics");
  EXPECT_TRUE(has(metrics, R"(ampd_auth_failures_total{reason="missing"} 1)")) << metrics;
  EXPECT_TRUE(has(metrics, R"(ampd_auth_failures_total{reason="wrong_token"} 1)")) << metrics;
  EXPECT_TRUE(
      has(metrics, R"(ampd_grpc_requests_total{code="UNAUTHENTICATED",method="GetServerInfo"} 2)"))
      << metrics;
  EXPECT_TRUE(has(metrics, R"(ampd_grpc_requests_total{code="OK",method="GetServerInfo"} 1)"))
      << metrics;
  EXPECT_FALSE(has(metrics, token_));
  // The refusal is logged with its reason, without what was sent.
  EXPECT_TRUE(has(server->log(), "GetServerInfo from ipv4:127.0.0.1:")) << server->log();
  EXPECT_TRUE(has(server->log(), "UNAUTHENTICATED (missing)")) << server->log();
  EXPECT_TRUE(has(server->log(), "security: TLS, bearer token from --token-file " + token_file_))
      << server->log();
}

// ---- open services -------------------------------------------------------------------------

TEST_F(AuthTest, HealthAndReflectionNeedNoToken) {
  ServerProcess* server = start_secure_server();
  ASSERT_NE(server, nullptr);
  auto health = grpc::health::v1::Health::NewStub(server->new_channel());
  for (const char* service : {"", "ampd.v1.Trainer"}) {
    grpc::ClientContext ctx;
    prepare(&ctx, {});
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    const grpc::Status s = health->Check(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << "'" << service << "': " << s.error_message();
    EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
  // Reflection is open on purpose: it describes the API, which is public, and holds no job.
  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(server->new_channel());
  grpc::ClientContext ctx;
  prepare(&ctx, {});
  auto stream = reflection->ServerReflectionInfo(&ctx);
  grpc::reflection::v1alpha::ServerReflectionRequest req;
  req.set_list_services("");
  ASSERT_TRUE(stream->Write(req));
  stream->WritesDone();
  grpc::reflection::v1alpha::ServerReflectionResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  bool listed = false;
  for (const auto& svc : resp.list_services_response().service()) {
    listed = listed || svc.name() == "ampd.v1.Trainer";
  }
  EXPECT_TRUE(listed);
  EXPECT_TRUE(stream->Finish().ok());
}

// ---- TLS -------------------------------------------------------------------------------------

TEST_F(AuthTest, PlaintextClientAtTlsServerIsUnavailable) {
  ServerProcess* server = start_secure_server();
  ASSERT_NE(server, nullptr);
  auto stub = ampd::v1::Trainer::NewStub(server->new_channel(nullptr));
  grpc::ClientContext ctx;
  prepare(&ctx, right());
  ampd::v1::ServerInfo info;
  const grpc::Status s = stub->GetServerInfo(&ctx, {}, &info);
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(AuthTest, TlsClientTrustingAnotherCaIsRefused) {
  ServerProcess* server = start_secure_server();
  ASSERT_NE(server, nullptr);
  auto stub = ampd::v1::Trainer::NewStub(server->new_channel(tls_credentials("other-ca.crt")));
  grpc::ClientContext ctx;
  prepare(&ctx, right());
  ampd::v1::ServerInfo info;
  const grpc::Status s = stub->GetServerInfo(&ctx, {}, &info);
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE) << s.error_message();
  // The right CA, and a certificate name given explicitly, both work.
  auto good =
      ampd::v1::Trainer::NewStub(server->new_channel(tls_credentials("ca.crt"), "localhost"));
  grpc::ClientContext ctx2;
  prepare(&ctx2, right());
  const grpc::Status ok = good->GetServerInfo(&ctx2, {}, &info);
  EXPECT_TRUE(ok.ok()) << ok.error_message();
}

TEST_F(AuthTest, TlsClientAtPlaintextServerIsUnavailable) {
  ServerProcess::Options o;
  o.extra_args = {"--token-file", token_file_};
  ServerProcess* server = start(o);
  ASSERT_NE(server, nullptr);
  auto stub = ampd::v1::Trainer::NewStub(server->new_channel(tls_credentials("ca.crt")));
  grpc::ClientContext ctx;
  prepare(&ctx, right());
  ampd::v1::ServerInfo info;
  const grpc::Status s = stub->GetServerInfo(&ctx, {}, &info);
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(AuthTest, MutualTlsRequiresAClientCertificateFromTheClientCa) {
  ServerProcess::Options o;
  o.extra_args = {"--tls-cert",       cert("server.crt"), "--tls-key",
                  cert("server.key"), "--tls-client-ca",  cert("ca.crt")};
  o.credentials = tls_credentials("ca.crt", "client");
  ServerProcess* server = start(o);
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(has(server->log(), "security: mutual TLS, no token")) << server->log();
  ampd::v1::ServerInfo info;
  {
    auto stub = ampd::v1::Trainer::NewStub(server->new_channel());
    grpc::ClientContext ctx;
    prepare(&ctx, {});
    const grpc::Status s = stub->GetServerInfo(&ctx, {}, &info);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  {
    auto stub = ampd::v1::Trainer::NewStub(server->new_channel(tls_credentials("ca.crt")));
    grpc::ClientContext ctx;
    prepare(&ctx, {});
    const grpc::Status s = stub->GetServerInfo(&ctx, {}, &info);
    EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE) << s.error_message();
  }
}

// ---- a token without TLS, from the environment ------------------------------------------------

TEST_F(AuthTest, TokenFromTheEnvironmentWorksWithoutTlsOnLoopback) {
  ServerProcess::Options o;
  o.env = {"AMPD_TOKEN=" + token_};
  ServerProcess* server = start(o);
  ASSERT_NE(server, nullptr);
  auto stub = ampd::v1::Trainer::NewStub(server->new_channel());
  ampd::v1::ServerInfo info;
  grpc::ClientContext ctx;
  prepare(&ctx, wrong());
  EXPECT_EQ(stub->GetServerInfo(&ctx, {}, &info).error_code(), StatusCode::UNAUTHENTICATED);
  grpc::ClientContext ctx2;
  prepare(&ctx2, right());
  const grpc::Status s = stub->GetServerInfo(&ctx2, {}, &info);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(has(server->log(), "security: plaintext, bearer token from AMPD_TOKEN"))
      << server->log();
  EXPECT_FALSE(has(server->log(), "cleartext")) << "loopback is not worth the warning";
}

TEST_F(AuthTest, TokenWithoutTlsOffLoopbackIsWarnedAbout) {
  ServerProcess::Options o;
  o.host = "0.0.0.0";
  o.extra_args = {"--token-file", token_file_};
  ServerProcess* server = start(o);
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(has(server->log(), "warning: --grpc-addr 0.0.0.0:")) << server->log();
  EXPECT_TRUE(has(server->log(), "the bearer token crosses the network in cleartext"))
      << server->log();
}

// ---- startup errors --------------------------------------------------------------------------

TEST_F(AuthTest, BadSecurityFilesStopTheStartNamingFlagAndFile) {
  const std::string missing = (root_ / "missing.pem").string();
  ServerProcess::Options o;
  o.extra_args = {"--tls-cert", missing, "--tls-key", cert("server.key")};
  start_failing(o, "--tls-cert " + missing + ": cannot read: No such file or directory");
  o.extra_args = {"--tls-cert", cert("server.crt"), "--tls-key", cert("client.key")};
  start_failing(o, "--tls-key " + cert("client.key") + " does not belong to the certificate");
  o.extra_args = {"--tls-cert", cert("server.crt")};
  start_failing(o, "--tls-cert needs --tls-key");
  o.extra_args = {"--token-file", missing};
  start_failing(o, "--token-file " + missing + ": cannot read: No such file or directory");
  const std::string empty = (root_ / "empty-token").string();
  std::ofstream(empty) << "\n";
  o.extra_args = {"--token-file", empty};
  start_failing(o, "--token-file " + empty + ": the token is empty");
  o.extra_args = {"--token-file", token_file_};
  o.env = {"AMPD_TOKEN=" + token_};
  const std::string log =
      start_failing(o, "both --token-file (or AMPD_TOKEN_FILE) and AMPD_TOKEN are set");
  EXPECT_FALSE(has(log, token_));
}

}  // namespace
}  // namespace ampd::testing
