// The per-step operations besides decode attention that ATen runs slowly on the CPU at serving sizes:
// storing a step's keys and values into the head-major paged cache (`index_copy_` along its slot
// dimension goes element by element), RMS normalisation and gated MLPs' SiLU (eight and two tensor
// operations in transformers' modules, each a pass over memory and a dispatch), and the greedy pick
// over a batch's logits (`argmax` over a whole vocabulary runs several times slower than a
// vectorised maximum).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
constexpr int64_t kAccumulators = 4;

// Rows of a token's head (whole rows of `head_dim` elements) copied per parallel task.
constexpr int64_t kRowsPerTask = 1024;

// cache [kv_heads, slots, head_dim] <- rows [kv_heads, T, head_dim] at `slots` [T], byte for byte:
// the rows are already in the cache's dtype.
void store_kv(at::Tensor cache, const at::Tensor& slots, const at::Tensor& new_rows) {
  const at::Tensor rows = new_rows.dim() == 3 && new_rows.stride(2) != 1 ? new_rows.contiguous() : new_rows;
  TORCH_CHECK(cache.dim() == 3 && cache.is_contiguous(), "cache: contiguous [kv_heads, slots, head_dim]");
  TORCH_CHECK(rows.dim() == 3 && rows.size(0) == cache.size(0) && rows.size(2) == cache.size(2),
              "rows: [kv_heads, T, head_dim] of the cache's heads and head size");
  TORCH_CHECK(rows.scalar_type() == cache.scalar_type(), "rows must be in the cache's dtype");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.size(0) == rows.size(1),
              "slots: one contiguous int64 per token");
  const int64_t heads = cache.size(0), num_slots = cache.size(1), tokens = rows.size(1);
  const int64_t* slot = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t)
    TORCH_CHECK(slot[t] >= 0 && slot[t] < num_slots, "token ", t, ": slot ", slot[t], " outside the cache of ",
                num_slots);
  const int64_t row_bytes = cache.size(2) * cache.element_size();
  auto* target = static_cast<char*>(cache.data_ptr());
  const auto* source = static_cast<const char*>(rows.data_ptr());
  const int64_t head_stride = rows.stride(0) * rows.element_size(), token_stride = rows.stride(1) * rows.element_size();
  at::parallel_for(0, heads * tokens, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t head = task / tokens, t = task % tokens;
      std::memcpy(target + (head * num_slots + slot[t]) * row_bytes, source + head * head_stride + t * token_stride,
                  row_bytes);
    }
  });
}

// Elements of a row handled per iteration: two float vectors, one vector of a 16-bit type.
constexpr int64_t kPair = 2 * kLanes;
// Elements of an elementwise operation per parallel task: enough to be worth a thread.
constexpr int64_t kElementsPerTask = 1 << 15;

// Two float vectors from kPair elements.
template <typename scalar_t>
std::pair<Vec, Vec> load_pair(const scalar_t* data) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return {Vec::loadu(data), Vec::loadu(data + kLanes)};
  } else {
    auto [low, high] = at::vec::convert_to_float<scalar_t>(at::vec::Vectorized<scalar_t>::loadu(data));
    return {low, high};
  }
}

// Rounded to scalar_t (to nearest even, as torch's casts) and widened back.
template <typename scalar_t>
std::pair<Vec, Vec> rounded(const Vec& low, const Vec& high) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return {low, high};
  } else {
    auto [a, b] = at::vec::convert_to_float<scalar_t>(at::vec::convert_from_float<scalar_t>(low, high));
    return {a, b};
  }
}

template <typename scalar_t>
void store_pair(const Vec& low, const Vec& high, scalar_t* data) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    low.store(data);
    high.store(data + kLanes);
  } else {
    at::vec::convert_from_float<scalar_t>(low, high).store(data);
  }
}

// transformers' LlamaRMSNorm, step for step: in float32, x * rsqrt(mean(x^2) + eps), rounded to the
// input's dtype, then times the weight in that dtype (a product of the two rounded to it).
template <typename scalar_t>
void rms_norm_row(const scalar_t* x, const scalar_t* weight, scalar_t* out, int64_t hidden, float eps) {
  const int64_t whole = hidden / kPair * kPair;
  Vec squares_low(0.f), squares_high(0.f);
  for (int64_t i = 0; i < whole; i += kPair) {
    auto [low, high] = load_pair(x + i);
    squares_low = at::vec::fmadd(low, low, squares_low);
    squares_high = at::vec::fmadd(high, high, squares_high);
  }
  float squares = at::vec::vec_reduce_all([](Vec& a, Vec& b) { return a + b; }, squares_low + squares_high);
  for (int64_t i = whole; i < hidden; ++i) squares += static_cast<float>(x[i]) * static_cast<float>(x[i]);
  const float inverse = 1.f / std::sqrt(squares / static_cast<float>(hidden) + eps);
  const Vec scale(inverse);
  for (int64_t i = 0; i < whole; i += kPair) {
    auto [low, high] = load_pair(x + i);
    auto [normal_low, normal_high] = rounded<scalar_t>(low * scale, high * scale);
    auto [weight_low, weight_high] = load_pair(weight + i);
    store_pair(weight_low * normal_low, weight_high * normal_high, out + i);
  }
  for (int64_t i = whole; i < hidden; ++i) {
    const scalar_t normal = static_cast<scalar_t>(static_cast<float>(x[i]) * inverse);
    out[i] = static_cast<scalar_t>(static_cast<float>(weight[i]) * static_cast<float>(normal));
  }
}


