// cortex_quant::qmm: a decode step's product with 4- or 8-bit weights on AVX512-VNNI CPUs.
//
// What llama.cpp does for Q4_1 x Q8_1: each row of activations is quantised to int8 per block of
// 32 (one fp32 scale per block, and the block's sum for the weights' offsets), and the
// weights' levels (unsigned, 0-15 or 0-255) meet it in vpdpbusd, 64 multiply-adds per
// instruction, instead of being dequantised to floats one by one (PyTorch's int4 kernel, which
// also wants bf16 activations this CPU has no instructions for).
//
//   w = level * scale + low      (scale, low: fp16, one pair per 32 weights)
//   y = sum_b dx_b * (scale_b * sum(level * qx) + low_b * sum(qx))      (x ~ dx * qx)
//
// Layout (qmm_kernel.py writes it): weights in chunks of 64 (two blocks, A and B), whose bytes
// run four of A, four of B, alternating, so vpdpbusd's 16 int32 lanes alternate A, B and a pair
// of per-block values broadcast as one 64-bit word lines up with them. 4-bit: byte j of a chunk's
// 32 holds level j (low nibble) and level j + 32 (high). The activations are put in the same
// order when they are quantised. K must be a multiple of 64.
//
// Single-threaded per output range; at::parallel_for splits the outputs over torch's threads.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kBlock = 32;
constexpr int64_t kChunk = 64;
#ifndef QMM_AHEAD
#define QMM_AHEAD 8
#endif
constexpr int64_t kAhead = QMM_AHEAD;  // outputs ahead whose weights are prefetched
constexpr int64_t kTile = 4;  // activation rows that share one unpacked weight chunk

// Chunk byte position -> index of the weight (or activation) in its natural order.
alignas(64) const uint8_t kSource[64] = {
    0,  1,  2,  3,  32, 33, 34, 35, 4,  5,  6,  7,  36, 37, 38, 39, 8,  9,  10, 11, 40, 41,
    42, 43, 12, 13, 14, 15, 44, 45, 46, 47, 16, 17, 18, 19, 48, 49, 50, 51, 20, 21, 22, 23,
    52, 53, 54, 55, 24, 25, 26, 27, 56, 57, 58, 59, 28, 29, 30, 31, 60, 61, 62, 63};

// A second pass rounds what the first left (at most half a step) with a step 254x finer:
// x ~ dx * (q + residual / 254), ~15 bits a value, for products whose every error shows, the
// LM head's (its logits pick the token: SmolLM2's fp32 margin on "What is the capital of
// France?" was 0.08, and one pass flipped it).
constexpr float kFiner = 254.f;

struct Quantised {
  std::vector<int8_t> q;         // [M, K] in chunk byte order
  std::vector<int8_t> residual;  // [M, K] likewise, with two passes (else empty)
  std::vector<float> scale;      // [M, K / 32]
  std::vector<float> sum8;       // [M, K / 32]: a rounded block's sum / 8 (it fills 8 lanes)
};

// 32 values (v0, v1) times ``inverse``, rounded to int32 and stored as saturated int8 at
// ``out``; returns the int32s, whose sum and remainders the callers need.
inline std::pair<__m512i, __m512i> round_block(__m512 v0, __m512 v1, __m512 inverse,
                                               int8_t* out) {
  const __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inverse));
  const __m512i i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inverse));
  _mm_store_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtsepi32_epi8(i0));
  _mm_store_si128(reinterpret_cast<__m128i*>(out + 16), _mm512_cvtsepi32_epi8(i1));
  return {i0, i1};
}

