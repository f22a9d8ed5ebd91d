// ampctl submit | watch | get | list | cancel.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "client/ampctl/ampctl.h"
#include "client/ampctl/connection.h"
#include "client/ampctl/interrupts.h"
#include "client/ampctl/output.h"
#include "proto/job_spec_io.h"
#include "proto/progress_view.h"

namespace ampd::ampctl {

namespace {

using ampd::v1::Job;
using ampd::v1::JobEvent;

struct WatchOptions {
  std::string job_id;
  int64_t since = 0;
  int reconnects = 10;
  std::string output = "text";
};

struct SubmitOptions {
  std::string file;
  bool watch = false;
  std::string request_id;
  int reconnects = 10;
  std::string output = "text";
};

struct GetOptions {
  std::string job_id;
  std::string output = "text";
};

struct ListOptions {
  std::vector<std::string> states;
  std::string output = "text";
};

struct CancelOptions {
  std::string job_id;
  std::string output = "text";
};

CLI::Option* add_output_option(CLI::App* cmd, std::string* output, const std::string& what) {
  return cmd->add_option("-o,--output", *output, "text (default) or json: " + what)
      ->check(CLI::IsMember({"text", "json"}));
}

// GetJob with the unary deadline.
grpc::Status get_job(Connection& conn, const std::string& id, Job* job) {
  auto ctx = conn.unary_context();
  ampd::v1::GetJobRequest req;
  req.set_job_id(id);
  return conn.stub().GetJob(ctx.get(), req, job);
}

// Streams a job's events until it ends, reconnecting from the last sequence number seen
// when the connection drops; then prints the summary. 0 when the job SUCCEEDED, 1 when it
// FAILED or was CANCELLED, 130 on Ctrl-C (the job keeps running).
int watch_job(Connection& conn, const WatchOptions& o) {
  const std::string what = "watch job " + o.job_id;
  const bool json = o.output == "json";
  Job job;
  // One unary call first: a wrong ID or an unreachable server is reported at once, not
  // after a round of reconnects.
  if (grpc::Status s = get_job(conn, o.job_id, &job); !s.ok()) return conn.report(s, what);

  const bool tty = !json && isatty(STDOUT_FILENO) == 1;
  client::ProgressView view(std::cout, tty);
  if (!json) {
    std::cout << "watching job " << job.id()
              << (job.spec().name().empty() ? "" : " (" + job.spec().name() + ")") << ": "
              << client::state_name(job.state());
    if (job.total_steps() > 0) std::cout << ", step " << job.step() << "/" << job.total_steps();
    std::cout << (tty ? "  [Ctrl-C stops watching; the job keeps running]" : "") << "\n";
    std::cout.flush();
  }
  auto note = [&](const std::string& text) {
    if (json) {
      std::cerr << "ampctl: " << text << "\n";
    } else {
      view.message(text);
    }
  };

  std::mutex mu;
  grpc::ClientContext* current = nullptr;  // guarded by mu
  InterruptScope scope([&] {
    std::lock_guard<std::mutex> lock(mu);
    if (current != nullptr) current->TryCancel();
  });

  int64_t last_seq = o.since;
  int failures = 0;
  for (;;) {
    auto ctx = conn.stream_context();
    {
      std::lock_guard<std::mutex> lock(mu);
      current = ctx.get();
    }
    if (interrupted()) ctx->TryCancel();
    ampd::v1::WatchJobRequest req;
    req.set_job_id(o.job_id);
    req.set_since_seq(last_seq);
    auto reader = conn.stub().WatchJob(ctx.get(), req);
    JobEvent event;
    while (reader->Read(&event)) {
      if (event.seq() != 0 && event.seq() <= last_seq) continue;  // replayed twice
      last_seq = std::max(last_seq, event.seq());
      failures = 0;
      if (json) {
        std::cout << client::to_json_line(event) << "\n";
        std::cout.flush();
      } else {
        view.on_event(event);
      }
    }
    grpc::Status status = reader->Finish();
    {
      std::lock_guard<std::mutex> lock(mu);
      current = nullptr;
    }
    if (interrupted()) {
      view.finish_line();
      std::cout.flush();
      std::cerr << "\nampctl: stopped watching job " << o.job_id << " (the job keeps running)\n"
                << "  resume:  ampctl watch " << o.job_id << " --since " << last_seq << "\n"
                << "  stop it: ampctl cancel " << o.job_id << "\n";
      return kExitInterrupted;
    }
    if (status.ok()) {
      // The stream ends when the job does; a server that closes it for another reason
      // (draining) leaves the job unfinished, which is one more reason to reconnect.
      if (grpc::Status s = get_job(conn, o.job_id, &job); !s.ok()) {
        status = s;
      } else if (is_terminal(job.state())) {
        break;
      } else {
        status = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "the server ended the stream before the job ended");
      }
    }
    // UNAVAILABLE: the connection dropped or the server is draining; CANCELLED that we did
    // not ask for: the server cancelled the call as it stopped.
    const bool retryable = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                           status.error_code() == grpc::StatusCode::CANCELLED;
    if (retryable && failures < o.reconnects) {
      ++failures;
      const double delay = std::min(5.0, 0.5 * std::pow(2.0, failures - 1));
      char delay_text[16];
      std::snprintf(delay_text, sizeof delay_text, "%g", delay);
      note("connection to ampd lost (" + short_reason(status) + "); reconnecting from event " +
           std::to_string(last_seq) + " in " + delay_text + " s (attempt " +
           std::to_string(failures) + "/" + std::to_string(o.reconnects) + ")");
      sleep_unless_interrupted(delay);  // an interrupt is handled at the top of the loop
      continue;
    }
    view.finish_line();
    if (status.error_code() == grpc::StatusCode::CANCELLED) {
      status = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            "the server cancelled the stream: " + status.error_message());
    }
    if (retryable && o.reconnects > 0) {
      std::cerr << "ampctl: gave up after " << o.reconnects << " reconnects\n";
    }
    return conn.report(status, what);
  }

