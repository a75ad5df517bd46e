// The live part of `eplb demo` (tools/demo_gpu.cc).
#pragma once

namespace eplb_cli {

// Runs the real pipeline on every visible GPU (up to 8) and prints what it
// measured; prints a line and returns 0 when no GPU is visible. Returns
// non-zero after printing the reason when a step fails. Blocks.
int RunGpuDemo();

}  // namespace eplb_cli
