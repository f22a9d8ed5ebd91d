// ampctl generate: text from a language model job's checkpoint, streamed as the server
// produces it (the Generate RPC).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "client/ampctl/ampctl.h"
#include "client/ampctl/connection.h"
#include "client/ampctl/interrupts.h"

namespace ampd::ampctl {

namespace {

struct GenerateOptions {
  std::string job_id;
  std::string prompt;
  int64_t tokens = 500;
  float temperature = 0.8f;
  int32_t top_k = 200;
  uint64_t seed = 1;
  int64_t step = 0;
  bool no_echo = false;
};

bool contains(const std::string& s, const char* needle) {
  return s.find(needle) != std::string::npos;
}

// What to do next after a refusal, as indented lines ("" when the message says it all).
std::string next_steps(const grpc::Status& s, const GenerateOptions& o) {
  const std::string& m = s.error_message();
  switch (s.error_code()) {
    case grpc::StatusCode::FAILED_PRECONDITION:
      if (contains(m, "no checkpoint yet")) {
        return "  wait for its first checkpoint: ampctl watch " + o.job_id +
               " (checkpoint lines), then run this again\n";
      }
      if (contains(m, "not a language model")) {
        return "  find a language model job: ampctl list (or submit one: ampctl submit -f "
               "examples/shakespeare-char-fp32.yaml)\n";
      }
      return "";
    case grpc::StatusCode::NOT_FOUND:
      return o.step != 0 && contains(m, "step")
                 ? "  leave out --step to use the job's latest checkpoint\n"
                 : "  list the jobs: ampctl list\n";
    case grpc::StatusCode::INVALID_ARGUMENT:
      if (contains(m, "vocabulary")) {
        return "  the prompt may only use characters the model was trained on\n";
      }
      return "";
    default: return "";
  }
}

int run_generate(const GlobalOptions& g, const GenerateOptions& o) {
  const std::string what = "generate from job " + o.job_id;
  Connection conn(g);
  auto ctx = conn.stream_context();
  InterruptScope scope([&ctx] { ctx->TryCancel(); });
  ampd::v1::GenerateRequest req;
  req.set_job_id(o.job_id);
  req.set_step(o.step);
  req.set_prompt(o.prompt);
  req.set_max_tokens(o.tokens);
  req.set_temperature(o.temperature);
  req.set_top_k(o.top_k);
  req.set_seed(o.seed);
  auto reader = conn.stub().Generate(ctx.get(), req);

  ampd::v1::GenerateResponse message;
  bool started = false;  // anything written to stdout
  bool ends_with_newline = true;
  ampd::v1::GenerateSummary summary;
  bool done = false;
  auto emit = [&](const std::string& text) {
    if (text.empty()) return;
    std::cout.write(text.data(), static_cast<std::streamsize>(text.size()));
    std::cout.flush();
    started = true;
    ends_with_newline = text.back() == '\n';
  };
  int64_t received = 0;
  while (reader->Read(&message)) {
    if (message.has_done()) {
      summary = message.done();
      done = true;
      continue;
    }
    if (!started && !o.no_echo) emit(o.prompt);
    emit(message.text());
    received += static_cast<int64_t>(message.text().size());
  }
  grpc::Status status = reader->Finish();
  if (started && !ends_with_newline) std::cout << "\n";
  std::cout.flush();
  if (interrupted()) {
    std::cerr << "ampctl: generation stopped after " << received << " bytes of text\n";
    return kExitInterrupted;
  }
  if (!status.ok()) {
    const int code = conn.report(status, what);
    std::cerr << next_steps(status, o);
    return code;
  }
  if (!done) {
    return fail(kExitError, what + ": the stream ended without its summary; run it again");
  }
  char rate[64];
  std::snprintf(
      rate, sizeof rate, "%.2f s, %.0f tokens/s", summary.seconds(),
      summary.seconds() > 0 ? static_cast<double>(summary.tokens()) / summary.seconds() : 0.0);
  std::cerr << "ampctl: " << summary.tokens() << " tokens in " << rate << " from the step "
            << summary.step() << " checkpoint of job " << o.job_id << "\n";
  return kExitOk;
}

}  // namespace

void add_generate_command(CLI::App& app, const GlobalOptions& g, Action* action) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand(
      "generate", "Generate text from a language model job's checkpoint, streamed as it comes");
  cmd->add_option("job", o->job_id, "Job ID (a model.gpt job on data.text)")->required();
  cmd->add_option("-p,--prompt", o->prompt,
                  "Text to continue; every character must be in the model's vocabulary "
                  "(default: none, the text starts after a newline)");
  cmd->add_option("-n,--tokens", o->tokens,
                  "Tokens (characters, for a character vocabulary) to generate; the server "
                  "allows up to its --max-generate-tokens (default 2000)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{100000}));
  cmd->add_option("-t,--temperature", o->temperature,
                  "Divide the logits by this: < 1 sharper, > 1 wilder; 0 = always the most "
                  "likely character")
      ->capture_default_str()
      ->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("-k,--top-k", o->top_k, "Sample among the k most likely (0 = all)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", o->seed,
                  "Random seed: the same checkpoint, prompt, options and seed give the same "
                  "text")
      ->capture_default_str();
  cmd->add_option("--step", o->step,
                  "Use the checkpoint of this step (the job keeps its two newest; `ampctl get "
                  "JOB` shows the latest) instead of the latest")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--no-echo", o->no_echo, "Print only the generated text, not the prompt first");
  cmd->footer(
      "\nThe prompt and then the generated text go to standard output as the server produces\n"
      "them; one line with the count, the time and the checkpoint's step goes to standard\n"
      "error. The job may still be training: the server generates from its latest\n"
      "checkpoint on a backend of its own. Ctrl-C stops the generation on the server too.\n"
      "A job without a checkpoint yet exits 5 (watch it: checkpoints show as they are\n"
      "written); a job that is not a language model exits 5; too many tokens, or all of\n"
      "the server's generation slots busy, exit 6.\n\n"
      "Examples:\n"
      "  ampctl submit -f examples/shakespeare-char-fp32.yaml --watch\n"
      "  ampctl generate JOB --prompt \"ROMEO:\" --tokens 500 --temperature 0.8 --top-k 200 "
      "--seed 1\n"
      "  ampctl generate JOB --prompt \"JULIET:\" --temperature 0 --tokens 200   # greedy\n"
      "  ampctl generate JOB --step 1500 --no-echo > sample.txt"
      "\n");
  cmd->callback([&g, o, action] { *action = [&g, o] { return run_generate(g, *o); }; });
}

}  // namespace ampd::ampctl