  if (json) {
    std::cout << job_json(job) << "\n";
  } else {
    view.print_summary(job);
  }
  std::cout.flush();
  return job.state() == ampd::v1::SUCCEEDED ? kExitOk : kExitJobFailed;
}

int run_submit(const GlobalOptions& g, const SubmitOptions& o) {
  spec_io::ParseResult parsed;
  if (o.file == "-") {
    std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    parsed = spec_io::parse_job_spec_text(text);
    if (!parsed.ok()) parsed.message = "<stdin>: " + parsed.message;
  } else {
    parsed = spec_io::read_job_spec_file(o.file);
  }
  if (!parsed.ok()) return fail(kExitUsage, parsed.message);

  Connection conn(g);
  ampd::v1::SubmitJobRequest req;
  *req.mutable_spec() = std::move(parsed.spec);
  req.set_client_request_id(o.request_id);
  Job job;
  auto ctx = conn.unary_context();
  grpc::Status s = conn.stub().SubmitJob(ctx.get(), req, &job);
  if (!s.ok()) return conn.report(s, "submit " + o.file);

  const bool json = o.output == "json";
  if (!o.watch) {
    if (json) {
      std::cout << job_json(job) << "\n";
    } else {
      std::cout << "submitted job " << job.id()
                << (job.spec().name().empty() ? "" : " (" + job.spec().name() + ")") << ": "
                << client::state_name(job.state()) << "\n"
                << "  follow it:  ampctl watch " << job.id() << "\n"
                << "  status:     ampctl get " << job.id() << "\n";
    }
    return kExitOk;
  }
  if (!json) std::cout << "submitted job " << job.id() << "\n";
  WatchOptions w;
  w.job_id = job.id();
  w.reconnects = o.reconnects;
  w.output = o.output;
  return watch_job(conn, w);
}

int run_get(const GlobalOptions& g, const GetOptions& o) {
  Connection conn(g);
  Job job;
  if (grpc::Status s = get_job(conn, o.job_id, &job); !s.ok()) {
    return conn.report(s, "get job " + o.job_id);
  }
  if (o.output == "json") {
    std::cout << job_json(job) << "\n";
  } else {
    print_job(std::cout, job);
  }
  return kExitOk;
}

