// cortex_attention::paged_decode: one decode step's attention, read in place from the KV pool.
//
// A compiled decode step otherwise gathers every row's keys and values out of the pool into a
// padded [B, H_kv, W, D] copy before SDPA reads them again: at 2,500 tokens of context that is
// three passes over SmolLM2's ~115 MB of fp32 KV a step (read, write, read), most of the step.
// Here each key and value row is read once, straight from its slot, by every query head that
// shares it (grouped-query attention: the ``groups`` query heads of one key/value head).
//
//   query  [B, H, D]       float32, one new token a row
//   keys   [H_kv, S, D]    float32, the pool (kvcache.py's layout: heads first)
//   values [H_kv, S, D]
//   slots  [B, W]          int64, the slots row b attends to
//   mask   [B, W] bool     optional: False columns are skipped (padding)
//   out    [B, H, D]       softmax(q k^T * scale) v per head
//
// Two passes over a row's slots per key/value head: scores (and their maximum), then exp, sum
// and the values' weighted sum. D must be 16, 32, 64 or 128 (whole 16-float AVX-512 vectors),
// groups at most 8. at::parallel_for splits (row, key/value head) pairs over torch's threads.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kMaxGroups = 8;

// exp(x) for x <= 0 (scores minus their maximum), ~1e-7 relative: x = n ln2 + r, |r| <= ln2/2,
// exp(r) by its Taylor polynomial to degree 7, times 2^n. Below -87 the result is 0.
inline __m512 exp_nonpositive(__m512 x) {
  const __m512 lowest = _mm512_set1_ps(-87.f);
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, lowest, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lowest);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~underflow), _mm512_scalef_ps(p, n));
}

// One row's one key/value head: ``groups`` query heads of D = 16 * kVectors floats.
template <int kVectors>
void attend(const float* query, const float* keys, const float* values, const int64_t* slots,
            const bool* mask, int64_t width, int64_t groups, float scale, float* scores,
            float* out) {
  constexpr int64_t kDim = 16 * kVectors;
  __m512 q[kMaxGroups][kVectors];
  for (int64_t g = 0; g < groups; ++g)
    for (int v = 0; v < kVectors; ++v)
      q[g][v] = _mm512_mul_ps(_mm512_loadu_ps(query + g * kDim + 16 * v), _mm512_set1_ps(scale));
  const float skipped = -std::numeric_limits<float>::infinity();
  float highest[kMaxGroups];
  for (int64_t g = 0; g < groups; ++g) highest[g] = skipped;
  for (int64_t w = 0; w < width; ++w) {
    if (mask != nullptr && !mask[w]) {
      for (int64_t g = 0; g < groups; ++g) scores[g * width + w] = skipped;
      continue;
    }
    const float* key = keys + slots[w] * kDim;
    __m512 k[kVectors];
    for (int v = 0; v < kVectors; ++v) k[v] = _mm512_loadu_ps(key + 16 * v);
    for (int64_t g = 0; g < groups; ++g) {
      __m512 dot = _mm512_mul_ps(q[g][0], k[0]);
      for (int v = 1; v < kVectors; ++v) dot = _mm512_fmadd_ps(q[g][v], k[v], dot);
      const float s = _mm512_reduce_add_ps(dot);
      scores[g * width + w] = s;
      highest[g] = s > highest[g] ? s : highest[g];
    }
  }
  // Weights: exp(score - highest), in place; their sum.
  float total[kMaxGroups];
  for (int64_t g = 0; g < groups; ++g) {
    float* row = scores + g * width;
    const __m512 top = _mm512_set1_ps(highest[g]);
    __m512 sum = _mm512_setzero_ps();
    int64_t w = 0;
    for (; w + 16 <= width; w += 16) {
      const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + w), top));
      _mm512_storeu_ps(row + w, e);
      sum = _mm512_add_ps(sum, e);
    }
    if (w < width) {
      const __mmask16 tail = static_cast<__mmask16>((1u << (width - w)) - 1);
      const __m512 x = _mm512_mask_loadu_ps(_mm512_set1_ps(skipped), tail, row + w);
      const __m512 e = exp_nonpositive(_mm512_sub_ps(x, top));
      _mm512_mask_storeu_ps(row + w, tail, e);
      sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(tail, e));
    }
    total[g] = _mm512_reduce_add_ps(sum);
  }
  __m512 acc[kMaxGroups][kVectors];
  for (int64_t g = 0; g < groups; ++g)
    for (int v = 0; v < kVectors; ++v) acc[g][v] = _mm512_setzero_ps();
  for (int64_t w = 0; w < width; ++w) {
    if (mask != nullptr && !mask[w]) continue;
    const float* value = values + slots[w] * kDim;
    __m512 x[kVectors];
    for (int v = 0; v < kVectors; ++v) x[v] = _mm512_loadu_ps(value + 16 * v);
    for (int64_t g = 0; g < groups; ++g) {
      const __m512 p = _mm512_set1_ps(scores[g * width + w]);
      for (int v = 0; v < kVectors; ++v) acc[g][v] = _mm512_fmadd_ps(p, x[v], acc[g][v]);
    }
  }
  for (int64_t g = 0; g < groups; ++g) {
    // A row with no unmasked column has nothing to attend to: zeros, not NaN.
    const __m512 inverse = _mm512_set1_ps(total[g] > 0.f ? 1.f / total[g] : 0.f);
    for (int v = 0; v < kVectors; ++v)
      _mm512_storeu_ps(out + g * kDim + 16 * v, _mm512_mul_ps(acc[g][v], inverse));
  }
}

