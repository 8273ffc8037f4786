"""Tests of the server. Imported before any test module or fixture of this package."""

import os

import torch

# Without a GPU, Triton kernels run in Triton's interpreter; the choice is made when Triton and the
# kernels are first imported, so before anything imports them (importing torch does not).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
