// Paged decode attention for the CPU: one new token per sequence attends over its cached context,
// read where it lies in the KV block pool, block by block, up to its own length. Nothing is
// gathered, and no work is spent on the padding that a batch's block tables carry up to the longest
// context. Each task is one sequence and one KV head, with every query head that shares it (GQA), so
// each key and value is read once; it asks for its context's blocks before it reads them, as blocks
// scattered over the pool (decodes take theirs in turn) defeat the hardware prefetcher. Scores and
// sums in float32 whatever the cache's dtype, with ATen's vector classes (AVX512 or AVX2, as the
// build's flags pick).

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
#include <type_traits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();

// `size` floats rounded up to whole vectors.
constexpr int64_t whole_vectors(int64_t size) {
  return (size + kLanes - 1) / kLanes * kLanes;
}

struct Shape {
  int64_t heads, kv_heads, head_dim, value_dim, slots, width, block_size, sliding_window;
  float scale;
  int64_t group() const { return heads / kv_heads; }
};

// Per-thread buffers, sized once and reused from task to task. Queries, a block's scores and sums of
// values are held in whole vectors (the lanes past the head size, or past the block's keys, unused).
struct Scratch {
  explicit Scratch(const Shape& s)
      : queries(s.group() * whole_vectors(s.head_dim)),
        scores(s.group() * whole_vectors(s.block_size)),
        maxima(s.group()),
        sums(s.group()),
        sums_of_values(s.group() * whole_vectors(s.value_dim)) {}
  std::vector<float> queries, scores, maxima, sums, sums_of_values;
};

template <typename cache_t>
constexpr bool kFloat8 =
    std::is_same_v<cache_t, c10::Float8_e4m3fn> || std::is_same_v<cache_t, c10::Float8_e5m2>;

// e4m3fn elements are widened to 2^-8 of their value (see widen_float8), which the kernel makes good
// on the queries (for the keys) and on the outputs (for the values): a power of two, exactly.
template <typename cache_t>
constexpr float kWidenedScale = std::is_same_v<cache_t, c10::Float8_e4m3fn> ? 256.f : 1.f;

// Every float8 value of a format as float32 (over kWidenedScale), made when the library loads: a
// lookup per element.
template <typename float8_t>
const std::array<float, 256> kFloat8Values = [] {
  std::array<float, 256> table{};
  for (int bits = 0; bits < 256; ++bits)
    table[bits] = static_cast<float>(float8_t(static_cast<uint8_t>(bits), float8_t::from_bits())) /
                  kWidenedScale<float8_t>;
  return table;
}();

// One cache element as float32 (over kWidenedScale).
template <typename cache_t>
float widened_element(cache_t value) {
  if constexpr (kFloat8<cache_t>)
    return kFloat8Values<cache_t>[value.x];
  else
    return static_cast<float>(value);
}

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// A vector's worth of 16-bit lanes (GCC vector extensions), in which float8 bits become float16 bits:
// the hardware widens float16 to float32 exactly, subnormals included.
using HalfBits = int16_t __attribute__((vector_size(2 * kLanes)));
using ByteLanes = int8_t __attribute__((vector_size(kLanes)));

// `count` (at most kLanes) float8 elements as float32 lanes (over kWidenedScale), the rest zero. e5m2
// is float16's upper byte. e4m3fn's bits, sign-extended to 16 and shifted by 7, put its exponent and
// mantissa where float16's lie and a copy of the sign in its exponent's top bit, which is cleared: the
// value then reads 2^8 too small (e4m3fn's exponent bias is 7 to float16's 15). Its NaN (no
// infinities; exponent and mantissa all ones) is made float16's. (A lookup per element, and ATen's
// conversion with its branch for subnormals, both ran several times slower than bfloat16's loads.)
template <typename cache_t>
Vec widen_float8(const cache_t* row, int64_t count) {
  ByteLanes bytes{};
  if (count == kLanes)
    std::memcpy(&bytes, row, kLanes);  // one load
  else
    std::memcpy(&bytes, row, count);
  const HalfBits wide = __builtin_convertvector(bytes, HalfBits);
  HalfBits half;
  if constexpr (std::is_same_v<cache_t, c10::Float8_e5m2>) {
    half = wide << 8;
  } else {
    half = (wide << 7) & static_cast<int16_t>(0xBFFF);
    half = (half & 0x3F80) == 0x3F80 ? half | 0x7E00 : half;
  }
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_cvtph_ps(reinterpret_cast<__m256i>(half));
#else
  return _mm256_cvtph_ps(reinterpret_cast<__m128i>(half));
#endif
}
#endif

