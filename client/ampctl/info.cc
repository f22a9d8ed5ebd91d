// ampctl info: what the server runs on and how busy it is.
#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>
#include <string>

#include "client/ampctl/ampctl.h"
#include "client/ampctl/connection.h"
#include "client/ampctl/output.h"
#include "proto/progress_view.h"

namespace ampd::ampctl {

namespace {

struct InfoOptions {
  std::string output = "text";
};

int run_info(const GlobalOptions& g, const InfoOptions& o) {
  Connection conn(g);
  auto ctx = conn.unary_context();
  ampd::v1::ServerInfo info;
  grpc::Status s = conn.stub().GetServerInfo(ctx.get(), ampd::v1::GetServerInfoRequest(), &info);
  if (!s.ok()) return conn.report(s, "info");
  if (o.output == "json") {
    std::cout << client::to_json_line(info) << "\n";
    return kExitOk;
  }
  std::string precisions;
  for (const std::string& p : info.precisions()) precisions += (precisions.empty() ? "" : ", ") + p;
  std::cout << "ampd " << info.version() << " at " << conn.server() << "\n"
            << "  backend:       " << info.backend()
            << (info.device().empty() ? "" : " (" + info.device() + ")") << "\n"
            << "  precisions:    " << (precisions.empty() ? "-" : precisions) << "\n";
  if (info.device_memory_bytes() > 0) {
    std::cout << "  device memory: " << format_bytes(info.device_memory_bytes()) << "\n";
  }
  std::cout << "  queue:         " << info.queued_jobs() << " queued";
  if (info.max_queued_jobs() > 0) std::cout << " (at most " << info.max_queued_jobs() << ")";
  std::cout << "\n"
            << "  running:       " << (info.running_job().empty() ? "-" : info.running_job())
            << "\n";
  return kExitOk;
}

}  // namespace

void add_info_command(CLI::App& app, const GlobalOptions& g, Action* action) {
  auto info = std::make_shared<InfoOptions>();
  CLI::App* cmd =
      app.add_subcommand("info", "Show the server: version, backend and device, precisions, queue");
  cmd->add_option("-o,--output", info->output, "text (default) or json: the ServerInfo message")
      ->check(CLI::IsMember({"text", "json"}));
  cmd->footer(
      "\nAlso a readiness check: exits 0 when the server answers, 3 when it cannot be "
      "reached.\n\n"
      "Examples:\n"
      "  ampctl info\n"
      "  until ampctl --timeout 1 info >/dev/null 2>&1; do sleep 0.2; done   # wait for it"
      "\n");
  cmd->callback([&g, info, action] { *action = [&g, info] { return run_info(g, *info); }; });
}

}  // namespace ampd::ampctl
