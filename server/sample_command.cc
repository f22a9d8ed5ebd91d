#include "server/sample_command.h"

#include <CLI/CLI.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "engine/checkpoint.h"
#include "engine/sampler.h"
#include "kernels/backend_factory.h"
#include "server/command_util.h"

namespace ampd::server {

namespace {

// A float32 array of shape (rows, cols) as a .npy file (format version 1.0, little-endian,
// C order), numpy.load's format.
Status write_npy_f32(const std::string& path, const std::vector<float>& values, int64_t rows,
                     int64_t cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "), }";
  // magic (6) + version (2) + header length (2) + header, padded to 64 bytes with '\n' last.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return failed_precondition("cannot create " + path + ": " + std::strerror(errno));
  const auto hlen = static_cast<uint16_t>(header.size());
  std::string prefix("\x93NUMPY\x01\x00", 8);  // magic, version 1.0
  prefix.push_back(static_cast<char>(hlen & 0xff));
  prefix.push_back(static_cast<char>(hlen >> 8));
  f.write(prefix.data(), static_cast<std::streamsize>(prefix.size()));
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  // The host is little-endian (x86-64, aarch64), as is '<f4'.
  f.write(reinterpret_cast<const char*>(values.data()),
          static_cast<std::streamsize>(values.size() * sizeof(float)));
  f.close();
  if (!f) return internal("cannot write " + path);
  return Status::ok_status();
}

}  // namespace

void add_sample_command(CLI::App& app, SampleCommandOptions& o, int* exit_code) {
  CLI::App* cmd = app.add_subcommand(
      "sample", "Generate text from a language model's checkpoint (nanoGPT's sample.py)");
  cmd->footer(
      "\nExamples:\n"
      "  ampd train -f examples/shakespeare-char-fp32.yaml --out /tmp/gpt\n"
      "  ampd sample --checkpoint /tmp/gpt --prompt \"ROMEO:\" --tokens 500\n"
      "  ampd sample --checkpoint /tmp/gpt/step-2000.safetensors --temperature 0 --tokens 100\n\n"
      "The text is printed as it is produced. The same checkpoint, prompt and --seed give the\n"
      "same text. --temperature 0 picks the most likely character every time.\n\n"
      "--logits-out FILE generates nothing: it writes the logits the model gives at each\n"
      "position of the prompt (at most block_size characters) to FILE, a float32 .npy\n"
      "array of shape (prompt length, vocabulary size), e.g. to compare with an export:\n"
      "  ampd sample --checkpoint /tmp/gpt --prompt \"ROMEO:\" --logits-out /tmp/logits.npy\n"
      "  python3 -c 'import numpy; print(numpy.load(\"/tmp/logits.npy\").shape)'\n"
      "Exit status: 0 done, 1 failed, 2 bad input, 3 backend unavailable.");
  cmd->add_option("--checkpoint", o.checkpoint,
                  "A checkpoint file, or a job's checkpoint directory (its newest checkpoint)")
      ->required();
  cmd->add_option("--prompt", o.prompt, "Text to continue (default: a newline)");
  cmd->add_option("--tokens", o.tokens, "Characters to generate")->capture_default_str();
  cmd->add_option("--temperature", o.temperature,
                  "Divide the logits by this (< 1 sharper, > 1 wilder; 0 = greedy)")
      ->capture_default_str();
  cmd->add_option("--top-k", o.top_k, "Sample among the k most likely (0 = all)")
      ->capture_default_str();
  cmd->add_option("--seed", o.seed, "Random seed")->capture_default_str();
  cmd->add_option("--backend", o.backend, "auto | cpu | cuda | reference")->capture_default_str();
  cmd->add_option("--threads", o.threads, "CPU threads (0 = all cores)")->capture_default_str();
  cmd->add_option("--logits-out", o.logits_out,
                  "Write the prompt's per-position logits (float32 .npy, length x vocabulary) "
                  "to this file instead of generating");
  cmd->callback([&o, exit_code] { *exit_code = run_sample_command(o); });
}

int run_sample_command(const SampleCommandOptions& o) {
  auto file = checkpoint_file(o.checkpoint);
  if (!file.ok()) {
    std::cerr << "ampd sample: " << file.status().message() << "\n";
    return exit_code_for(file.status());
  }
  const std::string path = *file;
  BackendRequest req;
  req.kind = o.backend;
  req.threads = o.threads;
  auto choice = create_backend(req);
  if (!choice.ok()) {
    std::cerr << "ampd sample: backend: " << choice.status().message() << "\n";
    return exit_code_for(choice.status());
  }
  auto sampler = engine::Sampler::create(*choice->backend, path);
  if (!sampler.ok()) {
    std::cerr << "ampd sample: " << sampler.status().message() << "\n";
    return exit_code_for(sampler.status());
  }
  if (!o.logits_out.empty()) {
    auto logits = (*sampler)->prompt_logits(o.prompt.empty() ? "\n" : o.prompt);
    Status st = logits.status();
    if (st.ok()) {
      const auto rows = static_cast<int64_t>(logits->size()) / (*sampler)->vocabulary().size();
      st = write_npy_f32(o.logits_out, *logits, rows, (*sampler)->vocabulary().size());
    }
    if (!st.ok()) {
      std::cerr << "ampd sample: " << st.message() << "\n";
      return exit_code_for(st);
    }
    return 0;
  }
  engine::SampleOptions so;
  so.prompt = o.prompt.empty() ? "\n" : o.prompt;
  so.max_tokens = o.tokens;
  so.temperature = o.temperature;
  so.top_k = o.top_k;
  so.seed = o.seed;
  if (Status st = (*sampler)->check(so); !st.ok()) {
    std::cerr << "ampd sample: " << st.message() << "\n";
    return exit_code_for(st);
  }
  std::cout << so.prompt << std::flush;
  const Status st = (*sampler)->generate(so, [](const std::string& text) {
    std::cout << text << std::flush;
    return true;
  });
  std::cout << "\n";
  if (!st.ok()) {
    std::cerr << "ampd sample: " << st.message() << "\n";
    return exit_code_for(st);
  }
  return 0;
}

}  // namespace ampd::server
