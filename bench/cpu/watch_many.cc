// watch_many: N WatchJob streams on one job from one process (one thread each), for the
// service-overhead benchmark (bench/cpu/service.sh). 50 `ampctl watch` processes would
// measure 50 process start-ups and 50 gRPC stacks competing for the trainer's cores; one
// process with 50 streams measures what the server pays for 50 watchers, and reports its
// own CPU time so that the watchers' cost on a shared machine is visible.
//
//   watch_many --server HOST:PORT --job ID [--watchers 50]
//
// Prints one JSON line: events per watcher (min/max), progress events, the harmonic mean
// of the job's samples/s over its progress events (first excluded, as the in-process side),
// the final state, and this process's user+system CPU seconds.
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "ampd/v1/trainer.grpc.pb.h"

namespace {

struct Result {
  int64_t events = 0;
  std::vector<double> rates;  // samples/s of each progress event
  std::string final_state;
  std::string error;
};

double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

}  // namespace

int main(int argc, char** argv) {
  std::string server, job;
  int watchers = 50;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--server") {
      server = v;
    } else if (k == "--job") {
      job = v;
    } else if (k == "--watchers") {
      watchers = std::atoi(v.c_str());
    } else {
      std::fprintf(stderr, "watch_many: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (server.empty() || job.empty() || watchers < 1) {
    std::fprintf(stderr, "usage: watch_many --server HOST:PORT --job ID [--watchers N]\n");
    return 2;
  }
  auto channel = grpc::CreateChannel(server, grpc::InsecureChannelCredentials());
  auto stub = ampd::v1::Trainer::NewStub(channel);
  std::vector<Result> results(static_cast<size_t>(watchers));
  std::vector<std::thread> threads;
  for (int w = 0; w < watchers; ++w) {
    threads.emplace_back([&, w] {
      Result& r = results[static_cast<size_t>(w)];
      grpc::ClientContext ctx;
      ampd::v1::WatchJobRequest req;
      req.set_job_id(job);
      auto reader = stub->WatchJob(&ctx, req);
      ampd::v1::JobEvent e;
      while (reader->Read(&e)) {
        ++r.events;
        if (e.has_progress()) r.rates.push_back(e.progress().samples_per_second());
        if (e.has_state_change()) {
          r.final_state = ampd::v1::JobState_Name(e.state_change().state());
        }
      }
      const grpc::Status s = reader->Finish();
      if (!s.ok()) r.error = s.error_message();
    });
  }
  for (auto& t : threads) t.join();
  int64_t min_events = INT64_MAX, max_events = 0, errors = 0;
  for (const Result& r : results) {
    min_events = std::min(min_events, r.events);
    max_events = std::max(max_events, r.events);
    errors += r.error.empty() ? 0 : 1;
  }
  std::string first_error;
  for (const Result& r : results) {
    if (!r.error.empty()) {
      first_error = r.error;
      break;
    }
  }
  std::replace(first_error.begin(), first_error.end(), '"', '\'');
  std::replace(first_error.begin(), first_error.end(), '\\', '/');
  const Result& first = results.front();
  double inv = 0;
  size_t n = 0;
  for (size_t i = 1; i < first.rates.size(); ++i) {
    if (first.rates[i] > 0) {
      inv += 1.0 / first.rates[i];
      ++n;
    }
  }
  std::printf(
      "{\"watchers\":%d,\"events_min\":%lld,\"events_max\":%lld,\"progress_events\":%zu,"
      "\"served_sps\":%.3f,\"final_state\":\"%s\",\"stream_errors\":%lld,"
      "\"watcher_cpu_s\":%.3f%s%s%s}\n",
      watchers, static_cast<long long>(min_events), static_cast<long long>(max_events),
      first.rates.size(), n ? static_cast<double>(n) / inv : 0.0, first.final_state.c_str(),
      static_cast<long long>(errors), cpu_seconds(), errors ? ",\"first_error\":\"" : "",
      first_error.c_str(), errors ? "\"" : "");
  return errors ? 1 : 0;
}
