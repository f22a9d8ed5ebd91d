// ampd: the mixed-precision training server and its in-process trainer.
#include <CLI/CLI.hpp>
#include <iostream>

#include "server/export_command.h"
#include "server/sample_command.h"
#include "server/serve_command.h"
#include "server/train_command.h"

int main(int argc, char** argv) {
  CLI::App app{
      "ampd trains neural networks in mixed precision (FP16 with dynamic loss scaling, BF16,\n"
      "FP32; FP32 accumulation and FP32 master weights)."};
  app.require_subcommand(1);
  app.footer("\nRun 'ampd <command> --help' for a command's options.");
  int exit_code = 0;
  ampd::server::TrainCommandOptions train;
  ampd::server::add_train_command(app, train, &exit_code);
  ampd::server::SampleCommandOptions sample;
  ampd::server::add_sample_command(app, sample, &exit_code);
  ampd::server::ExportCommandOptions export_options;
  ampd::server::add_export_command(app, export_options, &exit_code);
  ampd::server::ServeOptions serve;
  ampd::server::add_serve_command(app, serve, &exit_code);
  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