template <typename scalar_t>
void rms_norm_rows(const at::Tensor& x, const at::Tensor& weight, at::Tensor& out, double eps) {
  const int64_t hidden = x.size(-1), rows = x.numel() / hidden;
  const scalar_t* x_data = x.data_ptr<scalar_t>();
  const scalar_t* weight_data = weight.data_ptr<scalar_t>();
  scalar_t* out_data = out.data_ptr<scalar_t>();
  at::parallel_for(0, rows, std::max<int64_t>(1, kElementsPerTask / hidden), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row)
      rms_norm_row(x_data + row * hidden, weight_data, out_data + row * hidden, hidden, static_cast<float>(eps));
  });
}

// x [..., hidden] and weight [hidden] of one dtype -> x's shape and dtype, each row normalised.
at::Tensor rms_norm(const at::Tensor& input, const at::Tensor& weight, double eps) {
  TORCH_CHECK(input.dim() >= 1 && weight.dim() == 1 && input.size(-1) == weight.size(0) && weight.size(0) > 0,
              "weight: [hidden] of the input's last size, hidden > 0");
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "input and weight differ in dtype");
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  auto out = at::empty_like(x);
  switch (x.scalar_type()) {
    case at::kFloat: rms_norm_rows<float>(x, w, out, eps); break;
    case at::kBFloat16: rms_norm_rows<c10::BFloat16>(x, w, out, eps); break;
    case at::kHalf: rms_norm_rows<c10::Half>(x, w, out, eps); break;
    default: TORCH_CHECK(false, "rms_norm: float32, bfloat16 or float16, not ", x.scalar_type());
  }
  return out;
}

// silu(gate) * up over `count` elements, as transformers' gated MLPs compute it: the SiLU in float32
// rounded to the dtype, then the product of the two rounded to it.
template <typename scalar_t>
void silu_and_mul_range(const scalar_t* gate, const scalar_t* up, scalar_t* out, int64_t count) {
  const int64_t whole = count / kPair * kPair;
  const Vec one(1.f);
  for (int64_t i = 0; i < whole; i += kPair) {
    auto [gate_low, gate_high] = load_pair(gate + i);
    auto [silu_low, silu_high] = rounded<scalar_t>(gate_low / (one + gate_low.neg().exp()),
                                                   gate_high / (one + gate_high.neg().exp()));
    auto [up_low, up_high] = load_pair(up + i);
    store_pair(silu_low * up_low, silu_high * up_high, out + i);
  }
  for (int64_t i = whole; i < count; ++i) {
    const float value = static_cast<float>(gate[i]);
    const scalar_t silu = static_cast<scalar_t>(value / (1.f + std::exp(-value)));
    out[i] = static_cast<scalar_t>(static_cast<float>(silu) * static_cast<float>(up[i]));
  }
}

template <typename scalar_t>
void silu_and_mul_all(const at::Tensor& gate, const at::Tensor& up, at::Tensor& out) {
  const scalar_t* gate_data = gate.data_ptr<scalar_t>();
  const scalar_t* up_data = up.data_ptr<scalar_t>();
  scalar_t* out_data = out.data_ptr<scalar_t>();
  const int64_t count = gate.numel(), pairs = (count + kPair - 1) / kPair;
  // Split at whole vectors, so that which elements take the vector path does not depend on threads.
  at::parallel_for(0, pairs, kElementsPerTask / kPair, [&](int64_t begin, int64_t end) {
    const int64_t first = begin * kPair, last = std::min(count, end * kPair);
    silu_and_mul_range(gate_data + first, up_data + first, out_data + first, last - first);
  });
}