// `count` (at most kLanes) elements of a cache row as float32 lanes (over kWidenedScale), the rest
// zero. Whole vectors of float32, bfloat16 and float16 rows are loaded and widened in registers, and
// any float8 lanes where AVX2 or AVX512 is; the rest go through a small buffer.
template <typename cache_t>
Vec load_lanes(const cache_t* row, int64_t count) {
  if constexpr (std::is_same_v<cache_t, float>) {
    return count == kLanes ? Vec::loadu(row) : Vec::loadu(row, count);
  } else if constexpr (std::is_same_v<cache_t, c10::BFloat16> || std::is_same_v<cache_t, c10::Half>) {
    if (count == kLanes) {
      Vec lanes;
      at::vec::load_to_float(row, lanes);
      return lanes;
    }
  }
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (kFloat8<cache_t>) return widen_float8(row, count);
#endif
  alignas(64) float buffer[kLanes];
  for (int64_t d = 0; d < count; ++d) buffer[d] = widened_element(row[d]);
  return Vec::loadu(buffer, count);
}

// Asks for `count` elements from `data` on to be brought into the L2 cache, a line at a time (with
// L1 as the target, the kernel measured slower).
template <typename cache_t>
void prefetch(const cache_t* data, int64_t count) {
  const char* bytes = reinterpret_cast<const char*>(data);
  for (int64_t offset = 0; offset < count * static_cast<int64_t>(sizeof(cache_t)); offset += 64)
    __builtin_prefetch(bytes + offset, /*read*/ 0, /*into L2*/ 2);
}

