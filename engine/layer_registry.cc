#include "engine/layer_registry.h"

#include <algorithm>
#include <array>
#include <cctype>

namespace ampd::engine {

namespace {

constexpr std::array<const LayerKind*, 11> kLayerKinds = {
    &kLinearLayer,
    &kReluLayer,
    &kGeluLayer,
    &kTanhLayer,
    &kLayerNormLayer,
    &kBatchNormLayer,
    &kDropoutLayer,
    &kResidualLayer,
    &kEmbeddingLayer,
    &kPositionEmbeddingLayer,
    &kCausalSelfAttentionLayer,
};

}  // namespace

std::span<const LayerKind* const> layer_kinds() {
  return kLayerKinds;
}

const LayerKind* find_layer_kind(ampd::v1::LayerSpec::KindCase kind_case) {
  for (const LayerKind* k : kLayerKinds) {
    if (k->kind_case == kind_case) return k;
  }
  return nullptr;
}

StatusOr<std::unique_ptr<Layer>> make_layer(const ampd::v1::LayerSpec& spec) {
  const LayerKind* k = find_layer_kind(spec.kind_case());
  if (k == nullptr)
    return invalid_argument("layer has no kind (expected one of " + layer_kind_list() + ")");
  return k->make(spec);
}

std::string_view layer_kind_name(const ampd::v1::LayerSpec& spec) {
  const LayerKind* k = find_layer_kind(spec.kind_case());
  return k != nullptr ? k->name : "none";
}

std::string layer_kind_list() {
  std::string out;
  for (const LayerKind* k : kLayerKinds) {
    if (!out.empty()) out += ", ";
    out += k->name;
  }
  return out;
}

void resolve_layers(google::protobuf::RepeatedPtrField<ampd::v1::LayerSpec>* layers,
                    const std::string& path, int depth, SpecChecker& checker) {
  if (depth > kMaxNesting) {
    checker.add(path, "residual blocks nest at most " + std::to_string(kMaxNesting) + " deep");
    return;
  }
  for (int i = 0; i < layers->size(); ++i) {
    ampd::v1::LayerSpec* layer = layers->Mutable(i);
    const std::string at = path + "[" + std::to_string(i) + "]";
    const LayerKind* kind = find_layer_kind(layer->kind_case());
    if (kind == nullptr) {
      checker.add(at, "no layer kind; set one of " + layer_kind_list() + " (e.g. `relu: {}`)");
      continue;
    }
    kind->resolve(*layer, at, depth, checker);
    const std::string& name = layer->name();
    const bool valid_name =
        name.size() <= 128 && (name.empty() || (name.front() != '.' && name.back() != '.')) &&
        std::all_of(name.begin(), name.end(), [](char ch) {
          return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.';
        });
    if (!valid_name) {
      checker.add(at + ".name",
                  "at most 128 letters, digits, '_' and '.', not starting or ending with '.'");
    }
  }
}

int count_layers(const google::protobuf::RepeatedPtrField<ampd::v1::LayerSpec>& layers) {
  int n = 0;
  for (const auto& layer : layers) {
    n += 1 + (layer.has_residual() ? count_layers(layer.residual().layers()) : 0);
  }
  return n;
}

}  // namespace ampd::engine
