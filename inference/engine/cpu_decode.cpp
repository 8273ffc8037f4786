// Paged decode attention for the CPU: one new token per sequence attends over its cached context,
// read where it lies in the KV block pool, position by position, up to its own length. Nothing is
// gathered, and no work is spent on the padding that a batch's block tables carry up to the longest
// context. Each task is one sequence and one KV head, with every query head that shares it (GQA), so
// each key and value is read once. Scores and sums in float32 whatever the cache's dtype.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// Per-thread buffers, reused from task to task.
struct Scratch {
  std::vector<float> scores, maxima, sums, row;  // row: one key or value widened to float32
};

struct Shape {
  int64_t heads, kv_heads, head_dim, value_dim, slots, width, block_size, sliding_window;
  float scale;
};

// A key or value row of the cache as float32: float32 rows as they lie, narrower ones widened into
// `buffer` in a loop the compiler vectorises (bfloat16: a shift; float8: a 256-entry table).
const float* widened(const float* row, int64_t, float*) { return row; }

const float* widened(const c10::BFloat16* row, int64_t size, float* buffer) {
  for (int64_t d = 0; d < size; ++d) buffer[d] = std::bit_cast<float>(static_cast<uint32_t>(row[d].x) << 16);
  return buffer;
}

const float* widened(const c10::Half* row, int64_t size, float* buffer) {
  for (int64_t d = 0; d < size; ++d) buffer[d] = static_cast<float>(row[d]);
  return buffer;
}

template <typename float8_t>
const float* widened_float8(const float8_t* row, int64_t size, float* buffer) {
  static const std::array<float, 256> values = [] {
    std::array<float, 256> table{};
    for (int bits = 0; bits < 256; ++bits)
      table[bits] = static_cast<float>(float8_t(static_cast<uint8_t>(bits), float8_t::from_bits()));
    return table;
  }();
  for (int64_t d = 0; d < size; ++d) buffer[d] = values[row[d].x];
  return buffer;
}

const float* widened(const c10::Float8_e4m3fn* row, int64_t size, float* buffer) {
  return widened_float8(row, size, buffer);
}

const float* widened(const c10::Float8_e5m2* row, int64_t size, float* buffer) {
  return widened_float8(row, size, buffer);
}

float dot(const float* query, const float* key, int64_t size) {
  float sum = 0.f;
  for (int64_t d = 0; d < size; ++d) sum += query[d] * key[d];
  return sum;
}

void accumulate(float* into, float weight, const float* value, int64_t size) {
  for (int64_t d = 0; d < size; ++d) into[d] += weight * value[d];
}

// Sequence `row`, KV head `kv_head`: writes the attended values of its `group` query heads.
template <typename cache_t>
void attend(const Shape& s, const float* query, const cache_t* keys, const cache_t* values,
            const int64_t* table, int64_t end, float* out, int64_t row, int64_t kv_head, Scratch& scratch) {
  const int64_t group = s.heads / s.kv_heads;
  const int64_t first = s.sliding_window > 0 ? std::max<int64_t>(0, end - s.sliding_window) : 0;
  const int64_t length = end - first;
  const float* queries = query + (row * s.heads + kv_head * group) * s.head_dim;
  const cache_t* head_keys = keys + kv_head * s.slots * s.head_dim;
  const cache_t* head_values = values + kv_head * s.slots * s.value_dim;
  std::vector<float>& scores = scratch.scores;
  std::vector<float>& maxima = scratch.maxima;
  std::vector<float>& sums = scratch.sums;
  scores.resize(group * length);
  maxima.assign(group, -std::numeric_limits<float>::infinity());
  sums.resize(group);
  for (int64_t position = first; position < end; ++position) {
    const int64_t slot = table[position / s.block_size] * s.block_size + position % s.block_size;
    const float* key = widened(head_keys + slot * s.head_dim, s.head_dim, scratch.row.data());
    for (int64_t g = 0; g < group; ++g) {
      const float score = dot(queries + g * s.head_dim, key, s.head_dim) * s.scale;
      scores[g * length + position - first] = score;
      maxima[g] = std::max(maxima[g], score);
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    float* weights = scores.data() + g * length;
    float total = 0.f;
    for (int64_t i = 0; i < length; ++i) {
      weights[i] = std::exp(weights[i] - maxima[g]);
      total += weights[i];
    }
    sums[g] = total;
  }
  float* outputs = out + (row * s.heads + kv_head * group) * s.value_dim;
  std::fill(outputs, outputs + group * s.value_dim, 0.f);
  for (int64_t position = first; position < end; ++position) {
    const int64_t slot = table[position / s.block_size] * s.block_size + position % s.block_size;
    const float* value = widened(head_values + slot * s.value_dim, s.value_dim, scratch.row.data());
    for (int64_t g = 0; g < group; ++g)
      accumulate(outputs + g * s.value_dim, scores[g * length + position - first], value, s.value_dim);
  }
  for (int64_t g = 0; g < group; ++g)
    for (int64_t d = 0; d < s.value_dim; ++d) outputs[g * s.value_dim + d] /= sums[g];
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
    Scratch scratch;
    scratch.row.resize(std::max(s.head_dim, s.value_dim));
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