Quantised quantise(const float* x, int64_t rows, int64_t k, bool two_passes) {
  const int64_t blocks = k / kBlock;
  Quantised out{std::vector<int8_t>(rows * k), std::vector<int8_t>(two_passes ? rows * k : 0),
                std::vector<float>(rows * blocks), std::vector<float>(rows * blocks)};
  const __m512i order = _mm512_loadu_si512(kSource);
  alignas(64) int8_t natural[kChunk];
  alignas(64) int8_t finer[kChunk];
  for (int64_t m = 0; m < rows; ++m) {
    const float* row = x + m * k;
    for (int64_t c = 0; c < k / kChunk; ++c) {
      for (int64_t half = 0; half < 2; ++half) {
        const int64_t b = 2 * c + half;
        const __m512 v0 = _mm512_loadu_ps(row + b * kBlock);
        const __m512 v1 = _mm512_loadu_ps(row + b * kBlock + 16);
        const float amax =
            _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const __m512 inverse = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
        const auto [i0, i1] = round_block(v0, v1, inverse, natural + half * kBlock);
        out.scale[m * blocks + b] = amax / 127.f;
        // The rounded block's sum, not the exact one: the offsets then meet the same
        // activations as the levels do, and the error stays the activations' rounding times
        // the weights (with exact sums, times level * scale: int8's offset of 128 made that
        // ~5x larger, perplexity +5 % instead of +1 %).
        const int32_t rounded = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
        float sum = static_cast<float>(rounded);
        if (two_passes) {
          const __m512 step = _mm512_set1_ps(amax / 127.f);
          const __m512 finer_inverse = _mm512_mul_ps(inverse, _mm512_set1_ps(kFiner));
          const __m512 r0 = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(i0), step, v0);
          const __m512 r1 = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(i1), step, v1);
          const auto [j0, j1] = round_block(r0, r1, finer_inverse, finer + half * kBlock);
          sum += static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(j0, j1))) / kFiner;
        }
        out.sum8[m * blocks + b] = sum * (amax / 127.f) / 8.f;
      }
      const __m512i chunk = _mm512_permutexvar_epi8(order, _mm512_load_si512(natural));
      _mm512_storeu_si512(out.q.data() + m * k + c * kChunk, chunk);
      if (two_passes) {
        const __m512i rest = _mm512_permutexvar_epi8(order, _mm512_load_si512(finer));
        _mm512_storeu_si512(out.residual.data() + m * k + c * kChunk, rest);
      }
    }
  }
  return out;
}

inline __m512 pair_of_floats(const float* at) {  // lanes: at[0], at[1], at[0], ...
  double both;
  std::memcpy(&both, at, sizeof(both));
  return _mm512_castpd_ps(_mm512_set1_pd(both));
}

inline __m512 pair_of_halves(const uint16_t* at) {
  int32_t both;
  std::memcpy(&both, at, sizeof(both));
  return _mm512_cvtph_ps(_mm256_set1_epi32(both));
}

template <int Bits>
inline __m512i levels(const uint8_t* chunk) {
  if constexpr (Bits == 4) {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk));
    const __m256i low = _mm256_and_si256(bytes, nibble);
    const __m256i high = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble);
    return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
  } else {
    return _mm512_loadu_si512(chunk);
  }
}

// Rows [m0, m0 + Rows) of the activations against outputs [n0, n0 + Outs): each weight chunk
// is unpacked once for all rows, each activation chunk loaded once for all outputs.
template <int Bits, int Passes, int Rows, int Outs>
inline void tile(const Quantised& a, int64_t m0, int64_t n0, int64_t k, const uint8_t* weights,
                 const uint16_t* scales, const uint16_t* lows, float* y, int64_t outputs) {
  const int64_t blocks = k / kBlock;
  const int64_t chunk_bytes = kChunk * Bits / 8;
  const int64_t row_bytes = k * Bits / 8;
  __m512 acc[Rows][Outs];
  for (int r = 0; r < Rows; ++r)
    for (int o = 0; o < Outs; ++o) acc[r][o] = _mm512_setzero_ps();
  for (int64_t c = 0; c < k / kChunk; ++c) {
    __m512i w[Outs];
    __m512 scale[Outs], low[Outs];
    for (int o = 0; o < Outs; ++o) {
      const int64_t n = n0 + o;
      // The weights stream from memory once per step: ask for a later output's chunk now, so
      // its load overlaps this one's arithmetic (the hardware prefetcher alone left the kernel
      // at half the bandwidth a plain sum reads).
      _mm_prefetch(reinterpret_cast<const char*>(weights + (n + kAhead) * row_bytes +
                                                 c * chunk_bytes),
                   _MM_HINT_T0);
      w[o] = levels<Bits>(weights + n * row_bytes + c * chunk_bytes);
      scale[o] = pair_of_halves(scales + n * blocks + 2 * c);
      low[o] = pair_of_halves(lows + n * blocks + 2 * c);
    }
    for (int r = 0; r < Rows; ++r) {
      const int64_t m = m0 + r;
      const __m512i x = _mm512_loadu_si512(a.q.data() + m * k + c * kChunk);
      const __m512 dx = pair_of_floats(a.scale.data() + m * blocks + 2 * c);
      const __m512 sum8 = pair_of_floats(a.sum8.data() + m * blocks + 2 * c);
      for (int o = 0; o < Outs; ++o) {
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[o], x);
        const __m512 step = _mm512_mul_ps(scale[o], dx);
        acc[r][o] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), step, acc[r][o]);
        if constexpr (Passes == 2) {
          const __m512i rest = _mm512_loadu_si512(a.residual.data() + m * k + c * kChunk);
          const __m512i finer = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[o], rest);
          const __m512 finer_step = _mm512_mul_ps(step, _mm512_set1_ps(1.f / kFiner));
          acc[r][o] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(finer), finer_step, acc[r][o]);
        }
        acc[r][o] = _mm512_fmadd_ps(low[o], sum8, acc[r][o]);
      }
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int o = 0; o < Outs; ++o)
      y[(m0 + r) * outputs + n0 + o] = _mm512_reduce_add_ps(acc[r][o]);
}