// The scores of `count` consecutive cache rows (keys) against one query; the lanes after them, to
// the end of their vector, -inf (their weights are then 0). Returns the largest score.
template <typename cache_t>
float block_scores(const Shape& s, const float* query, const cache_t* keys, int64_t count, float* scores) {
  for (int64_t i = 0; i < count; ++i) {
    const cache_t* key = keys + i * s.head_dim;
    Vec sum(0.f);
    for (int64_t d = 0; d < s.head_dim; d += kLanes)
      sum = at::vec::fmadd(Vec::loadu(query + d), load_lanes(key + d, std::min(kLanes, s.head_dim - d)), sum);
    scores[i] = at::vec::vec_reduce_all([](Vec& a, Vec& b) { return a + b; }, sum);
  }
  std::fill(scores + count, scores + whole_vectors(count), -std::numeric_limits<float>::infinity());
  Vec maxima(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < count; i += kLanes) maxima = at::vec::maximum(maxima, Vec::loadu(scores + i));
  return at::vec::vec_reduce_all([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, maxima);
}

// The scores of a block, in place, as exp(score - maximum); returns their sum.
float block_weights(float* scores, int64_t count, float maximum) {
  const Vec shift(maximum);
  Vec total(0.f);
  for (int64_t i = 0; i < count; i += kLanes) {
    const Vec weights = (Vec::loadu(scores + i) - shift).exp();
    weights.store(scores + i);
    total = total + weights;
  }
  return at::vec::vec_reduce_all([](Vec& a, Vec& b) { return a + b; }, total);
}

// `into[d, d + kChunks * kLanes)` += the `count` value rows' lanes there, weighted by `weights`. Each
// vector of lanes is summed in its own register, so the multiply-adds of one row do not wait on each
// other.
template <int64_t kChunks, typename cache_t>
void add_weighted_lanes(const Shape& s, const float* weights, const cache_t* rows, int64_t count, float* into,
                        int64_t d) {
  std::array<Vec, kChunks> sums;
  for (int64_t c = 0; c < kChunks; ++c) sums[c] = Vec::loadu(into + d + c * kLanes);
  for (int64_t i = 0; i < count; ++i) {
    const Vec weight(weights[i]);
    for (int64_t c = 0; c < kChunks; ++c) {
      const int64_t first = d + c * kLanes;
      const Vec lanes = load_lanes(rows + i * s.value_dim + first, std::min(kLanes, s.value_dim - first));
      sums[c] = at::vec::fmadd(weight, lanes, sums[c]);
    }
  }
  for (int64_t c = 0; c < kChunks; ++c) sums[c].store(into + d + c * kLanes);
}

// `into` += the `count` value rows weighted by `weights`: four vectors of lanes at a time, then one.
template <typename cache_t>
void add_weighted_values(const Shape& s, const float* weights, const cache_t* rows, int64_t count, float* into) {
  constexpr int64_t kChunks = 4;
  int64_t d = 0;
  for (; d + kChunks * kLanes <= s.value_dim; d += kChunks * kLanes)
    add_weighted_lanes<kChunks>(s, weights, rows, count, into, d);
  for (; d < s.value_dim; d += kLanes) add_weighted_lanes<1>(s, weights, rows, count, into, d);
}

// Sequence `row`, KV head `kv_head`: writes the attended values of its `group` query heads.
//
// One pass over the context, a block at a time (online softmax): the block's scores for each query
// head, then its values weighted by them, each head's running sums rescaled when the block raises its
// maximum. Nothing is kept per position beyond the block. The weighted sum runs a vector of value
// lanes at a time over the block's keys, in a register; the block's values, read once from memory,
// are in the L1 cache for the group's other heads.
template <typename cache_t>
void attend(const Shape& s, const float* query, const cache_t* keys, const cache_t* values,
            const int64_t* table, int64_t end, float* out, int64_t row, int64_t kv_head, Scratch& scratch) {
  const int64_t group = s.group();
  const int64_t key_width = whole_vectors(s.head_dim), value_width = whole_vectors(s.value_dim);
  const int64_t score_width = whole_vectors(s.block_size);
  // The group's queries, scaled (and by the keys' widening).
  const float query_scale = s.scale * kWidenedScale<cache_t>;
  float* queries = scratch.queries.data();
  const float* own_queries = query + (row * s.heads + kv_head * group) * s.head_dim;
  for (int64_t g = 0; g < group; ++g)
    for (int64_t d = 0; d < key_width; ++d)
      queries[g * key_width + d] = d < s.head_dim ? own_queries[g * s.head_dim + d] * query_scale : 0.f;
  float* sums_of_values = scratch.sums_of_values.data();
  float* scores = scratch.scores.data();
  std::fill(scratch.sums_of_values.begin(), scratch.sums_of_values.end(), 0.f);
  std::fill(scratch.maxima.begin(), scratch.maxima.end(), -std::numeric_limits<float>::infinity());
  std::fill(scratch.sums.begin(), scratch.sums.end(), 0.f);
  const int64_t first = s.sliding_window > 0 ? std::max<int64_t>(0, end - s.sliding_window) : 0;
  // Every block of the context is requested before any is read, but those that follow the block before
  // them in the pool: the hardware prefetcher streams runs of blocks by itself, not jumps between them.
  // (Requests kept a fixed distance ahead of the reading measured slower, even at 2,048 tokens.)
  const int64_t first_block = first / s.block_size, last_block = (end - 1) / s.block_size;
  for (int64_t block = first_block; block <= last_block; ++block) {
    if (block > first_block && table[block] == table[block - 1] + 1) continue;
    const int64_t slot = table[block] * s.block_size;
    prefetch(keys + (kv_head * s.slots + slot) * s.head_dim, s.block_size * s.head_dim);
    prefetch(values + (kv_head * s.slots + slot) * s.value_dim, s.block_size * s.value_dim);
  }
  for (int64_t start = first, stop; start < end; start = stop) {
    stop = std::min(end, (start / s.block_size + 1) * s.block_size);
    const int64_t count = stop - start;
    const int64_t slot = table[start / s.block_size] * s.block_size + start % s.block_size;
    const cache_t* block_values = values + (kv_head * s.slots + slot) * s.value_dim;
    for (int64_t g = 0; g < group; ++g) {
      float* weights = scores + g * score_width;
      const float block_max =
          block_scores(s, queries + g * key_width, keys + (kv_head * s.slots + slot) * s.head_dim, count, weights);
      float& maximum = scratch.maxima[g];
      float* into = sums_of_values + g * value_width;
      if (block_max > maximum) {
        const float rescale = std::exp(maximum - block_max);
        scratch.sums[g] *= rescale;
        for (int64_t d = 0; d < value_width; d += kLanes) (Vec::loadu(into + d) * Vec(rescale)).store(into + d);
        maximum = block_max;
      }
      scratch.sums[g] += block_weights(weights, count, maximum);
      add_weighted_values(s, weights, block_values, count, into);
    }
  }
  float* outputs = out + (row * s.heads + kv_head * group) * s.value_dim;
  for (int64_t g = 0; g < group; ++g)
    for (int64_t d = 0; d < s.value_dim; ++d)
      outputs[g * s.value_dim + d] =
          sums_of_values[g * value_width + d] / scratch.sums[g] * kWidenedScale<cache_t>;
}

template <typename cache_t>
void run(const Shape& s, const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
         const at::Tensor& tables, const at::Tensor& ends, at::Tensor& out) {
  const float* query_data = query.data_ptr<float>();
  const auto* key_data = reinterpret_cast<const cache_t*>(keys.data_ptr());
  const auto* value_data = reinterpret_cast<const cache_t*>(values.data_ptr());
  const int64_t* table_data = tables.data_ptr<int64_t>();
  const int64_t* end_data = ends.data_ptr<int64_t>();
  float* out_data = out.data_ptr<float>();
  const int64_t batch = query.size(0), tasks = batch * s.kv_heads;
  // Tasks in KV-head-major order: the threads' contiguous ranges of tasks then hold similar amounts
  // of context even when a batch's lengths differ widely (a row-major split would give one thread
  // the short rows and another the long ones).
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t stop) {
    Scratch scratch(s);
    for (int64_t task = begin; task < stop; ++task) {
      const int64_t row = task % batch, kv_head = task / batch;
      attend<cache_t>(s, query_data, key_data, value_data, table_data + row * s.width, end_data[row],
                      out_data, row, kv_head, scratch);
    }
  });
}

