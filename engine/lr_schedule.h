// Learning-rate schedules: optional linear warm-up, then constant or cosine decay.
// The schedule is a pure function of the number of *applied* optimizer steps, so a
// skipped (overflow) step does not advance it, and a resumed job needs no extra state.
#pragma once

#include <cstdint>

#include "ampd/v1/job.pb.h"

namespace ampd::engine {

class LrSchedule {
 public:
  // peak_lr: the optimizer's lr. total_steps: the job's step budget (cosine horizon).
  LrSchedule(const ampd::v1::LrScheduleSpec& spec, double peak_lr, int64_t total_steps);

  // The learning rate for the optimizer step that follows `applied_steps` applied steps
  // (0-based): warm-up gives peak * (applied + 1) / warmup_steps.
  double lr(int64_t applied_steps) const;

 private:
  double peak_;
  int64_t warmup_;
  int64_t total_;
  bool cosine_;
  double min_ratio_;
};

}  // namespace ampd::engine
