"""The quantized checkpoint: a Hugging Face directory whose weights are int8, plus a record of how.

Layout: `config.json`, the tokenizer files, `generation_config.json` when the source has one,
`model-int8.safetensors` (int8 weights, per-channel scales and every tensor left unquantized) and
`quantization.json`. The weights file deliberately does not use Hugging Face's file name, so that
`from_pretrained` refuses the directory instead of reading int8 values as floats.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch
import torch
import transformers
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights

from inference.output_dir import output_dir_problem, staged_directory
from inference.quantize.schemes import SCHEMES, QuantizationError, Scheme, check_scheme_runs_on
from inference.quantize.swap import swap_in_placeholders

RECORD_FILE = "quantization.json"
WEIGHTS_FILE = "model-int8.safetensors"
RECORD_FORMAT = "llm-serving-int8"
RECORD_VERSION = 1
COPIED_SOURCE_FILES = ("generation_config.json",)


@dataclass(frozen=True)
class QuantizationRecord:
    scheme: Scheme
    quantized_modules: list[str]
    weights_file: str = WEIGHTS_FILE
    weight_format: str = "int8 symmetric, one float scale per output channel"
    torch_version: str = torch.__version__
    transformers_version: str = transformers.__version__
    format: str = RECORD_FORMAT
    format_version: int = RECORD_VERSION


def is_quantized_checkpoint(model_dir: Path) -> bool:
    return (model_dir / RECORD_FILE).is_file()


def read_record(model_dir: Path) -> QuantizationRecord:
    path = model_dir / RECORD_FILE
    try:
        raw = json.loads(path.read_text())
        record = QuantizationRecord(**raw)
    except (OSError, ValueError, TypeError) as error:
        raise QuantizationError(f"{path} is not a readable quantization record: {error}") from error
    if record.format != RECORD_FORMAT or record.format_version != RECORD_VERSION:
        raise QuantizationError(
            f"{path} has format {record.format!r} version {record.format_version}; "
            f"this server reads {RECORD_FORMAT!r} version {RECORD_VERSION}"
        )
    if record.scheme not in SCHEMES:
        raise QuantizationError(f"{path} names scheme {record.scheme!r}; expected one of {SCHEMES}")
    return record


def save_quantized_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    record: QuantizationRecord,
    source_dir: Path,
    out_dir: Path,
    overwrite: bool = False,
) -> Path:
    """Write the checkpoint beside `out_dir` and move it into place only once it is complete."""
    problem = output_dir_problem(out_dir, overwrite)
    if problem is not None:
        raise QuantizationError(problem)
    with staged_directory(out_dir) as staging:
        model.config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name in COPIED_SOURCE_FILES:
            if (source_dir / name).is_file():
                shutil.copy2(source_dir / name, staging / name)
        safetensors.torch.save_model(model, str(staging / record.weights_file), metadata={"format": "pt"})
        # The record goes last: its presence is what marks a directory as a quantized checkpoint.
        (staging / RECORD_FILE).write_text(json.dumps(asdict(record), indent=2) + "\n")
    return out_dir


def load_quantized_checkpoint(
    model_dir: Path, device: torch.device, dtype: torch.dtype
) -> tuple[PreTrainedModel, QuantizationRecord]:
    """Build the model from its config, swap in int8 modules and fill them from the checkpoint.

    The skeleton is built without random init; its full-precision linears exist only until they are
    swapped out, so peak host memory is that of the unquantized model, as when quantizing at load.
    """
    record = read_record(model_dir)
    check_scheme_runs_on(record.scheme, device)
    weights = model_dir / record.weights_file
    if not weights.is_file():
        raise QuantizationError(f"the quantized checkpoint {model_dir} lacks its weights file {weights.name}")
    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as error:
        raise QuantizationError(f"cannot read the model config in {model_dir}: {error}") from error
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    swap_in_placeholders(model, record.scheme, record.quantized_modules)
    try:
        safetensors.torch.load_model(model, weights, strict=True)
    except (SafetensorError, OSError) as error:
        raise QuantizationError(f"{weights} is corrupt or unreadable: {error}") from error
    except RuntimeError as error:
        raise QuantizationError(f"{weights} does not match the model in {model_dir}: {error}") from error
    return model.to(device).eval(), record