int run_list(const GlobalOptions& g, const ListOptions& o) {
  ampd::v1::ListJobsRequest req;
  for (const std::string& name : o.states) {
    std::optional<ampd::v1::JobState> state = parse_state(name);
    if (!state) {
      return fail(kExitUsage, "list: unknown state '" + name + "'; use one of " + state_names());
    }
    req.add_states(*state);
  }
  req.set_page_size(1000);
  Connection conn(g);
  std::vector<Job> jobs;
  std::set<std::string> tokens_seen;
  for (;;) {
    ampd::v1::ListJobsResponse resp;
    auto ctx = conn.unary_context();
    grpc::Status s = conn.stub().ListJobs(ctx.get(), req, &resp);
    if (!s.ok()) return conn.report(s, "list jobs");
    for (Job& job : *resp.mutable_jobs()) jobs.push_back(std::move(job));
    if (resp.next_page_token().empty() || !tokens_seen.insert(resp.next_page_token()).second) {
      break;
    }
    req.set_page_token(resp.next_page_token());
  }
  if (o.output == "json") {
    std::vector<std::string> items;
    for (const Job& job : jobs) items.push_back(job_json(job));
    std::cout << json_array(items) << "\n";
    return kExitOk;
  }
  if (jobs.empty()) {
    std::cout << (o.states.empty() ? "no jobs" : "no jobs in those states")
              << " (submit one: ampctl submit -f job.yaml)\n";
    return kExitOk;
  }
  Table table(job_table_header());
  for (const Job& job : jobs) table.add_row(job_row(job));
  table.print(std::cout);
  return kExitOk;
}

int run_cancel(const GlobalOptions& g, const CancelOptions& o) {
  Connection conn(g);
  ampd::v1::CancelJobRequest req;
  req.set_job_id(o.job_id);
  Job job;
  auto ctx = conn.unary_context();
  grpc::Status s = conn.stub().CancelJob(ctx.get(), req, &job);
  if (!s.ok()) return conn.report(s, "cancel job " + o.job_id);
  if (o.output == "json") {
    std::cout << job_json(job) << "\n";
  } else if (job.state() == ampd::v1::CANCELLED) {
    std::cout << "job " << job.id() << " cancelled\n";
  } else {
    std::cout << "cancelling job " << job.id() << " (" << client::state_name(job.state())
              << "): it stops at its next step boundary, after writing a checkpoint\n"
              << "  follow it: ampctl watch " << job.id() << "\n";
  }
  return kExitOk;
}

}  // namespace

