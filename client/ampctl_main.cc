// ampctl: the command-line client of `ampd serve` (submit, watch, get, list, cancel,
// download, datasets, info, generate). See `ampctl --help`.
#include <stdlib.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "client/ampctl/ampctl.h"
#include "client/ampctl/interrupts.h"

#ifndef AMPD_VERSION
#define AMPD_VERSION "unknown"
#endif

namespace ampd::ampctl {

const char kExitCodesHelp[] =
    "Exit status:\n"
    "  0    ok (submit --watch / watch: the job SUCCEEDED)\n"
    "  1    the job ended FAILED or CANCELLED (submit --watch, watch)\n"
    "  2    usage error, unreadable job file, or the server rejected an argument (the\n"
    "       message names the field)\n"
    "  3    server unreachable, unavailable (shutting down) or no answer within --timeout;\n"
    "       also a failed TLS handshake (TLS on one side only, an untrusted certificate)\n"
    "  4    no such job or data set\n"
    "  5    not possible in the current state: the job already ended (cancel), it has no\n"
    "       checkpoint yet (download, generate), it is not a language model (generate),\n"
    "       the data set name is taken (upload)\n"
    "  6    server resource exhausted: job queue full, upload too large, not enough memory,\n"
    "       too many tokens or too many generations at once (generate)\n"
    "  7    not authenticated: give the server's token with --token-file (or AMPD_TOKEN_FILE,\n"
    "       AMPD_TOKEN)\n"
    "  10   any other error\n"
    "  130  interrupted (Ctrl-C); for watch the job keeps running\n";

}  // namespace ampd::ampctl

int main(int argc, char** argv) {
  using namespace ampd::ampctl;
  // gRPC's own log lines (a failed TLS handshake prints one) would repeat, less clearly,
  // what ampctl says about the failure; GRPC_VERBOSITY=ERROR brings them back.
  ::setenv("GRPC_VERBOSITY", "NONE", /*overwrite=*/0);
  install_interrupt_thread();

  CLI::App app{
      "ampctl talks to an ampd server (`ampd serve`): it submits training jobs, follows\n"
      "their progress, moves data sets and checkpoints, and generates text from language\n"
      "models.",
      "ampctl"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may also follow the subcommand
  app.set_version_flag("--version", std::string("ampctl ") + AMPD_VERSION);
  GlobalOptions global;
  app.add_option("--server", global.server, "ampd's gRPC address: host:port or unix:/path")
      ->envname("AMPD_SERVER")
      ->capture_default_str();
  app.add_option("--timeout", global.timeout_s,
                 "Seconds to wait for an answer to a request (streams such as watch and "
                 "download run as long as they need)")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](const std::string& text) {
            double v = 0;
            return CLI::detail::lexical_cast(text, v) && v > 0 ? std::string()
                                                               : "must be a number of seconds > 0";
          },
          "SECONDS", "seconds"));
  add_security_options(app, global);

  Action action;
  add_job_commands(app, global, &action);
  add_transfer_commands(app, global, &action);
  add_info_command(app, global, &action);
  add_generate_command(app, global, &action);
  app.footer(
      std::string("\nExamples:\n"
                  "  ampd serve &                                   # start a server\n"
                  "  ampctl info                                    # is it up? what "
                  "does it run on?\n"
                  "  ampctl submit -f examples/digits-fp16.yaml --watch\n"
                  "  ampctl list --state running\n"
                  "  ampctl get JOB -o json\n"
                  "  ampctl download JOB -o digits.safetensors\n"
                  "  ampctl generate JOB --prompt \"ROMEO:\" --tokens 500   # a GPT job's text\n"
                  "  ampctl --server gpu-box:50051 datasets upload iris.csv iris.csv\n"
                  "  ampctl --server gpu-box:50051 --ca-cert ca.crt --token-file ~/.ampd-token "
                  "list\n\n"
                  "A server started with --tls-cert needs --tls or --ca-cert (AMPD_CA_CERT);\n"
                  "one started with --token-file needs the same token: --token-file FILE\n"
                  "(AMPD_TOKEN_FILE) or AMPD_TOKEN. ampctl never prints the token.\n\n"
                  "Run 'ampctl <command> --help' for a command's options and examples.\n\n") +
      kExitCodesHelp);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help, the version, or the error
    return code == 0 ? kExitOk : kExitUsage;
  }
  if (!action) return kExitUsage;
  if (const int code = resolve_security(global); code != kExitOk) return code;
  return action();
}
