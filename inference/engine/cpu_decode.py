"""The CPU's kernels, in C++, built when the engine picks them: paged decode attention
(`cpu_decode.cpp`); and storing keys and values into the cache, RMS normalisation, gated MLPs' SiLU
and the greedy pick over logits (`cpu_step_ops.cpp`), which ATen runs several times slower at
serving sizes.

Each decode reads its keys and values from their blocks in the pool, and only up to its own context
length: a batch's block tables are padded to its longest context, and attention that ran over the
padding (as SDPA over gathered blocks, or a compiled graph of tensor operations, must) spent most of
a mixed batch's attention time there. The build is cached by torch's extension builder (under
`$TORCH_EXTENSIONS_DIR`, else the user's cache directory), one per instruction set, so a cache shared
between machines never runs code built for another CPU.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_SOURCES = [Path(__file__).with_name(name) for name in ("cpu_decode.cpp", "cpu_step_ops.cpp")]
# What each of torch's CPU capabilities lets the compiler use, and which of ATen's vector classes.
_ARCH_FLAGS = {
    "AVX512": [
        "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
        "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
    ],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
}  # fmt: skip
# Lets the compiler reorder the float sums (vectorised reductions), and nothing else of -ffast-math:
# infinities stay meaningful.
_MATH_FLAGS = ["-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros"]


class KernelBuildError(RuntimeError):
    """The kernel cannot be built here."""


def _put_ninja_on_path() -> None:
    """torch runs ninja by name: the ninja package's binary is found even when the virtual environment
    it is installed in is not activated (`.venv/bin/python -m inference serve`)."""
    try:
        import ninja
    except ImportError:
        return
    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path]) if path else ninja.BIN_DIR


@functools.cache
def load() -> None:
    """Build (or load the cached build of) the kernel and register it as `torch.ops.llm_serving`.
    Raises KernelBuildError, naming what is missing, where it cannot be built."""
    from torch.utils.cpp_extension import is_ninja_available
    from torch.utils.cpp_extension import load as load_extension

    _put_ninja_on_path()
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelBuildError(f"no C++ compiler ({compiler}) on the PATH")
    if not is_ninja_available():
        raise KernelBuildError("ninja, which torch builds C++ extensions with, is not installed")
    capability = torch.backends.cpu.get_cpu_capability()
    started = time.perf_counter()
    try:
        load_extension(
            f"llm_serving_cpu_decode_{capability.lower()}",
            [str(source) for source in _SOURCES],
            extra_cflags=["-O3", "-fopenmp", *_MATH_FLAGS, *_ARCH_FLAGS.get(capability, [])],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
    except (OSError, RuntimeError) as error:
        raise KernelBuildError(f"building the CPU kernels failed: {error}") from error
    logger.info("CPU decode kernels (%s) ready in %.1f s", capability, time.perf_counter() - started)


def loaded() -> bool:
    """Whether `load` has registered the kernels in this process."""
    return load.cache_info().currsize > 0


def paged_decode_attention(
    query: torch.Tensor,  # [B, heads, head_dim]
    keys: torch.Tensor,  # [kv_heads, slots, head_dim]
    values: torch.Tensor,  # [kv_heads, slots, value_dim]
    block_tables: torch.Tensor,  # [B, W]
    ends: torch.Tensor,  # [B]: context length, the new token included
    block_size: int,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """Attention of one new token per sequence over its cached context; `[B, heads, value_dim]`."""
    attended = torch.ops.llm_serving.paged_decode(
        query.float().contiguous(), keys, values, block_tables.contiguous(), ends.contiguous(),
        block_size, sliding_window or 0, scale,
    )  # fmt: skip
    return attended.to(query.dtype)


def store_kv(cache: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor) -> None:
    """Write `rows` `[kv_heads, T, head_dim]`, in the cache's dtype, at `slots` `[T]` of `cache`
    `[kv_heads, slots, head_dim]`."""
    torch.ops.llm_serving.store_kv(cache, slots, rows)


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """`logits.argmax(-1)` of `[rows, vocab]` float32, bfloat16 or float16 logits."""
    return torch.ops.llm_serving.argmax(logits)


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama RMS normalisation of `hidden`'s last dimension, in one pass."""
    return torch.ops.llm_serving.rms_norm(hidden, weight, eps)


def silu_and_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`silu(gate) * up`, in one pass."""
    return torch.ops.llm_serving.silu_and_mul(gate, up)
