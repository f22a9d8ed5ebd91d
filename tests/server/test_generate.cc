// The Generate RPC end to end: a real `ampd serve` (CPU backend, one thread) trains a tiny
// character-level GPT on the built-in Tiny Shakespeare, then streams text from its
// checkpoint; the refusals (each with its status code and the field or flag it names),
// the concurrency limit, generation while the job trains, and a client that cancels.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <string>
#include <thread>

#include "ampd/v1/trainer.grpc.pb.h"
#include "engine/job_spec.h"
#include "engine/sampler.h"
#include "engine/text_data.h"
#include "kernels/backend_factory.h"
#include "server_process.h"

namespace ampd::testing {
namespace {

using ampd::v1::GenerateRequest;
using ampd::v1::Job;
using ampd::v1::JobSpec;
using Stub = ampd::v1::Trainer::Stub;
using std::chrono::seconds;

// A GPT small enough to train 20 steps in well under a second (n_embd 16, block 16), or,
// `slow`, one whose tokens take long enough that 100000 of them outlast the test.
JobSpec gpt_spec(int64_t max_steps, bool slow = false, int64_t checkpoint_every = 0) {
  const std::string model = slow ? "{n_layer: 1, n_head: 2, n_embd: 32, block_size: 64}"
                                 : "{n_layer: 1, n_head: 2, n_embd: 16, block_size: 16}";
  std::string yaml =
      "name: tiny-gpt\n"
      "precision: fp32\n"
      "model: {gpt: " +
      model +
      "}\n"
      "data: {text: {builtin: tinyshakespeare, eval_batches: 2}, batch_size: 4}\n"
      "optimizer: {adamw: {lr: 0.01}}\n"
      "training: {max_steps: " +
      std::to_string(max_steps) + ", seed: 1, report_every: 5" +
      (checkpoint_every > 0 ? ", checkpoint_every: " + std::to_string(checkpoint_every)
                            : std::string()) +
      "}\n";
  auto spec = engine::parse_job_spec(yaml, "yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().to_string();
  return spec.ok() ? spec.value() : JobSpec();
}

// A small MLP on synthetic blobs: not a language model.
JobSpec mlp_spec(int64_t max_steps) {
  auto spec = engine::parse_job_spec(
      "name: mlp\n"
      "precision: fp32\n"
      "model: {layers: [{linear: {out_features: 8}}, {relu: {}}, {linear: {out_features: 3}}]}\n"
      "data: {synthetic: {kind: blobs, samples: 128, features: 4, classes: 3}, batch_size: 16}\n"
      "optimizer: {sgd: {lr: 0.1}}\n"
      "training: {max_steps: " +
          std::to_string(max_steps) + ", report_every: 5}\n",
      "yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().to_string();
  return spec.ok() ? spec.value() : JobSpec();
}

Job submit(Stub& stub, const JobSpec& spec) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(20));
  ampd::v1::SubmitJobRequest req;
  *req.mutable_spec() = spec;
  Job job;
  const grpc::Status s = stub.SubmitJob(&ctx, req, &job);
  EXPECT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  return job;
}

Job get_job(Stub& stub, const std::string& id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(20));
  ampd::v1::GetJobRequest req;
  req.set_job_id(id);
  Job job;
  const grpc::Status s = stub.GetJob(&ctx, req, &job);
  EXPECT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  return job;
}

// Follows the job to its end (WatchJob ends after the final event), then reads it.
Job run_to_end(Stub& stub, const std::string& id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(60));
  ampd::v1::WatchJobRequest req;
  req.set_job_id(id);
  auto reader = stub.WatchJob(&ctx, req);
  ampd::v1::JobEvent e;
  while (reader->Read(&e)) {
  }
  const grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  return get_job(stub, id);
}

GenerateRequest request(const std::string& job_id, const std::string& prompt, int64_t max_tokens,
                        uint64_t seed) {
  GenerateRequest req;
  req.set_job_id(job_id);
  req.set_prompt(prompt);
  req.set_max_tokens(max_tokens);
  req.set_temperature(0.8f);
  req.set_top_k(200);
  req.set_seed(seed);
  return req;
}

