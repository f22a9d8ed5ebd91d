// ampctl: the command-line client of `ampd serve`. Each file under client/ampctl/ adds a
// group of subcommands to the CLI11 app; a subcommand's callback only records what to
// run, and main() runs it after the whole command line has parsed.
#pragma once

#include <functional>
#include <string>

namespace CLI {
class App;
}

namespace ampd::ampctl {

// Exit statuses; the table is printed by `ampctl --help` (kExitCodesHelp).
enum ExitCode : int {
  kExitOk = 0,
  kExitJobFailed = 1,        // submit --watch / watch: the job ended FAILED or CANCELLED
  kExitUsage = 2,            // bad flags, unreadable job file, INVALID_ARGUMENT from the server
  kExitUnreachable = 3,      // cannot connect, UNAVAILABLE (draining), no answer in --timeout
  kExitNotFound = 4,         // no such job or data set
  kExitConflict = 5,         // FAILED_PRECONDITION (job already ended, no checkpoint yet),
                             // ALREADY_EXISTS (data set name taken)
  kExitExhausted = 6,        // RESOURCE_EXHAUSTED: queue full, upload too large, no memory
  kExitUnauthenticated = 7,  // UNAUTHENTICATED / PERMISSION_DENIED: check --token
  kExitError = 10,           // anything else (internal error, local I/O failure)
  kExitInterrupted = 130,    // Ctrl-C (watch: the job keeps running)
};

extern const char kExitCodesHelp[];

// Options before the subcommand, shared by every command.
struct GlobalOptions {
  std::string server = "127.0.0.1:50051";
  double timeout_s = 30;
  std::string token;
};

// What main() runs once parsing succeeded; returns the exit status.
using Action = std::function<int()>;

// Registration: each adds its subcommands and, when one is chosen, sets *action.
void add_job_commands(CLI::App& app, const GlobalOptions& global, Action* action);
void add_transfer_commands(CLI::App& app, const GlobalOptions& global, Action* action);
void add_info_command(CLI::App& app, const GlobalOptions& global, Action* action);

}  // namespace ampd::ampctl