// Outputs [n0, n0 + Outs) against every row: tiles of four rows, then what is left.
template <int Bits, int Passes, int Outs>
inline void outputs_tile(const Quantised& a, int64_t rows, int64_t n0, int64_t k,
                         const uint8_t* w, const uint16_t* s, const uint16_t* l, float* y,
                         int64_t outputs) {
  int64_t m = 0;
  for (; m + kTile <= rows; m += kTile)
    tile<Bits, Passes, kTile, Outs>(a, m, n0, k, w, s, l, y, outputs);
  switch (rows - m) {
    case 3: tile<Bits, Passes, 3, Outs>(a, m, n0, k, w, s, l, y, outputs); break;
    case 2: tile<Bits, Passes, 2, Outs>(a, m, n0, k, w, s, l, y, outputs); break;
    case 1: tile<Bits, Passes, 1, Outs>(a, m, n0, k, w, s, l, y, outputs); break;
    default: break;
  }
}

template <int Bits, int Passes>
void outputs_range(const Quantised& a, int64_t rows, int64_t k, const uint8_t* w,
                   const uint16_t* s, const uint16_t* l, float* y, int64_t outputs,
                   int64_t begin, int64_t end) {
  constexpr int kOuts = 2;  // 4 rows x 2 outputs: 8 accumulators, in registers with the rest
  int64_t n = begin;
  for (; n + kOuts <= end; n += kOuts)
    outputs_tile<Bits, Passes, kOuts>(a, rows, n, k, w, s, l, y, outputs);
  for (; n < end; ++n) outputs_tile<Bits, Passes, 1>(a, rows, n, k, w, s, l, y, outputs);
}

at::Tensor qmm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales,
               const at::Tensor& lows, int64_t bits, int64_t passes) {
  TORCH_CHECK(bits == 4 || bits == 8, "qmm: bits must be 4 or 8, not ", bits);
  TORCH_CHECK(passes == 1 || passes == 2, "qmm: passes must be 1 or 2, not ", passes);
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "qmm: x must be a contiguous float32 [M, K]");
  const int64_t rows = x.size(0), k = x.size(1), outputs = weight.size(0);
  TORCH_CHECK(k % kChunk == 0, "qmm: K must be a multiple of 64, not ", k);
  TORCH_CHECK(weight.scalar_type() == at::kByte && weight.is_contiguous() &&
                  weight.size(1) == k * bits / 8,
              "qmm: weight must be contiguous uint8 [N, K * bits / 8]");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && lows.scalar_type() == at::kHalf &&
                  scales.is_contiguous() && lows.is_contiguous() &&
                  scales.numel() == outputs * (k / kBlock) && lows.numel() == scales.numel(),
              "qmm: scales and lows must be contiguous float16 [N, K / 32]");
  at::Tensor y = at::empty({rows, outputs}, x.options());
  if (rows == 0 || outputs == 0) return y;
  const Quantised a = quantise(x.data_ptr<float>(), rows, k, passes == 2);
  const auto* w = weight.data_ptr<uint8_t>();
  const auto* s = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::Half>());
  const auto* l = reinterpret_cast<const uint16_t*>(lows.data_ptr<at::Half>());
  float* out = y.data_ptr<float>();
  at::parallel_for(0, outputs, 64, [&](int64_t begin, int64_t end) {
    if (bits == 4 && passes == 1) {
      outputs_range<4, 1>(a, rows, k, w, s, l, out, outputs, begin, end);
    } else if (bits == 4) {
      outputs_range<4, 2>(a, rows, k, w, s, l, out, outputs, begin, end);
    } else if (passes == 1) {
      outputs_range<8, 1>(a, rows, k, w, s, l, out, outputs, begin, end);
    } else {
      outputs_range<8, 2>(a, rows, k, w, s, l, out, outputs, begin, end);
    }
  });
  return y;
}