// gate and up of one shape and dtype -> silu(gate) * up.
at::Tensor silu_and_mul(const at::Tensor& gate_input, const at::Tensor& up_input) {
  TORCH_CHECK(gate_input.sizes() == up_input.sizes() && gate_input.scalar_type() == up_input.scalar_type(),
              "gate and up differ in shape or dtype");
  const at::Tensor gate = gate_input.contiguous(), up = up_input.contiguous();
  auto out = at::empty_like(gate);
  switch (gate.scalar_type()) {
    case at::kFloat: silu_and_mul_all<float>(gate, up, out); break;
    case at::kBFloat16: silu_and_mul_all<c10::BFloat16>(gate, up, out); break;
    case at::kHalf: silu_and_mul_all<c10::Half>(gate, up, out); break;
    default: TORCH_CHECK(false, "silu_and_mul: float32, bfloat16 or float16, not ", gate.scalar_type());
  }
  return out;
}

template <typename scalar_t>
Vec load_vector(const scalar_t* data) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return Vec::loadu(data);
  } else {
    Vec lanes;
    at::vec::load_to_float(data, lanes);
    return lanes;
  }
}

// The index of the first maximum of a row, NaN counting as the largest (as torch.argmax): the
// maximum in one vectorised pass, then the first position holding it.
template <typename scalar_t>
int64_t row_argmax(const scalar_t* row, int64_t size) {
  const int64_t whole = size / kLanes * kLanes;
  float maximum = -std::numeric_limits<float>::infinity();
  // Independent running maxima, so that each vector's maximum does not wait for the one before.
  std::array<Vec, kAccumulators> best;
  best.fill(Vec(maximum));
  int64_t i = 0;
  for (; i + kAccumulators * kLanes <= whole; i += kAccumulators * kLanes)
    for (int64_t a = 0; a < kAccumulators; ++a)
      best[a] = at::vec::maximum(best[a], load_vector(row + i + a * kLanes));
  for (; i < whole; i += kLanes) best[0] = at::vec::maximum(best[0], load_vector(row + i));
  for (int64_t a = 1; a < kAccumulators; ++a) best[0] = at::vec::maximum(best[0], best[a]);
  maximum = at::vec::vec_reduce_all([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, best[0]);
  for (int64_t i = whole; i < size; ++i) {
    const float value = static_cast<float>(row[i]);
    if (std::isnan(value) || value > maximum) maximum = value;
  }
  const bool nan = std::isnan(maximum);
  const Vec target(maximum);
  for (int64_t i = 0; i < whole; i += kLanes) {
    const Vec lanes = load_vector(row + i);
    // eq() holds 1 in the lanes equal and 0 elsewhere; zero_mask() has a bit per lane holding 0. A NaN
    // lane is the one unequal to itself.
    const int hits = nan ? lanes.eq(lanes).zero_mask() : ~lanes.eq(target).zero_mask() & ((1 << kLanes) - 1);
    if (hits) return i + __builtin_ctz(hits);
  }
  for (int64_t i = whole; i < size; ++i) {
    const float value = static_cast<float>(row[i]);
    if (nan ? std::isnan(value) : value == maximum) return i;
  }
  return 0;
}

template <typename scalar_t>
void argmax_rows(const at::Tensor& logits, int64_t* picked) {
  const scalar_t* data = logits.data_ptr<scalar_t>();
  const int64_t stride = logits.stride(0), vocab = logits.size(1);
  at::parallel_for(0, logits.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) picked[row] = row_argmax(data + row * stride, vocab);
  });
}

// [rows, vocab] -> [rows] int64: each row's first maximum.
at::Tensor argmax(const at::Tensor& all_logits) {
  TORCH_CHECK(all_logits.dim() == 2, "logits: [rows, vocab]");
  const at::Tensor logits = all_logits.stride(1) == 1 ? all_logits : all_logits.contiguous();
  TORCH_CHECK(logits.size(1) > 0, "logits: an empty vocabulary has no maximum");
  auto out = at::empty({logits.size(0)}, logits.options().dtype(at::kLong));
  int64_t* picked = out.data_ptr<int64_t>();
  switch (logits.scalar_type()) {
    case at::kFloat: argmax_rows<float>(logits, picked); break;
    case at::kBFloat16: argmax_rows<c10::BFloat16>(logits, picked); break;
    case at::kHalf: argmax_rows<c10::Half>(logits, picked); break;
    default: TORCH_CHECK(false, "logits: float32, bfloat16 or float16, not ", logits.scalar_type());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llm_serving, m) {
  m.def("store_kv(Tensor(a!) cache, Tensor slots, Tensor rows) -> ()", &store_kv);
  m.def("rms_norm(Tensor input, Tensor weight, float eps) -> Tensor", &rms_norm);
  m.def("silu_and_mul(Tensor gate, Tensor up) -> Tensor", &silu_and_mul);
  m.def("argmax(Tensor logits) -> Tensor", &argmax);
}