struct Generated {
  grpc::Status status;
  std::string text;
  int messages = 0;  // text messages
  bool done = false;
  ampd::v1::GenerateSummary summary;
};

Generated generate(Stub& stub, const GenerateRequest& req) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(60));
  auto reader = stub.Generate(&ctx, req);
  Generated g;
  ampd::v1::GenerateResponse m;
  while (reader->Read(&m)) {
    if (m.has_done()) {
      EXPECT_FALSE(g.done) << "two summaries";
      g.done = true;
      g.summary = m.done();
    } else {
      EXPECT_FALSE(g.done) << "text after the summary";
      EXPECT_FALSE(m.text().empty());
      g.text += m.text();
      ++g.messages;
    }
  }
  g.status = reader->Finish();
  return g;
}

// The code of a refused Generate, and that its message contains `needle`.
void expect_refused(Stub& stub, const GenerateRequest& req, grpc::StatusCode code,
                    const std::string& needle) {
  const Generated g = generate(stub, req);
  EXPECT_EQ(g.status.error_code(), code) << g.status.error_message();
  EXPECT_NE(g.status.error_message().find(needle), std::string::npos)
      << "'" << needle << "' not in: " << g.status.error_message();
  EXPECT_TRUE(g.text.empty());
  EXPECT_FALSE(g.done);
}

// The metrics port from the server's "metrics on http://127.0.0.1:PORT/metrics" line.
int metrics_port(const std::string& log) {
  const std::string marker = "metrics on http://127.0.0.1:";
  const size_t at = log.find(marker);
  return at == std::string::npos ? 0 : std::atoi(log.c_str() + at + marker.size());
}

std::string scrape_metrics(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const std::string req = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  return out;
}

// The value of an unlabelled series in a scrape, or NaN.
double metric(const std::string& text, const std::string& name) {
  const size_t at = text.find("\n" + name + " ");
  return at == std::string::npos ? std::nan("") : std::atof(text.c_str() + at + name.size() + 2);
}

using GenerateTest = ServerTest;