at::Tensor paged_decode(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                        const at::Tensor& slots, const std::optional<at::Tensor>& mask,
                        double scale) {
  TORCH_CHECK(query.dim() == 3 && keys.dim() == 3 && values.dim() == 3 && slots.dim() == 2,
              "paged_decode: query [B, H, D], keys/values [H_kv, S, D], slots [B, W]");
  TORCH_CHECK(query.scalar_type() == at::kFloat && keys.scalar_type() == at::kFloat &&
                  values.scalar_type() == at::kFloat,
              "paged_decode: float32 query, keys and values");
  TORCH_CHECK(slots.scalar_type() == at::kLong, "paged_decode: int64 slots");
  TORCH_CHECK(query.is_contiguous() && keys.is_contiguous() && values.is_contiguous() &&
                  slots.is_contiguous(),
              "paged_decode: contiguous inputs");
  const int64_t rows = query.size(0), heads = query.size(1), dim = query.size(2);
  const int64_t kv_heads = keys.size(0), pool = keys.size(1), width = slots.size(1);
  TORCH_CHECK(values.sizes() == keys.sizes() && keys.size(2) == dim, "paged_decode: shapes");
  TORCH_CHECK(slots.size(0) == rows && heads % kv_heads == 0, "paged_decode: shapes");
  const int64_t groups = heads / kv_heads;
  TORCH_CHECK(groups <= kMaxGroups && (dim == 16 || dim == 32 || dim == 64 || dim == 128),
              "paged_decode: head_dim 16, 32, 64 or 128, at most 8 query heads a key/value head");
  const bool* mask_data = nullptr;
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->is_contiguous() &&
                    mask->dim() == 2 && mask->size(0) == rows && mask->size(1) == width,
                "paged_decode: mask [B, W] bool");
    mask_data = mask->data_ptr<bool>();
  }
  at::Tensor out = at::empty({rows, heads, dim}, query.options());
  const float* q = query.data_ptr<float>();
  const float* k = keys.data_ptr<float>();
  const float* v = values.data_ptr<float>();
  const int64_t* s = slots.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  const float step = static_cast<float>(scale);
  at::parallel_for(0, rows * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(groups * width);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t b = unit / kv_heads, h = unit % kv_heads;
      const int64_t first = b * heads + h * groups;  // this head's first query head
      const float* head_keys = k + h * pool * dim;
      const float* head_values = v + h * pool * dim;
      const int64_t* row_slots = s + b * width;
      const bool* row_mask = mask_data != nullptr ? mask_data + b * width : nullptr;
      auto* run = dim == 16 ? &attend<1> : dim == 32 ? &attend<2> : dim == 64 ? &attend<4>
                                                                                : &attend<8>;
      run(q + first * dim, head_keys, head_values, row_slots, row_mask, width, groups, step,
          scores.data(), o + first * dim);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(cortex_attention, m) {
  m.def(
      "paged_decode(Tensor query, Tensor keys, Tensor values, Tensor slots, Tensor? mask, "
      "float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(cortex_attention, CPU, m) { m.impl("paged_decode", &paged_decode); }