// The float32 weight [N, K] from the kernel's layout, for a prefill chunk: a chunk of many rows
// multiplies faster in float32 (PyTorch's GEMM) over weights unpacked once for the call. One
// pass, in registers: ~10x faster than unpacking with tensor ops (SmolLM2's 1536x576 layer:
// ~0.4 ms against 3.8).
at::Tensor dequantise(const at::Tensor& weight, const at::Tensor& scales, const at::Tensor& lows,
                      int64_t bits) {
  TORCH_CHECK(bits == 4 || bits == 8, "dequantise: bits must be 4 or 8, not ", bits);
  TORCH_CHECK(weight.scalar_type() == at::kByte && weight.is_contiguous() && weight.dim() == 2,
              "dequantise: weight must be contiguous uint8 [N, K * bits / 8]");
  const int64_t outputs = weight.size(0), k = weight.size(1) * 8 / bits;
  TORCH_CHECK(k % kChunk == 0, "dequantise: K must be a multiple of 64, not ", k);
  TORCH_CHECK(scales.scalar_type() == at::kHalf && lows.scalar_type() == at::kHalf &&
                  scales.is_contiguous() && lows.is_contiguous() &&
                  scales.numel() == outputs * (k / kBlock) && lows.numel() == scales.numel(),
              "dequantise: scales and lows must be contiguous float16 [N, K / 32]");
  at::Tensor out = at::empty({outputs, k}, weight.options().dtype(at::kFloat));
  alignas(64) uint8_t natural_order[kChunk];
  for (int p = 0; p < kChunk; ++p) natural_order[kSource[p]] = static_cast<uint8_t>(p);
  const __m512i order = _mm512_load_si512(natural_order);
  const auto* w = weight.data_ptr<uint8_t>();
  const auto* s = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::Half>());
  const auto* l = reinterpret_cast<const uint16_t*>(lows.data_ptr<at::Half>());
  float* y = out.data_ptr<float>();
  const int64_t chunk_bytes = kChunk * bits / 8, blocks = k / kBlock;
  at::parallel_for(0, outputs, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t c = 0; c < k / kChunk; ++c) {
        const uint8_t* chunk = w + n * (k * bits / 8) + c * chunk_bytes;
        const __m512i ordered = bits == 4 ? levels<4>(chunk) : levels<8>(chunk);
        const __m512i natural = _mm512_permutexvar_epi8(order, ordered);
        for (int q = 0; q < 4; ++q) {  // 16 weights at a time; q < 2: block A, else B
          const int64_t b = n * blocks + 2 * c + q / 2;
          const __m512 scale = _mm512_set1_ps(_cvtsh_ss(s[b]));
          const __m512 low = _mm512_set1_ps(_cvtsh_ss(l[b]));
          __m128i part;  // the extract's lane is an immediate
          switch (q) {
            case 0: part = _mm512_extracti32x4_epi32(natural, 0); break;
            case 1: part = _mm512_extracti32x4_epi32(natural, 1); break;
            case 2: part = _mm512_extracti32x4_epi32(natural, 2); break;
            default: part = _mm512_extracti32x4_epi32(natural, 3); break;
          }
          const __m512 level = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(part));
          _mm512_storeu_ps(y + n * k + c * kChunk + q * 16, _mm512_fmadd_ps(level, scale, low));
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(cortex_quant, m) {
  m.def(
      "qmm(Tensor x, Tensor weight, Tensor scales, Tensor lows, int bits, int passes=1) -> "
      "Tensor");
  m.def("dequantise(Tensor weight, Tensor scales, Tensor lows, int bits) -> Tensor");
}

TORCH_LIBRARY_IMPL(cortex_quant, CPU, m) {
  m.impl("qmm", &qmm);
  m.impl("dequantise", &dequantise);
}
