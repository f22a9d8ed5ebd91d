// ampd.v1.Trainer over gRPC: the thin layer. Each method converts the request, calls the
// JobManager, and maps the Status with to_grpc_status. No method lets an exception out
// (gRPC's synchronous server would terminate the process on one).
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include "ampd/v1/trainer.grpc.pb.h"
#include "base/status.h"
#include "server/auth.h"
#include "server/generator.h"
#include "server/job_manager.h"
#include "server/metrics.h"

namespace ampd::server {

// The one place where ampd status codes become gRPC ones.
grpc::Status to_grpc_status(const Status& status);

struct TrainerServiceOptions {
  int64_t checkpoint_chunk_bytes = int64_t{1} << 20;
  std::string version;
  // Every call's method, status code and duration are recorded here when set.
  ServerMetrics* metrics = nullptr;
  // When set, every call must carry `authorization: Bearer <token>` with this token;
  // others are answered UNAUTHENTICATED before anything else happens.
  const BearerAuth* auth = nullptr;
  // Runs Generate; without one, Generate is UNIMPLEMENTED. Must outlive the service.
  Generator* generator = nullptr;
  // Generate sends the text produced so far once it holds this many bytes, or once this
  // long has passed since the last message (so that a slow model still streams token by
  // token).
  size_t generate_chunk_bytes = 32;
  std::chrono::milliseconds generate_flush_interval{50};
};

class TrainerService final : public ampd::v1::Trainer::Service {
 public:
  TrainerService(JobManager* manager, TrainerServiceOptions options)
      : manager_(manager), options_(std::move(options)) {}

  // From now on every new call is answered UNAVAILABLE (the server is draining).
  void begin_drain() { draining_.store(true); }

  grpc::Status SubmitJob(grpc::ServerContext* context, const ampd::v1::SubmitJobRequest* request,
                         ampd::v1::Job* response) override;
  grpc::Status GetJob(grpc::ServerContext* context, const ampd::v1::GetJobRequest* request,
                      ampd::v1::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context, const ampd::v1::ListJobsRequest* request,
                        ampd::v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context, const ampd::v1::CancelJobRequest* request,
                         ampd::v1::Job* response) override;
  grpc::Status WatchJob(grpc::ServerContext* context, const ampd::v1::WatchJobRequest* request,
                        grpc::ServerWriter<ampd::v1::JobEvent>* writer) override;
  grpc::Status UploadDataset(grpc::ServerContext* context,
                             grpc::ServerReader<ampd::v1::UploadDatasetRequest>* reader,
                             ampd::v1::Dataset* response) override;
  grpc::Status ListDatasets(grpc::ServerContext* context,
                            const ampd::v1::ListDatasetsRequest* request,
                            ampd::v1::ListDatasetsResponse* response) override;
  grpc::Status DownloadCheckpoint(grpc::ServerContext* context,
                                  const ampd::v1::DownloadCheckpointRequest* request,
                                  grpc::ServerWriter<ampd::v1::CheckpointChunk>* writer) override;
  grpc::Status GetServerInfo(grpc::ServerContext* context,
                             const ampd::v1::GetServerInfoRequest* request,
                             ampd::v1::ServerInfo* response) override;
  grpc::Status Generate(grpc::ServerContext* context, const ampd::v1::GenerateRequest* request,
                        grpc::ServerWriter<ampd::v1::GenerateResponse>* writer) override;

 private:
  // Runs a handler body: UNAUTHENTICATED without the right token, UNAVAILABLE while
  // draining, INTERNAL for an escaped exception; records the call in the metrics (the one
  // place where RPCs are counted and timed).
  //
  // The token is checked here rather than in a grpc::AuthMetadataProcessor: gRPC runs a
  // processor only on secure (TLS) ports, and a token must also work without TLS on
  // loopback; here it covers exactly ampd.v1.Trainer (health and reflection are other
  // services and stay open), and a refusal is counted with its method like any call.
  template <typename Body>
  grpc::Status handle(grpc::ServerContext* context, const char* method, Body&& body);
  template <typename Body>
  grpc::Status handle_unmeasured(grpc::ServerContext* context, const char* method, Body&& body);
  // OK, or UNAUTHENTICATED (counted, and logged at most once a second).
  grpc::Status authenticate(grpc::ServerContext* context, const char* method);

  JobManager* manager_;
  const TrainerServiceOptions options_;
  std::atomic<bool> draining_{false};
  // Refusals since the last one logged, and when that was (steady clock, ns).
  std::atomic<int64_t> auth_failures_unlogged_{0};
  std::atomic<int64_t> auth_last_log_ns_{0};
};

}  // namespace ampd::server
