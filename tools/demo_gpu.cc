// The live part of `eplb demo`: when GPUs are present, the real pipeline on
// every visible GPU — one thread and one NCCL rank per GPU, expert weights
// in device memory, routing fed through eplbRouteCount, one eplbStateStep per
// forward pass — and the figures it measures. Public C API only.
#include "demo_gpu.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "eplb/eplb.h"

namespace eplb_cli {
namespace {

constexpr int kLayers = 58, kExperts = 256, kTopK = 8, kGroups = 8;
constexpr int kTokens = 4096;    // tokens per rank and forward pass
constexpr int kSteps = 240;      // forward passes
constexpr int kInterval = 80;    // rearrangement interval (first at 60)
constexpr int kShiftStep = 140;  // popularity changes abruptly here
// One expert's bundle: three tensors of different row sizes (scaled-down
// gate/up, down and block scales of a DeepSeek-V3 expert).
constexpr size_t kTensorBytes[3] = {512 * 1024, 256 * 1024, 8 * 1024};

struct Failure {
  std::string what;
};

void Cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Failure{std::string(what) + ": " + cudaGetErrorString(e)};
}
void Eplb(eplbStatus_t s, const char* what) {
  if (s != EPLB_SUCCESS) throw Failure{std::string(what) + ": " + eplbGetLastErrorDetail()};
}

uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Top-k ids of `tokens` tokens: K distinct experts per token drawn from a
// Zipf(1.1) popularity whose ranking is a seeded permutation of the experts.
std::vector<int32_t> RoutingBatch(uint64_t seed, int tokens) {
  std::vector<int32_t> perm(kExperts);
  for (int e = 0; e < kExperts; ++e) perm[e] = e;
  uint64_t s = seed;
  for (int e = kExperts - 1; e > 0; --e) {
    s = Mix(s);
    std::swap(perm[e], perm[s % static_cast<uint64_t>(e + 1)]);
  }
  std::vector<double> cdf(kExperts);
  double acc = 0;
  for (int k = 0; k < kExperts; ++k) cdf[k] = (acc += 1.0 / std::pow(k + 1.0, 1.1));
  std::vector<int32_t> ids(static_cast<size_t>(tokens) * kTopK);
  for (int t = 0; t < tokens; ++t) {
    int32_t* row = &ids[static_cast<size_t>(t) * kTopK];
    for (int k = 0; k < kTopK;) {
      s = Mix(s);
      double u = static_cast<double>(s >> 11) * 0x1.0p-53 * acc;
      int e = perm[std::lower_bound(cdf.begin(), cdf.end(), u) - cdf.begin()];
      if (std::find(row, row + k, e) == row + k) row[k++] = e;
    }
  }
  return ids;
}

struct RankResult {
  std::vector<double> balance;  // [kSteps] per-step balancedness (STATS)
  std::vector<eplbStateStats_t> rearrangements;
  std::vector<int64_t> at_step;
  double bundle_mb = 0;
};

void RunRank(int rank, int num_ranks, ncclComm_t comm, RankResult* out) {
  Cuda(cudaSetDevice(rank), "cudaSetDevice");
  cudaStream_t stream;
  Cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  const int P = kExperts + 32;  // 32 redundant slots
  const int local = P / num_ranks;

  // Two routing regimes per layer (before and after the shift), different on
  // every rank: the rank's own tokens.
  std::vector<int32_t*> d_ids(2 * kLayers);
  for (int regime = 0; regime < 2; ++regime)
    for (int l = 0; l < kLayers; ++l) {
      std::vector<int32_t> h = RoutingBatch(
          Mix(1000003ull * l + 7919ull * regime) ^ Mix(static_cast<uint64_t>(rank)), kTokens);
      int32_t*& d = d_ids[regime * kLayers + l];
      Cuda(cudaMalloc(&d, h.size() * sizeof(int32_t)), "cudaMalloc ids");
      Cuda(cudaMemcpy(d, h.data(), h.size() * sizeof(int32_t), cudaMemcpyHostToDevice), "ids");
    }
  int32_t* d_phys = nullptr;
  Cuda(cudaMalloc(&d_phys, sizeof(int32_t) * kTokens * kTopK), "cudaMalloc phys");

  // Staging: the exact worst case for this shape and bundle.
  eplbExchangeConfig_t xc = EPLB_EXCHANGE_CONFIG_INIT;
  xc.num_layers = kLayers;
  xc.num_physical_experts = P;
  xc.num_ranks = num_ranks;
  xc.rank = rank;
  std::vector<size_t> tensor_bytes(static_cast<size_t>(kLayers) * EPLB_EXCHANGE_MAX_TENSORS, 0);
  for (int l = 0; l < kLayers; ++l)
    for (int t = 0; t < 3; ++t) tensor_bytes[l * EPLB_EXCHANGE_MAX_TENSORS + t] = kTensorBytes[t];
  size_t min_staging = 0;
  Eplb(eplbExchangeStagingQuery(&xc, tensor_bytes.data(), nullptr, nullptr, &min_staging, nullptr),
       "eplbExchangeStagingQuery");

  eplbStateConfig_t cfg = EPLB_STATE_CONFIG_INIT;
  cfg.num_layers = kLayers;
  cfg.num_logical_experts = kExperts;
  cfg.num_physical_experts = P;
  cfg.num_groups = kGroups;
  cfg.num_nodes = 1;
  cfg.num_ranks = num_ranks;
  cfg.rank = rank;
  cfg.window_size = kInterval;
  cfg.step_interval = kInterval;
  cfg.staging_bytes = 2 * min_staging;
  // A second communicator for the weight exchange, made once here as an
  // engine would at start-up (collective over the ranks' threads).
  ncclComm_t comm2 = nullptr;
  if (num_ranks > 1) {
    if (ncclCommSplit(comm, 0, rank, &comm2, nullptr) != ncclSuccess) {
      std::fprintf(stderr, "ncclCommSplit failed\n");
      std::exit(1);
    }
  }
  cfg.overlap_comm = comm2;
  eplbState_t state = nullptr;
  Eplb(eplbStateCreate(&cfg, comm, &state), "eplbStateCreate");

  std::vector<void*> weights;
  for (int l = 0; l < kLayers; ++l) {
    eplbTensorDesc_t desc[3];
    for (int t = 0; t < 3; ++t) {
      void* d = nullptr;
      Cuda(cudaMalloc(&d, kTensorBytes[t] * local), "cudaMalloc weights");
      Cuda(cudaMemset(d, l + t, kTensorBytes[t] * local), "cudaMemset weights");
      weights.push_back(d);
      desc[t] = {d, kTensorBytes[t], kTensorBytes[t]};
    }
    Eplb(eplbStateRegisterLayer(state, l, desc, 3), "eplbStateRegisterLayer");
  }
  out->bundle_mb = (kTensorBytes[0] + kTensorBytes[1] + kTensorBytes[2]) / 1048576.0;

  eplbStateDeviceMaps_t maps = EPLB_STATE_DEVICE_MAPS_INIT;
  Eplb(eplbStateGetDeviceMaps(state, &maps), "eplbStateGetDeviceMaps");
  const int width = P - kExperts + 1;
  int64_t rearrangements = 0;
  for (int step = 0; step < kSteps; ++step) {
    const int regime = step < kShiftStep ? 0 : 1;
    for (int l = 0; l < kLayers; ++l) {
      Eplb(eplbRouteCount(d_ids[regime * kLayers + l], EPLB_ID_INT32, kTokens, nullptr, kTopK,
                          maps.d_log2phy + static_cast<size_t>(l) * kExperts * width,
                          maps.d_logcnt + static_cast<size_t>(l) * kExperts, kExperts, P,
                          maps.d_record, d_phys, maps.d_load_pass + static_cast<size_t>(l) * P,
                          maps.d_invalid_count, stream),
           "eplbRouteCount");
    }
    Eplb(eplbStateStep(state, EPLB_STEP_STATS, stream), "eplbStateStep");
    eplbStepBalance_t b;
    Cuda(cudaMemcpyAsync(&b, maps.d_step_balance, sizeof(b), cudaMemcpyDeviceToHost, stream),
         "read balance");
    Cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    out->balance.push_back(b.balancedness);
    eplbStateStats_t st = EPLB_STATE_STATS_INIT;
    Eplb(eplbStateGetStats(state, &st), "eplbStateGetStats");
    if (st.num_rearrangements > rearrangements) {
      rearrangements = st.num_rearrangements;
      out->rearrangements.push_back(st);
      out->at_step.push_back(step);
    }
  }
  Eplb(eplbStateDestroy(state), "eplbStateDestroy");
  if (comm2 != nullptr) ncclCommDestroy(comm2);  // this rank's collectives are all done
  for (void* d : weights) cudaFree(d);
  for (int32_t* d : d_ids) cudaFree(d);
  cudaFree(d_phys);
  cudaStreamDestroy(stream);
}

double Mean(const std::vector<double>& v, size_t from, size_t to) {
  double s = 0;
  for (size_t i = from; i < to; ++i) s += v[i];
  return to > from ? s / static_cast<double>(to - from) : 0.0;
}

}  // namespace

