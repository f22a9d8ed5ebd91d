// watch_many: N WatchJob streams on one job from one process, for the service-overhead
// benchmark (bench/cpu/service.sh). The watchers stand for N users on other machines, but
// the benchmark has to run them on the server's two cores, so they should cost as little
// as a client can: one channel (one HTTP/2 connection), the async API, and one thread that
// drives every stream from one completion queue. (50 `ampctl watch` processes would
// measure 50 process start-ups and 50 gRPC stacks; 50 blocking-reader threads cost 50
// thread wake-ups per event on the trainer's cores.) It reports its own CPU time so that
// what the watchers cost is visible beside what the server pays.
//
//   watch_many --server HOST:PORT --job ID [--watchers 50] [--scrape HOST:PORT]
//
// --scrape: also GET http://HOST:PORT/metrics once a second while the streams are open
// (Prometheus' part: an HTTP/1.0 request on a fresh connection, as a scraper makes), from
// a second thread of this process, so that its cost is counted with the watchers' instead
// of a curl process a second. A scrape counts as answered when it gets a 200 whose body
// has ampd_ metrics.
//
// Prints one JSON line: events per watcher (min/max), progress events, the harmonic mean
// of the job's samples/s over its progress events (first excluded, as the in-process side),
// the final state, scrapes made and answered, this process's user+system CPU seconds, and
// the samples/s of every progress event (rates).
#include <grpcpp/grpcpp.h>
#include <netdb.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
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

// One stream: its call, the event being read into, and where it is in its life. The
// stream's address is its completion-queue tag.
struct Stream {
  enum class Stage { kStarting, kReading, kFinishing, kDone };
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientAsyncReader<ampd::v1::JobEvent>> reader;
  ampd::v1::JobEvent event;
  grpc::Status status;
  Stage stage = Stage::kStarting;
  Result result;

  // Called with each completion of this stream's last operation; false when it is over.
  bool advance(bool ok) {
    switch (stage) {
      case Stage::kStarting:
      case Stage::kReading:
        if (stage == Stage::kReading && ok) {
          ++result.events;
          if (event.has_progress()) result.rates.push_back(event.progress().samples_per_second());
          if (event.has_state_change()) {
            result.final_state = ampd::v1::JobState_Name(event.state_change().state());
          }
        }
        if (ok) {
          stage = Stage::kReading;
          reader->Read(&event, this);
        } else {  // the stream ended (or never started): collect its status
          stage = Stage::kFinishing;
          reader->Finish(&status, this);
        }
        return true;
      case Stage::kFinishing:
        if (!status.ok()) result.error = status.error_message();
        stage = Stage::kDone;
        return false;
      case Stage::kDone: return false;
    }
    return false;
  }
};

double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

// GET /metrics from host:port over HTTP/1.0; true for a 200 with ampd_ metrics in it.
bool scrape_once(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos) return false;
  const std::string host = host_port.substr(0, colon), port = host_port.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || res == nullptr) return false;
  const int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
  const bool connected = fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0;
  freeaddrinfo(res);
  std::string body;
  if (connected) {
    const std::string request = "GET /metrics HTTP/1.0\r\nHost: " + host + "\r\n\r\n";
    if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(request.size())) {
      char buf[16384];
      for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;)
        body.append(buf, static_cast<size_t>(n));
    }
  }
  if (fd >= 0) close(fd);
  return body.rfind("HTTP/1.", 0) == 0 && body.find(" 200 ") != std::string::npos &&
         body.find("\nampd_") != std::string::npos;
}

// Scrapes once a second until stop() is called.
class Scraper {
 public:
  explicit Scraper(std::string target) : target_(std::move(target)) {
    thread_ = std::thread([this] {
      std::unique_lock<std::mutex> lock(mu_);
      while (!stop_) {
        lock.unlock();
        const bool ok = scrape_once(target_);
        lock.lock();
        ++made_;
        answered_ += ok ? 1 : 0;
        cv_.wait_for(lock, std::chrono::seconds(1), [&] { return stop_; });
      }
    });
  }
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  int made() const { return made_; }
  int answered() const { return answered_; }

 private:
  std::string target_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  int made_ = 0, answered_ = 0;
  std::thread thread_;
};

}  // namespace

int main(int argc, char** argv) {
  std::string server, job, scrape;
  int watchers = 50;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--server") {
      server = v;
    } else if (k == "--job") {
      job = v;
    } else if (k == "--scrape") {
      scrape = v;
    } else if (k == "--watchers") {
      watchers = std::atoi(v.c_str());
    } else {
      std::fprintf(stderr, "watch_many: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (server.empty() || job.empty() || watchers < 1) {
    std::fprintf(
        stderr,
        "usage: watch_many --server HOST:PORT --job ID [--watchers N] [--scrape HOST:PORT]\n");
    return 2;
  }
  auto channel = grpc::CreateChannel(server, grpc::InsecureChannelCredentials());
  auto stub = ampd::v1::Trainer::NewStub(channel);
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<Stream>> streams;
  ampd::v1::WatchJobRequest req;
  req.set_job_id(job);
  for (int w = 0; w < watchers; ++w) {
    auto st = std::make_unique<Stream>();
    st->reader = stub->PrepareAsyncWatchJob(&st->ctx, req, &cq);
    st->reader->StartCall(st.get());
    streams.push_back(std::move(st));
  }
  std::unique_ptr<Scraper> scraper;
  if (!scrape.empty()) scraper = std::make_unique<Scraper>(scrape);
  int live = watchers;
  void* tag = nullptr;
  bool ok = false;
  while (live > 0 && cq.Next(&tag, &ok)) {
    if (!static_cast<Stream*>(tag)->advance(ok)) --live;
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  if (scraper) scraper->stop();
  std::vector<Result> results;
  for (auto& st : streams) results.push_back(std::move(st->result));
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
  std::string rates;  // every window's samples/s, for the service script's quantiles
  for (size_t i = 0; i < first.rates.size(); ++i) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%.1f", i ? "," : "", first.rates[i]);
    rates += buf;
  }
  std::printf(
      "{\"watchers\":%d,\"events_min\":%lld,\"events_max\":%lld,\"progress_events\":%zu,"
      "\"served_sps\":%.3f,\"final_state\":\"%s\",\"stream_errors\":%lld,"
      "\"scrapes\":%d,\"scrapes_ok\":%d,\"watcher_cpu_s\":%.3f,\"rates\":[%s]%s%s%s}\n",
      watchers, static_cast<long long>(min_events), static_cast<long long>(max_events),
      first.rates.size(), n ? static_cast<double>(n) / inv : 0.0, first.final_state.c_str(),
      static_cast<long long>(errors), scraper ? scraper->made() : 0,
      scraper ? scraper->answered() : 0, cpu_seconds(), rates.c_str(),
      errors ? ",\"first_error\":\"" : "", first_error.c_str(), errors ? "\"" : "");
  return errors ? 1 : 0;
}