TEST_F(GenerateTest, TextFromATrainedGptIsReproducibleAndEqualsTheSamplerInProcess) {
  ASSERT_NE(start_server(), nullptr);
  const Job job = run_to_end(stub(), submit(stub(), gpt_spec(20)).id());
  ASSERT_EQ(job.state(), ampd::v1::SUCCEEDED) << job.failure_reason();
  ASSERT_FALSE(job.checkpoint().empty());

  const Generated a = generate(stub(), request(job.id(), "ROMEO:", 200, 7));
  AMPD_ASSERT_GRPC_OK(a.status);
  ASSERT_TRUE(a.done);
  EXPECT_EQ(a.text.size(), 200u);
  EXPECT_EQ(a.summary.tokens(), 200);
  EXPECT_EQ(a.summary.step(), 20);
  EXPECT_EQ(a.summary.prompt_tokens(), 6);
  EXPECT_GT(a.summary.load_seconds(), 0);
  EXPECT_GT(a.messages, 1) << "the text should stream in several messages";
  // Every character decodes to the vocabulary of the text it trained on.
  auto text = engine::tinyshakespeare_text();
  ASSERT_TRUE(text.ok());
  const engine::Vocabulary vocab = engine::Vocabulary::chars_of(*text);
  for (char c : a.text) {
    EXPECT_NE(vocab.symbols().find(c), std::string::npos) << "byte " << static_cast<int>(c);
  }

  // The same seed gives the same text (from the cached model); another seed another text.
  const Generated b = generate(stub(), request(job.id(), "ROMEO:", 200, 7));
  AMPD_ASSERT_GRPC_OK(b.status);
  EXPECT_EQ(b.text, a.text);
  EXPECT_EQ(b.summary.load_seconds(), 0) << "the second request should reuse the loaded model";
  const Generated c = generate(stub(), request(job.id(), "ROMEO:", 200, 8));
  AMPD_ASSERT_GRPC_OK(c.status);
  EXPECT_NE(c.text, a.text);

  // The step named explicitly is the same checkpoint; one the job does not keep is named.
  GenerateRequest at_step = request(job.id(), "ROMEO:", 200, 7);
  at_step.set_step(20);
  const Generated d = generate(stub(), at_step);
  AMPD_ASSERT_GRPC_OK(d.status);
  EXPECT_EQ(d.text, a.text);
  at_step.set_step(7);
  expect_refused(stub(), at_step, grpc::StatusCode::NOT_FOUND,
                 "no checkpoint at step 7; it keeps the checkpoint of step 20");

  // Defaults: 500 tokens, temperature 0.8, top_k 200; the first 200 are a's.
  GenerateRequest defaults;
  defaults.set_job_id(job.id());
  defaults.set_prompt("ROMEO:");
  defaults.set_seed(7);
  const Generated e = generate(stub(), defaults);
  AMPD_ASSERT_GRPC_OK(e.status);
  EXPECT_EQ(e.summary.tokens(), 500);
  ASSERT_EQ(e.text.size(), 500u);
  EXPECT_EQ(e.text.substr(0, 200), a.text);

  // What `ampd sample` prints: the same checkpoint, options and seed in this process, on
  // the backend the server generates with (the CPU, one thread).
  BackendRequest breq;
  breq.kind = "cpu";
  breq.threads = 1;
  auto backend = create_backend(breq);
  ASSERT_TRUE(backend.ok()) << backend.status().to_string();
  auto sampler = engine::Sampler::create(*backend->backend, job.checkpoint());
  ASSERT_TRUE(sampler.ok()) << sampler.status().to_string();
  engine::SampleOptions so;
  so.prompt = "ROMEO:";
  so.max_tokens = 200;
  so.temperature = 0.8f;
  so.top_k = 200;
  so.seed = 7;
  std::string local;
  ASSERT_TRUE((*sampler)
                  ->generate(so,
                             [&](const std::string& t) {
                               local += t;
                               return true;
                             })
                  .ok());
  EXPECT_EQ(local, a.text);

  const std::string m = scrape_metrics(metrics_port(server().log()));
  EXPECT_EQ(metric(m, "ampd_generated_tokens_total"), 200 * 4 + 500) << m;
  EXPECT_EQ(metric(m, "ampd_generations_active"), 0) << m;
}

TEST_F(GenerateTest, RefusalsNameTheFieldTheFlagOrWhatIsMissing) {
  ASSERT_NE(start_server({"--max-generate-tokens", "300", "--max-queued-jobs", "5"}), nullptr);
  const Job gpt = run_to_end(stub(), submit(stub(), gpt_spec(20)).id());
  ASSERT_EQ(gpt.state(), ampd::v1::SUCCEEDED) << gpt.failure_reason();
  const std::string id = gpt.id();

  expect_refused(stub(), request(id, "", 301, 1), grpc::StatusCode::RESOURCE_EXHAUSTED,
                 "max_tokens: 301 is over this server's limit of 300 tokens per request (ampd "
                 "serve --max-generate-tokens)");
  expect_refused(stub(), request(id, "", -1, 1), grpc::StatusCode::INVALID_ARGUMENT, "max_tokens");
  GenerateRequest r = request(id, "", 10, 1);
  r.set_temperature(-0.5f);
  expect_refused(stub(), r, grpc::StatusCode::INVALID_ARGUMENT, "temperature");
  r.set_temperature(std::nanf(""));
  expect_refused(stub(), r, grpc::StatusCode::INVALID_ARGUMENT, "temperature");
  r = request(id, "", 10, 1);
  r.set_top_k(-1);
  expect_refused(stub(), r, grpc::StatusCode::INVALID_ARGUMENT, "top_k");
  expect_refused(stub(), request(id, "ROMEO~", 10, 1), grpc::StatusCode::INVALID_ARGUMENT,
                 "prompt: the character '~' at byte 5 is not in the model's vocabulary");
  expect_refused(stub(), request(id, std::string(engine::kMaxPromptBytes + 1, 'a'), 10, 1),
                 grpc::StatusCode::INVALID_ARGUMENT, "prompt: at most");
  r = request(id, "", 10, 1);
  r.set_step(-1);
  expect_refused(stub(), r, grpc::StatusCode::INVALID_ARGUMENT, "step");
  expect_refused(stub(), request("", "", 10, 1), grpc::StatusCode::INVALID_ARGUMENT, "job_id");
  expect_refused(stub(), request("j-0123456789abcdef", "", 10, 1), grpc::StatusCode::NOT_FOUND,
                 "j-0123456789abcdef");

  // A job that is not a language model.
  const Job mlp = run_to_end(stub(), submit(stub(), mlp_spec(10)).id());
  ASSERT_EQ(mlp.state(), ampd::v1::SUCCEEDED) << mlp.failure_reason();
  expect_refused(stub(), request(mlp.id(), "", 10, 1), grpc::StatusCode::FAILED_PRECONDITION,
                 "is not a language model");

  // A language model job without a checkpoint yet: queued behind a job that runs until
  // cancelled.
  const Job endless = submit(stub(), mlp_spec(1000000));
  const Job queued = submit(stub(), gpt_spec(20));
  ASSERT_EQ(get_job(stub(), queued.id()).state(), ampd::v1::QUEUED);
  expect_refused(stub(), request(queued.id(), "", 10, 1), grpc::StatusCode::FAILED_PRECONDITION,
                 "has no checkpoint yet (state QUEUED");

  // None of that left a generation slot taken, and the good request still works.
  const Generated ok = generate(stub(), request(id, "\n", 300, 1));
  AMPD_ASSERT_GRPC_OK(ok.status);
  EXPECT_EQ(ok.summary.tokens(), 300);
}