int RunGpuDemo() {
  int num_gpus = 0;
  if (cudaGetDeviceCount(&num_gpus) != cudaSuccess || num_gpus < 1) {
    (void)cudaGetLastError();
    std::printf("\nLive pipeline: no GPU visible, skipped (it runs on every visible GPU).\n");
    return 0;
  }
  int n = 1;  // the largest power of two <= the GPU count that divides 288
  while (n * 2 <= num_gpus && n * 2 <= 8) n *= 2;
  std::printf(
      "\nLive pipeline on %d GPU(s): %d layers, %d experts, %d slots, top-%d, %d tokens per GPU\n"
      "and pass; routing shifts at pass %d; rearrangement every %d passes (first at %d)\n",
      n, kLayers, kExperts, kExperts + 32, kTopK, kTokens, kShiftStep, kInterval,
      kInterval - kInterval / 4);
  std::fflush(stdout);
  std::vector<ncclComm_t> comms(n);
  std::vector<int> devs(n);
  for (int i = 0; i < n; ++i) devs[i] = i;
  if (ncclCommInitAll(comms.data(), n, devs.data()) != ncclSuccess) {
    std::fprintf(stderr, "eplb demo: ncclCommInitAll failed\n");
    return 1;
  }
  std::vector<RankResult> results(n);
  std::vector<std::string> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        RunRank(r, n, comms[r], &results[r]);
      } catch (const Failure& f) {
        errors[r] = f.what;
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < n; ++r) ncclCommDestroy(comms[r]);
  for (int r = 0; r < n; ++r)
    if (!errors[r].empty()) {
      std::fprintf(stderr, "eplb demo: rank %d: %s\n", r, errors[r].c_str());
      return 1;
    }

  const RankResult& r0 = results[0];
  std::printf("\n%-26s %12s %12s %10s %10s %11s %11s\n", "rearrangement at pass", "bal. before",
              "bal. after", "slots", "MB sent", "stall ms", "exchange ms");
  for (size_t i = 0; i < r0.rearrangements.size(); ++i) {
    const eplbStateStats_t& s = r0.rearrangements[i];
    double stall = 0;
    for (int p = 0; p < EPLB_STATE_NUM_PHASES; ++p) stall += std::max(0.0, s.last_device_ms[p]);
    std::printf("%-26lld %12.4f %12.4f %10lld %10.1f %11.2f %11.2f\n",
                static_cast<long long>(r0.at_step[i]), s.last_balancedness_before,
                s.last_balancedness_after, static_cast<long long>(s.last_slots_moved),
                s.last_bytes_sent / 1048576.0, stall, s.last_device_ms[EPLB_STATE_PHASE_EXCHANGE]);
  }
  const size_t first = r0.at_step.empty() ? r0.balance.size() : r0.at_step[0] + 1;
  std::printf(
      "per-pass balancedness over all GPUs (mean tokens per GPU / max): %.4f before the first\n"
      "rearrangement, %.4f after it (bundle %.2f MB per expert)\n",
      Mean(r0.balance, 0, std::min(first, r0.balance.size())),
      Mean(r0.balance, first, r0.balance.size()), r0.bundle_mb);
  return 0;
}

}  // namespace eplb_cli
