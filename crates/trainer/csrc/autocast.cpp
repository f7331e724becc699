// Mixed-precision switches that tch does not expose: tch's `autocast` toggles CUDA
// autocast only, always to float16. These set the device and the low-precision type
// (bfloat16 on Hopper and on CPUs with AVX512-BF16, float16 with loss scaling elsewhere).
// Every function returns -1 instead of letting a C++ exception cross into Rust.
#include <ATen/autocast_mode.h>

namespace {
at::DeviceType device_of(int cuda) { return cuda ? at::kCUDA : at::kCPU; }
}

extern "C" {

// Enables or disables autocast on the device with the given low-precision type
// (1 = bfloat16, 0 = float16); returns whether it was enabled before, or -1.
int simsiam_autocast_set(int cuda, int enabled, int bf16) {
  try {
    at::DeviceType d = device_of(cuda);
    int before = at::autocast::is_autocast_enabled(d) ? 1 : 0;
    at::autocast::set_autocast_dtype(d, bf16 ? at::kBFloat16 : at::kHalf);
    at::autocast::set_autocast_enabled(d, enabled != 0);
    return before;
  } catch (...) {
    return -1;
  }
}

// Enters (1) or leaves (0) an autocast region; leaving the outermost one drops the
// cache of low-precision weight copies. Returns the nesting depth after, or -1.
int simsiam_autocast_nesting(int enter) {
  try {
    if (enter) return at::autocast::increment_nesting();
    int depth = at::autocast::decrement_nesting();
    if (depth == 0) at::autocast::clear_cache();
    return depth;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