TEST_F(GenerateTest, WhileTheJobTrainsAtTheConcurrencyLimitAndCancelled) {
  ASSERT_NE(start_server({"--max-generations", "1", "--max-generate-tokens", "100000"}), nullptr);
  // Trains until the test ends, with a checkpoint every 10 steps.
  const Job job = submit(stub(), gpt_spec(1000000, /*slow=*/true, /*checkpoint_every=*/10));
  ASSERT_TRUE(wait_for_step(stub(), job.id(), 15));
  ASSERT_FALSE(get_job(stub(), job.id()).checkpoint().empty());

  // A long generation: hold its stream open after the first text.
  grpc::ClientContext long_ctx;
  auto long_reader = stub().Generate(&long_ctx, request(job.id(), "ROMEO:", 100000, 3));
  ampd::v1::GenerateResponse first;
  ASSERT_TRUE(long_reader->Read(&first));
  ASSERT_TRUE(first.has_text());

  // The one slot is taken: the next call is refused, saying how many run and the flag.
  expect_refused(stub(), request(job.id(), "", 10, 1), grpc::StatusCode::RESOURCE_EXHAUSTED,
                 "1 generation is running, this server's limit (ampd serve --max-generations 1)");

  // Training goes on meanwhile (generation has a backend of its own).
  const int64_t step = get_job(stub(), job.id()).step();
  EXPECT_TRUE(wait_for_step(stub(), job.id(), step + 10));

  // The client cancels: the server stops at the next token and frees the slot.
  long_ctx.TryCancel();
  ampd::v1::GenerateResponse m;
  while (long_reader->Read(&m)) {
  }
  EXPECT_EQ(long_reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  const auto deadline = std::chrono::steady_clock::now() + seconds(5);
  Generated next;
  do {
    next = generate(stub(), request(job.id(), "", 20, 1));
    if (next.status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (std::chrono::steady_clock::now() < deadline);
  AMPD_ASSERT_GRPC_OK(next.status);
  EXPECT_EQ(next.summary.tokens(), 20);
  const std::string metrics = scrape_metrics(metrics_port(server().log()));
  EXPECT_EQ(metric(metrics, "ampd_generations_active"), 0) << metrics;
  EXPECT_EQ(get_job(stub(), job.id()).state(), ampd::v1::RUNNING);
}

}  // namespace
}  // namespace ampd::testing