// The kernel reads wherever the tables point: every block a context uses must lie in the pool.
void check_in_bounds(const Shape& s, const at::Tensor& tables, const at::Tensor& ends) {
  const int64_t* table = tables.data_ptr<int64_t>();
  const int64_t* end = ends.data_ptr<int64_t>();
  const int64_t num_blocks = s.slots / s.block_size;
  for (int64_t row = 0; row < tables.size(0); ++row) {
    TORCH_CHECK(end[row] >= 1 && end[row] <= s.width * s.block_size, "row ", row, ": context length ",
                end[row], " outside [1, ", s.width * s.block_size, "]");
    for (int64_t block = 0; block * s.block_size < end[row]; ++block) {
      const int64_t id = table[row * s.width + block];
      TORCH_CHECK(id >= 0 && id < num_blocks, "row ", row, ": block ", id, " outside the pool of ",
                  num_blocks);
    }
  }
}

at::Tensor paged_decode(const at::Tensor& query,   // [B, heads, head_dim] float32
                        const at::Tensor& keys,    // [kv_heads, slots, head_dim]
                        const at::Tensor& values,  // [kv_heads, slots, value_dim]
                        const at::Tensor& tables,  // [B, W] int64
                        const at::Tensor& ends,    // [B] int64: context length, the new token included
                        int64_t block_size, int64_t sliding_window, double scale) {
  TORCH_CHECK(query.scalar_type() == at::kFloat && query.is_contiguous(), "query: contiguous float32");
  TORCH_CHECK(keys.is_contiguous() && values.is_contiguous(), "the KV cache must be contiguous");
  TORCH_CHECK(keys.scalar_type() == values.scalar_type(), "keys and values differ in dtype");
  TORCH_CHECK(tables.scalar_type() == at::kLong && tables.is_contiguous(), "tables: contiguous int64");
  TORCH_CHECK(ends.scalar_type() == at::kLong && ends.is_contiguous(), "ends: contiguous int64");
  TORCH_CHECK(query.size(1) % keys.size(0) == 0, "query heads must be a multiple of KV heads");
  TORCH_CHECK(tables.size(0) == query.size(0) && ends.size(0) == query.size(0),
              "one block table and one context length per query");
  const Shape s{query.size(1), keys.size(0), keys.size(2), values.size(2), keys.size(1),
                tables.size(1), block_size, sliding_window, static_cast<float>(scale)};
  check_in_bounds(s, tables, ends);
  auto out = at::empty({query.size(0), s.heads, s.value_dim}, query.options());
  switch (keys.scalar_type()) {
    case at::kFloat: run<float>(s, query, keys, values, tables, ends, out); break;
    case at::kBFloat16: run<c10::BFloat16>(s, query, keys, values, tables, ends, out); break;
    case at::kHalf: run<c10::Half>(s, query, keys, values, tables, ends, out); break;
    case at::kFloat8_e4m3fn: run<c10::Float8_e4m3fn>(s, query, keys, values, tables, ends, out); break;
    case at::kFloat8_e5m2: run<c10::Float8_e5m2>(s, query, keys, values, tables, ends, out); break;
    default: TORCH_CHECK(false, "unsupported KV cache dtype ", keys.scalar_type());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(llm_serving, m) {
  m.def("paged_decode(Tensor query, Tensor keys, Tensor values, Tensor tables, Tensor ends, "
        "int block_size, int sliding_window, float scale) -> Tensor",
        &paged_decode);
}
