"""Next tokens for the whole batch in a few tensor operations, and one copy back to the host.

In order, as vLLM applies them: grammar masks, end-of-sequence suppression before `min_tokens`,
`logit_bias`, repetition / frequency / presence penalties, temperature, top-k, top-p, min-p, then a
draw. Log-probabilities are those of the model's own logits (before any of this), as OpenAI
reports them. Each step runs only the parts that some row of the batch asks for.

Grammar masks are computed only where they change the draw (as llama.cpp's sampler does): a row whose
draw is an argmax of its logits plus noise (greedy, or temperature alone) draws the token the mask
would let it draw whenever its unmasked choice is allowed, so only the rows whose choice the grammar
rejects are masked and drawn again. Top-k, top-p and min-p keep a set of tokens that depends on which
tokens are allowed, so rows that use them are always masked.

Randomness is counter-based: the noise for token `t` of a request's output position `p` is a hash of
(seed, p, t). A seeded request therefore draws the same tokens whatever else shares its batch and
however often it is preempted and recomputed, and no per-request generator state is kept.
"""

from __future__ import annotations

from collections.abc import Sequence as Rows
from dataclasses import dataclass

import torch

from inference.engine import cpu_decode
from inference.engine.grammar import GrammarCompiler, fill_bitmask, unpack_bitmask
from inference.engine.request import SamplingParams, TokenLogprobs
from inference.engine.sequence import Sequence

_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9
# With 23 bits, (bits + 0.5) / 2^23 is exact in float32 and so strictly inside (0, 1); with 24 the
# largest rounds to 1.0, whose noise is infinite and turns a masked-out token's -inf into NaN, the max.
_UNIFORM_BITS = 23
BAN_BIAS = -100.0