void add_job_commands(CLI::App& app, const GlobalOptions& g, Action* action) {
  // submit
  auto submit = std::make_shared<SubmitOptions>();
  CLI::App* cmd = app.add_subcommand("submit", "Queue a training job from a YAML or JSON file");
  cmd->add_option("-f,--file", submit->file, "Job file (YAML or JSON; - reads standard input)")
      ->required();
  cmd->add_flag("-w,--watch", submit->watch,
                "Then follow it like `ampctl watch` (exit 1 if it fails or is cancelled)");
  cmd->add_option("--request-id", submit->request_id,
                  "Idempotency key (<= 128 chars): submitting again with the same ID returns "
                  "the job the first call made instead of queueing a second one");
  cmd->add_option("--reconnects", submit->reconnects,
                  "With --watch: reconnect this many times when the connection drops")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  add_output_option(cmd, &submit->output,
                    "the job as JSON; with --watch one JSON event per line, the job last");
  cmd->footer(
      "\nThe file is the protobuf JSON mapping of ampd.v1.JobSpec (proto/ampd/v1/job.proto)\n"
      "in YAML or JSON; ampctl checks its syntax, the server validates it (a rejected spec\n"
      "exits 2 with the field named).\n\n"
      "Examples:\n"
      "  ampctl submit -f examples/digits-fp16.yaml --watch\n"
      "  ampctl submit -f job.yaml --request-id nightly-2024-06-01\n"
      "  id=$(ampctl submit -f job.yaml -o json | python3 -c 'import json,sys; "
      "print(json.load(sys.stdin)[\"id\"])')"
      "\n");
  cmd->callback(
      [&g, submit, action] { *action = [&g, submit] { return run_submit(g, *submit); }; });

  // watch
  auto watch = std::make_shared<WatchOptions>();
  cmd = app.add_subcommand("watch", "Follow a job's progress live until it ends");
  cmd->add_option("job", watch->job_id, "Job ID")->required();
  cmd->add_option("--since", watch->since,
                  "Replay only events after this sequence number (0 = the whole history)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--reconnects", watch->reconnects,
                  "Reconnect this many times (from the last event seen) when the connection "
                  "drops, e.g. while the server restarts")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  add_output_option(cmd, &watch->output, "one JSON event per line, the job last");
  cmd->footer(
      "\nOn a terminal: a progress bar (step, loss, learning rate, loss scale, skipped steps,\n"
      "throughput, ETA) with overflow, evaluation and checkpoint lines above it; otherwise\n"
      "one line per event. Ctrl-C stops watching; the job keeps running on the server.\n"
      "Exit status: 0 when the job succeeded, 1 when it failed or was cancelled.\n\n"
      "Examples:\n"
      "  ampctl watch j-01a2282e7114d768\n"
      "  ampctl watch j-01a2282e7114d768 --since 120   # only what came after event 120\n"
      "  ampctl watch j-01a2282e7114d768 -o json > events.jsonl"
      "\n");
  cmd->callback([&g, watch, action] {
    *action = [&g, watch] {
      Connection conn(g);
      return watch_job(conn, *watch);
    };
  });

  // get
  auto get = std::make_shared<GetOptions>();
  cmd = app.add_subcommand("get", "Show one job: state, metrics, loss scale, checkpoint");
  cmd->add_option("job", get->job_id, "Job ID")->required();
  add_output_option(cmd, &get->output,
                    "the job (id, state, step, metrics, loss_scale, overflow_skipped_steps, "
                    "checkpoint, failure_reason, spec, ...), the fields of `ampd train --json`");
  cmd->footer(
      "\nExamples:\n"
      "  ampctl get j-01a2282e7114d768\n"
      "  ampctl get j-01a2282e7114d768 -o json | python3 -c 'import json,sys; "
      "print(json.load(sys.stdin)[\"metrics\"])'"
      "\n");
  cmd->callback([&g, get, action] { *action = [&g, get] { return run_get(g, *get); }; });

  // list
  auto list = std::make_shared<ListOptions>();
  cmd = app.add_subcommand("list", "List jobs, oldest first");
  cmd->add_option("--state", list->states,
                  "Only jobs in these states (repeat or separate with commas): " + state_names())
      ->delimiter(',');
  add_output_option(cmd, &list->output, "a JSON array of jobs as `get -o json` prints them");
  cmd->footer(
      "\nColumns: ID, STATE, NAME, PRECISION, STEP/TOTAL, VAL_ACC (last evaluation),\n"
      "LOSS_SCALE (fp16 dynamic scaling; 1 otherwise), SKIPPED (steps skipped for non-finite\n"
      "gradients), AGE (since submission).\n\n"
      "Examples:\n"
      "  ampctl list\n"
      "  ampctl list --state running --state queued\n"
      "  ampctl list --state FAILED -o json"
      "\n");
  cmd->callback([&g, list, action] { *action = [&g, list] { return run_list(g, *list); }; });

  // cancel
  auto cancel = std::make_shared<CancelOptions>();
  cmd = app.add_subcommand("cancel", "Stop a queued or running job");
  cmd->add_option("job", cancel->job_id, "Job ID")->required();
  add_output_option(cmd, &cancel->output, "the job after the request");
  cmd->footer(
      "\nA running job stops at its next step boundary, after writing a checkpoint (which\n"
      "`ampctl download` fetches). Cancelling a job that already ended exits 5.\n\n"
      "Example:\n"
      "  ampctl cancel j-01a2282e7114d768"
      "\n");
  cmd->callback(
      [&g, cancel, action] { *action = [&g, cancel] { return run_cancel(g, *cancel); }; });
}

}  // namespace ampd::ampctl
