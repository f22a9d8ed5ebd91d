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
  kExitUnreachable = 3,      // cannot connect (also: TLS handshake failed), UNAVAILABLE
                             // (draining), no answer in --timeout
  kExitNotFound = 4,         // no such job or data set
  kExitConflict = 5,         // FAILED_PRECONDITION (job already ended, no checkpoint yet,
                             // not a language model), ALREADY_EXISTS (data set name taken)
  kExitExhausted = 6,        // RESOURCE_EXHAUSTED: queue full, upload too large, no memory,
                             // generation limits
  kExitUnauthenticated = 7,  // UNAUTHENTICATED / PERMISSION_DENIED: check --token-file
  kExitError = 10,           // anything else (internal error, local I/O failure)
  kExitInterrupted = 130,    // Ctrl-C (watch: the job keeps running)
};

extern const char kExitCodesHelp[];

// Options before the subcommand, shared by every command.
struct GlobalOptions {
  std::string server = "127.0.0.1:50051";
  double timeout_s = 30;
  // The bearer token: --token, or read from --token-file; without either flag, from
  // AMPD_TOKEN or AMPD_TOKEN_FILE (resolve_security).
  std::string token;
  std::string token_file;
  // TLS: --tls, implied by any of the files or the name below.
  bool tls = false;
  std::string ca_cert;          // PEM roots to trust ("" = the system's)
  std::string tls_server_name;  // the name the certificate must carry ("" = the host)
  std::string client_cert;      // mutual TLS: this client's certificate and key
  std::string client_key;

  // Filled by resolve_security from the above.
  std::string token_source;  // "--token-file /x", "AMPD_TOKEN", ... ("" = no token)
  std::string ca_pem, client_cert_pem, client_key_pem;
};

// Registers --token, --token-file, --tls, --ca-cert, --tls-server-name, --client-cert and
// --client-key (ampctl/security.cc).
void add_security_options(CLI::App& app, GlobalOptions& global);

// After parsing: reads the token and the TLS files named by flags or the environment.
// kExitOk, or kExitUsage after printing which flag and file is wrong (never the token).
int resolve_security(GlobalOptions& global);

// What main() runs once parsing succeeded; returns the exit status.
using Action = std::function<int()>;

// Registration: each adds its subcommands and, when one is chosen, sets *action.
void add_job_commands(CLI::App& app, const GlobalOptions& global, Action* action);
void add_transfer_commands(CLI::App& app, const GlobalOptions& global, Action* action);
void add_info_command(CLI::App& app, const GlobalOptions& global, Action* action);
void add_generate_command(CLI::App& app, const GlobalOptions& global, Action* action);

}  // namespace ampd::ampctl