@dataclass(frozen=True)
class Sampled:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with full avalanche, on int64 tensors holding [0, 2^32). Its multipliers are
    below 2^31, so no product leaves the int64 range (signed overflow is not something to rely on)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(seeds: torch.Tensor, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Gumbel(0, 1) noise `[rows, vocab]`, a pure function of each row's (seed, position) and the token."""
    key = _mix32((seeds & _MASK32) ^ _mix32((seeds >> 32) ^ _mix32(positions & _MASK32)))
    tokens = _mix32(torch.arange(vocab_size, device=seeds.device, dtype=torch.int64) * _GOLDEN32 & _MASK32)
    bits = _mix32(key[:, None] ^ tokens[None, :]) >> (32 - _UNIFORM_BITS)
    uniform = (bits.float() + 0.5) / float(1 << _UNIFORM_BITS)  # strictly inside (0, 1)
    return -torch.log(-torch.log(uniform))


def argmax(logits: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """`logits.argmax(-1)` (the first of equal maxima). On the CPU, aten's argmax over a whole
    vocabulary runs several times slower than a vectorised `amax` and took most of a 64-row step's
    sampling time: the C++ kernel there, else a chunked search by way of chunk maxima."""
    if logits.device.type != "cpu":
        return logits.argmax(-1)
    if cpu_decode.loaded():
        return cpu_decode.argmax(logits)
    logits = logits.float()
    rows, vocab = logits.shape
    whole = vocab // chunk
    if whole < 2:
        return logits.argmax(-1)
    maxima = logits[:, : whole * chunk].view(rows, whole, chunk).amax(-1)
    if vocab % chunk:
        maxima = torch.cat([maxima, logits[:, whole * chunk :].amax(-1, keepdim=True)], dim=1)
    first_chunk = maxima.argmax(-1)
    # The last chunk may be short: its columns past the vocabulary repeat the last one, which an
    # argmax (first occurrence) never picks over the same value earlier.
    columns = (first_chunk[:, None] * chunk + torch.arange(chunk)).clamp_(max=vocab - 1)
    return first_chunk * chunk + logits.gather(1, columns).argmax(-1)


def _column(values: list, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype or like.dtype, device=like.device)


def _mask_unless_empty(logits: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """`logits` with `banned` at -inf, except in rows where that would leave nothing to sample."""
    masked = logits.masked_fill(banned, float("-inf"))
    empty = torch.isneginf(masked).all(-1, keepdim=True)
    return torch.where(empty, logits, masked)


def _apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor | None) -> None:
    if bitmask is None:
        return
    bitmask = bitmask.to(logits.device, non_blocking=True)
    allowed = unpack_bitmask(bitmask, bitmask.shape[1] * 32)
    vocab = min(allowed.shape[1], logits.shape[1])
    logits[:, :vocab].masked_fill_(~allowed[:, :vocab], float("-inf"))
    logits[:, vocab:] = float("-inf")


def _suppress_end_tokens(
    logits: torch.Tensor, seqs: Rows[Sequence], eos_token_ids: frozenset[int]
) -> torch.Tensor:
    rows: list[int] = []
    columns: list[int] = []
    for row, seq in enumerate(seqs):
        params = seq.sampling
        if seq.num_output_tokens < params.min_tokens:
            ends = params.end_token_ids(eos_token_ids)
            rows.extend([row] * len(ends))
            columns.extend(ends)
    if not rows:
        return logits
    banned = torch.zeros_like(logits, dtype=torch.bool)
    banned[_column(rows, logits, torch.long), _column(columns, logits, torch.long)] = True
    return _mask_unless_empty(logits, banned)


def _apply_logit_bias(logits: torch.Tensor, seqs: Rows[Sequence]) -> None:
    rows: list[int] = []
    columns: list[int] = []
    values: list[float] = []
    for row, seq in enumerate(seqs):
        for token, bias in seq.sampling.logit_bias.items():
            rows.append(row)
            columns.append(token)
            # OpenAI documents -100 as a ban: make it one, however large the model's logits.
            values.append(float("-inf") if bias <= BAN_BIAS else bias)
    if rows:
        index = (_column(rows, logits, torch.long), _column(columns, logits, torch.long))
        logits.index_put_(index, _column(values, logits), accumulate=True)


def _padded(token_lists: list[list[int]], pad: int, like: torch.Tensor) -> torch.Tensor:
    width = max((len(tokens) for tokens in token_lists), default=0)
    return _column([tokens + [pad] * (width - len(tokens)) for tokens in token_lists], like, torch.long)


def _apply_penalties(logits: torch.Tensor, seqs: Rows[Sequence]) -> None:
    """Repetition over prompt and output (as transformers and vLLM); presence and frequency over the
    output only (as OpenAI defines them)."""
    rows = [row for row, seq in enumerate(seqs) if seq.sampling.penalized]
    if not rows:
        return
    vocab = logits.shape[1]
    picked = [seqs[row] for row in rows]
    # Padding goes to an extra column, cut off afterwards.
    counts = torch.zeros(len(rows), vocab + 1, dtype=logits.dtype, device=logits.device)
    outputs = _padded([seq.output_token_ids for seq in picked], vocab, logits)
    counts.scatter_add_(1, outputs, torch.ones_like(outputs, dtype=logits.dtype))
    counts = counts[:, :vocab]
    seen = torch.zeros(len(rows), vocab + 1, dtype=torch.bool, device=logits.device)
    seen.scatter_(1, _padded([seq.token_ids for seq in picked], vocab, logits), True)
    seen = seen[:, :vocab]

    index = _column(rows, logits, torch.long)
    selected = logits[index]
    repetition = _column([seq.sampling.repetition_penalty for seq in picked], logits)[:, None]
    frequency = _column([seq.sampling.frequency_penalty for seq in picked], logits)[:, None]
    presence = _column([seq.sampling.presence_penalty for seq in picked], logits)[:, None]
    penalized = torch.where(selected > 0, selected / repetition, selected * repetition)
    selected = torch.where(seen, penalized, selected)
    selected = selected - frequency * counts - presence * (counts > 0).to(logits.dtype)
    logits[index] = selected


def _filter(scaled: torch.Tensor, seqs: Rows[Sequence]) -> torch.Tensor:
    """Top-k, top-p and min-p, each only where some row uses it."""
    vocab = scaled.shape[1]
    top_k = [seq.sampling.top_k if 0 < seq.sampling.top_k < vocab else vocab for seq in seqs]
    top_p = [seq.sampling.top_p for seq in seqs]
    min_p = [seq.sampling.min_p for seq in seqs]
    if min(top_k) < vocab or min(top_p) < 1.0:
        ordered, order = scaled.sort(-1, descending=True)
        ranks = torch.arange(vocab, device=scaled.device)[None, :]
        drop = ranks >= _column(top_k, scaled, torch.long)[:, None]
        if min(top_p) < 1.0:
            probabilities = ordered.masked_fill(drop, float("-inf")).softmax(-1)
            # Drop a token once the tokens more likely than it cover top_p; the first always stays.
            covered = probabilities.cumsum(-1) - probabilities
            # Rows without top-p keep every token, whatever rounding does to their sums.
            cutoffs = _column([p if p < 1.0 else float("inf") for p in top_p], scaled)
            drop |= covered >= cutoffs[:, None]
        drop[:, 0] = False
        scaled = scaled.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    if max(min_p) > 0.0:
        probabilities = scaled.softmax(-1)
        threshold = _column(min_p, scaled)[:, None] * probabilities.max(-1, keepdim=True).values
        scaled = scaled.masked_fill(probabilities < threshold, float("-inf"))
    return scaled


def choose(logits: torch.Tensor, seqs: Rows[Sequence]) -> torch.Tensor:
    """Each row's token from its processed logits: the argmax, or a draw (temperature, filters, noise)."""
    chosen = argmax(logits)
    drawn = [row for row, seq in enumerate(seqs) if not seq.sampling.greedy]
    if not drawn:
        return chosen
    # Only the rows that draw pay for filters and noise.
    picked = [seqs[row] for row in drawn]
    rows = _column(drawn, logits, torch.long)
    temperatures = _column([seq.sampling.temperature for seq in picked], logits)
    scaled = _filter(logits[rows] / temperatures[:, None], picked)
    seeds = _column([seq.seed for seq in picked], logits, torch.long)
    positions = _column([seq.num_output_tokens for seq in picked], logits, torch.long)
    noise = gumbel_noise(seeds, positions, logits.shape[1])
    return chosen.index_copy(0, rows, argmax(scaled + noise))


def _draws_as_argmax(params: SamplingParams) -> bool:
    """Whether the row's draw is the argmax of its logits (plus noise), which a mask cannot change
    unless it bans the token chosen."""
    return params.greedy or (params.top_k <= 0 and params.top_p >= 1.0 and params.min_p <= 0.0)


def _keep_to_grammars(
    chosen: torch.Tensor,
    raw: torch.Tensor,
    rows: list[int],
    seqs: Rows[Sequence],
    eos_token_ids: frozenset[int],
    compiler: GrammarCompiler,
) -> list[int]:
    """Every row's token, from `chosen` (drawn without masks): for the constrained `rows`, choose,
    validate, mask the rejected rows and choose again, then keep each row within its budget. `raw`
    holds the model's logits of `rows` as they were before processing."""
    # Host work first: on a GPU it overlaps the forward and the draw, which `tolist` waits for.
    forced = [seqs[row].grammar.forced_token(seqs[row].remaining_tokens) for row in rows]
    tokens = chosen.tolist()
    rejected: list[int] = []  # indices into `rows`
    for index, (row, token) in enumerate(zip(rows, forced, strict=True)):
        if token is not None:
            tokens[row] = token
        elif not (_draws_as_argmax(seqs[row].sampling) and seqs[row].grammar.allows(tokens[row])):
            rejected.append(index)
    if rejected:
        picked = [seqs[rows[index]] for index in rejected]
        bitmask = fill_bitmask(compiler, [seq.grammar.matcher for seq in picked])
        logits = process_logits(raw[rejected], picked, eos_token_ids, bitmask)
        for index, token in zip(rejected, choose(logits, picked).tolist(), strict=True):
            tokens[rows[index]] = token
    for row in rows:
        tokens[row] = seqs[row].grammar.keep_within_budget(tokens[row], seqs[row].remaining_tokens)
    return tokens


@torch.inference_mode()
def process_logits(
    logits: torch.Tensor,
    seqs: Rows[Sequence],
    eos_token_ids: frozenset[int] = frozenset(),
    bitmask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The logits the draw sees, before temperature: masks, biases and penalties applied."""
    _apply_bitmask(logits, bitmask)
    logits = _suppress_end_tokens(logits, seqs, eos_token_ids)
    _apply_logit_bias(logits, seqs)
    _apply_penalties(logits, seqs)
    return logits


@torch.inference_mode()
def sample(
    logits: torch.Tensor,
    seqs: Rows[Sequence],
    eos_token_ids: frozenset[int] = frozenset(),
    grammars: GrammarCompiler | None = None,
) -> Sampled:
    """One token per row of `logits` `[S, vocab]` (in the model's dtype; float32 ones are modified in
    place), and its log-probabilities where the request asked; rows with a grammar keep to it when
    `grammars` is given."""
    if all(seq.sampling.plain_greedy for seq in seqs):  # nothing but the argmax: skip the rest's checks
        return Sampled(argmax(logits).tolist(), [None] * len(seqs))
    logits = logits.float()
    log_probs = logits.log_softmax(-1) if any(seq.sampling.logprobs for seq in seqs) else None
    constrained = [row for row, seq in enumerate(seqs) if seq.grammar is not None and grammars is not None]
    raw = logits[constrained] if constrained else None  # a copy: processing works in place
    chosen = choose(process_logits(logits, seqs, eos_token_ids), seqs)
    if constrained:
        tokens = _keep_to_grammars(chosen, raw, constrained, seqs, eos_token_ids, grammars)
        if log_probs is None:
            return Sampled(tokens, [None] * len(seqs))
        chosen = _column(tokens, logits, torch.long)
    if log_probs is None:
        return Sampled(chosen.tolist(), [None] * len(seqs))

    top_k = max(seq.sampling.top_logprobs for seq in seqs)
    top = log_probs.topk(top_k, -1)
    # One transfer: chosen ids, their log-probabilities, the top ids and theirs (ids are exact in float64).
    parts = (chosen[:, None], log_probs.gather(1, chosen[:, None]), top.indices, top.values)
    packed = torch.cat([part.to(torch.float64) for part in parts], dim=1)
    rows = packed.tolist()
    token_ids = [int(row[0]) for row in rows]
    logprobs: list[TokenLogprobs | None] = []
    for seq, row in zip(seqs, rows, strict=True):
        wanted = seq.sampling.top_logprobs
        if not seq.sampling.logprobs:
            logprobs.append(None)
            continue
        ids, values = row[2 : 2 + top_k], row[2 + top_k :]
        pairs = tuple((int(ids[i]), values[i]) for i in range(wanted))
        logprobs.append(TokenLogprobs(row[1], pairs))
    return Sampled(token_ids, logprobs)
