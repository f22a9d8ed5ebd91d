#include "server/train_command.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <filesystem>
#include <iostream>

#include "engine/job_spec.h"
#include "engine/trainer.h"
#include "kernels/backend_factory.h"
#include "proto/progress_view.h"
#include "server/command_util.h"

namespace ampd::server {

namespace {

std::atomic<bool> g_cancel{false};
extern "C" void on_interrupt(int) {
  g_cancel.store(true);
}

}  // namespace

void add_train_command(CLI::App& app, TrainCommandOptions& o, int* exit_code) {
  CLI::App* train = app.add_subcommand(
      "train", "Run one training job in this process (no server): ampd train -f job.yaml");
  train->footer(
      "\nExamples:\n"
      "  ampd train -f examples/digits-fp16.yaml\n"
      "  ampd train -f examples/digits-bf16.yaml --json > events.jsonl\n"
      "  ampd train --resume out/digits/step-100.safetensors\n\n"
      "The job file is YAML or JSON (the protobuf JSON mapping of ampd.v1.JobSpec, see\n"
      "proto/ampd/v1/job.proto). Ctrl-C stops at the next step and writes a checkpoint.\n"
      "Exit status: 0 succeeded, 1 failed, 2 bad input, 3 backend unavailable, 130 cancelled.");
  train->add_option("-f,--file", o.job_file, "Job spec (YAML or JSON)")->check(CLI::ExistingFile);
  train->add_option("--backend", o.backend, "auto | cpu | cuda | reference")->capture_default_str();
  train->add_option("--threads", o.threads, "CPU threads (0 = all cores)")->capture_default_str();
  train->add_option("--out", o.out_dir, "Checkpoint directory (default: ampd-out/<job name>)");
  train->add_option("--data-dir", o.data_dir, "Root for csv data paths")->capture_default_str();
  train->add_option("--resume", o.resume, "Continue from this checkpoint (its spec is used)")
      ->check(CLI::ExistingFile);
  train->add_flag("--json", o.json,
                  "One JSON object per event per line; the last line is the job summary");
  train->add_flag("-q,--quiet", o.quiet, "Only the summary");
  train->callback([&o, exit_code] {
    if (o.job_file.empty() && o.resume.empty()) {
      throw CLI::ValidationError("train", "give a job file with -f, or --resume CHECKPOINT");
    }
    *exit_code = run_train_command(o);
  });
}

int run_train_command(const TrainCommandOptions& o) {
  ampd::v1::JobSpec spec;
  if (!o.job_file.empty()) {
    auto loaded = engine::load_job_spec_file(o.job_file);
    if (!loaded.ok()) {
      std::cerr << "ampd train: " << loaded.status().message() << "\n";
      return 2;
    }
    spec = std::move(loaded).value();
  }
  BackendRequest req;
  req.kind = o.backend;
  req.threads = o.threads;
  auto choice = create_backend(req);
  if (!choice.ok()) {
    std::cerr << "ampd train: backend: " << choice.status().message() << "\n";
    return exit_code_for(choice.status());
  }
  if (!choice->note.empty()) std::cerr << "ampd: " << choice->note << "\n";
  Backend& backend = *choice->backend;

  std::string name = spec.name().empty() ? "job" : spec.name();
  engine::TrainerOptions topts;
  topts.job_id = name;
  topts.data_dir = o.data_dir;
  topts.resume_from = o.resume;
  topts.checkpoint_dir =
      o.out_dir.empty() ? (std::filesystem::path("ampd-out") / name).string() : o.out_dir;
  topts.cancel = &g_cancel;
  const bool tty = !o.json && ::isatty(STDOUT_FILENO) != 0;
  client::ProgressView view(std::cout, tty);
  topts.on_event = [&](const ampd::v1::JobEvent& e) {
    if (o.json) {
      std::cout << client::to_json_line(e) << "\n";
    } else if (!o.quiet) {
      view.on_event(e);
    }
  };
  auto trainer = engine::Trainer::create(backend, spec, std::move(topts));
  if (!trainer.ok()) {
    std::cerr << "ampd train: " << trainer.status().message() << "\n";
    return exit_code_for(trainer.status());
  }
  if (!o.json && !o.quiet) {
    const auto& t = **trainer;
    if (t.text() != nullptr) {
      std::cout << "ampd train: " << t.text()->describe() << "; ";
    } else {
      std::cout << "ampd train: " << t.data().train.describe() << " (train) + "
                << t.data().validation.num_examples << " validation; ";
    }
    std::cout << t.model().parameter_count() << " parameters; " << t.job().precision() << " on "
              << backend.device_description() << "; " << t.total_steps() << " steps\n";
  }
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
  const ampd::v1::Job job = (*trainer)->run();
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  if (o.json) {
    std::cout << client::to_json_line(job) << std::endl;
  } else {
    view.print_summary(job);
  }
  switch (job.state()) {
    case ampd::v1::SUCCEEDED: return 0;
    case ampd::v1::CANCELLED: return 130;
    default: return 1;
  }
}

}  // namespace ampd::server
