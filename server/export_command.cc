#include "server/export_command.h"

#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>

#include "engine/checkpoint.h"
#include "engine/export_hf.h"
#include "server/command_util.h"

namespace ampd::server {

void add_export_command(CLI::App& app, ExportCommandOptions& o, int* exit_code) {
  CLI::App* cmd = app.add_subcommand(
      "export", "Write a GPT checkpoint in Hugging Face transformers' GPT-2 layout");
  cmd->footer(
      "\nExample: train, export, then generate with transformers (greedy decoding gives\n"
      "the text `ampd sample --temperature 0` gives):\n"
      "  ampd train -f examples/shakespeare-char-fp32.yaml --out /tmp/gpt\n"
      "  ampd export --format hf-gpt2 /tmp/gpt /tmp/gpt-hf\n"
      "  python3 - <<'EOF'\n"
      "  import json, torch\n"
      "  from transformers import GPT2LMHeadModel\n"
      "  model = GPT2LMHeadModel.from_pretrained('/tmp/gpt-hf')\n"
      "  v = json.load(open('/tmp/gpt-hf/vocab.json'))\n"
      "  ids = torch.tensor([[v['itos'].index(c) for c in 'ROMEO:']])\n"
      "  out = model.generate(ids, max_new_tokens=40, do_sample=False)\n"
      "  print(''.join(v['itos'][i] for i in out[0]))\n"
      "  EOF\n\n"
      "DIR receives config.json (a GPT2Config; activation_function \"gelu\", the exact erf\n"
      "GELU ampd trains with), model.safetensors (the FP32 master weights under GPT-2's\n"
      "names; the Conv1D weights attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj transposed\n"
      "to (in, out); zero biases for a bias: false model) and vocab.json (the character of\n"
      "each token id, \"itos\", and ampd's vocabulary string). There is no tokenizer: encode\n"
      "and decode with vocab.json as above. Sequences are limited to block_size tokens\n"
      "(n_positions).\n\n"
      "nanoGPT needs no export (there is no --format nanogpt): an ampd checkpoint already\n"
      "holds nanoGPT's parameter names and nn.Linear (out, in) layouts, so a nanoGPT GPT of\n"
      "the same GPTConfig loads it with model.load_state_dict(safetensors.torch.load_file(\n"
      "ckpt), strict=False): the \"optimizer.\" entries are extra, and lm_head.weight is\n"
      "tied to transformer.wte.weight.\n\n"
      "DIR is created when missing; an existing DIR must be empty unless --force, which\n"
      "replaces the three files and leaves everything else in DIR alone.\n"
      "Exit status: 0 done, 1 failed, 2 bad input (not a GPT checkpoint, DIR not empty,\n"
      "DIR not writable).");
  cmd->add_option("--format", o.format, "Output layout: hf-gpt2 (the only one)")
      ->check(CLI::Validator(
          [](const std::string& v) -> std::string {
            if (v == "hf-gpt2") return "";
            if (v == "nanogpt") {
              return "nanogpt needs no export: the checkpoint already loads into nanoGPT "
                     "(see --help)";
            }
            return "unknown format '" + v + "' (hf-gpt2 is the only one)";
          },
          "hf-gpt2", "format"))
      ->capture_default_str();
  cmd->add_option("CKPT", o.checkpoint,
                  "A GPT checkpoint file, or a job's checkpoint directory (its newest checkpoint)")
      ->required();
  cmd->add_option("DIR", o.dir, "Output directory")->required();
  cmd->add_flag("--force", o.force, "Write into DIR even when it is not empty");
  cmd->callback([&o, exit_code] { *exit_code = run_export_command(o); });
}

int run_export_command(const ExportCommandOptions& o) {
  auto file = checkpoint_file(o.checkpoint);
  if (!file.ok()) {
    std::cerr << "ampd export: " << file.status().message() << "\n";
    return exit_code_for(file.status());
  }
  const std::string path = *file;
  auto ck = engine::read_checkpoint(path);
  if (!ck.ok()) {
    std::cerr << "ampd export: " << ck.status().message() << "\n";
    return exit_code_for(ck.status());
  }
  auto done = engine::export_hf_gpt2(*ck, o.dir, o.force);
  if (!done.ok()) {
    std::cerr << "ampd export: " << path << ": " << done.status().message() << "\n";
    return exit_code_for(done.status());
  }
  std::cout << "exported " << path << " (step " << ck->meta.step << ", " << ck->meta.precision
            << ") as hf-gpt2: " << done->tensors << " tensors, " << done->parameters
            << " parameters, vocabulary " << done->vocab_size << ", context " << done->block_size
            << "\n";
  for (const auto& f : done->files) std::cout << "  " << f << "\n";
  return 0;
}

}  // namespace ampd::server
