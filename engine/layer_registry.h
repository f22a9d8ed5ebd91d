// The layer kinds: one entry per LayerSpec oneof field, the only place a kind is listed.
//
// An entry says everything the engine needs to know about a kind: its spec validation
// and defaults (resolve), and how to make the layer (make). The layer itself builds its
// parameters (and so their checkpoint names, "<prefix>.weight"), its buffers and its
// memory figure (a dry-run build counts what a real one allocates, engine/layers.h).
//
// Adding a kind (docs/ARCHITECTURE.md, "Adding a layer kind"):
//   1. its message and oneof field in proto/ampd/v1/job.proto (LayerSpec),
//   2. its layer file engine/layers/<kind>.cc defining the Layer and `extern const
//      LayerKind k<Kind>Layer` (resolve + make),
//   3. one line in kLayerKinds in engine/layer_registry.cc (and its declaration below),
//   4. its tests: tests/engine/test_layers.cc (finite differences, low-precision
//      forward); LayerRegistry.EveryLayerSpecKindHasOneEntry (tests/engine/test_model.cc)
//      fails for a LayerSpec field without an entry.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "ampd/v1/job.pb.h"
#include "engine/layers.h"
#include "engine/spec_checker.h"

namespace ampd::engine {

struct LayerKind {
  std::string_view name;  // the LayerSpec oneof field: "linear"
  ampd::v1::LayerSpec::KindCase kind_case;
  // Checks the kind's message and fills every default; `path` is the layer's
  // ("model.layers[2].residual.layers[0]"), errors name "<path>.<name>.<field>"; `depth`
  // is its residual nesting (0 at the model's top level).
  void (*resolve)(ampd::v1::LayerSpec& spec, const std::string& path, int depth,
                  SpecChecker& checker);
  // A new layer, not yet built.
  std::unique_ptr<Layer> (*make)(const ampd::v1::LayerSpec& spec);
};

extern const LayerKind kLinearLayer;
extern const LayerKind kReluLayer;
extern const LayerKind kGeluLayer;
extern const LayerKind kTanhLayer;
extern const LayerKind kLayerNormLayer;
extern const LayerKind kBatchNormLayer;
extern const LayerKind kDropoutLayer;
extern const LayerKind kResidualLayer;
extern const LayerKind kEmbeddingLayer;
extern const LayerKind kPositionEmbeddingLayer;
extern const LayerKind kCausalSelfAttentionLayer;

// Every kind, in LayerSpec field order.
std::span<const LayerKind* const> layer_kinds();
// The entry of a spec's kind, or nullptr when none is set.
const LayerKind* find_layer_kind(ampd::v1::LayerSpec::KindCase kind_case);
// "linear", ..., or "none".
std::string_view layer_kind_name(const ampd::v1::LayerSpec& spec);
// "linear, relu, gelu, ..." for messages.
std::string layer_kind_list();

// Limits on a model's shape (hostile specs): layers in all, and residual nesting.
inline constexpr int kMaxLayers = 256;
inline constexpr int kMaxNesting = 8;
// Widest layer (features), and widest data.
inline constexpr int kMaxWidth = 65536;

// Resolves a list of layers (the model's, or a residual block's at `depth` > 0): each
// entry must have a kind, then that kind's own rules apply.
void resolve_layers(google::protobuf::RepeatedPtrField<ampd::v1::LayerSpec>* layers,
                    const std::string& path, int depth, SpecChecker& checker);
// Layers in a list, blocks' layers included.
int count_layers(const google::protobuf::RepeatedPtrField<ampd::v1::LayerSpec>& layers);

}  // namespace ampd::engine
