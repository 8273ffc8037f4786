"""`python -m inference serve | make-tiny-model | bench | quantize | merge-lora`.

Every `serve` flag is generated from a ServerConfig field and is also its `LLM_SERVING_*` variable;
a flag given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_origin

from pydantic import ValidationError

from inference.config import ServerConfig, env_name

# Subcommands owned by their own modules, each exposing `main(argv) -> int`.
_DELEGATED = {
    "bench": "inference.bench.cli",
    "quantize": "inference.quantize",
    "merge-lora": "inference.lora.merge",
}


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    for field, info in ServerConfig.model_fields.items():
        description = info.description or field.replace("_", " ")
        # Switches come in pairs, as vLLM's do: --enable-prefix-caching / --no-enable-prefix-caching;
        # lists take several values: --lora-modules a=DIR b=DIR.
        takes: dict[str, object] = {"metavar": field.upper()}
        if info.annotation is bool:
            takes = {"action": argparse.BooleanOptionalAction}
        elif get_origin(info.annotation) is list:
            takes["nargs"] = "+"
        default = info.get_default(call_default_factory=True)
        parser.add_argument(
            flag_name(field),
            dest=field,
            default=argparse.SUPPRESS,  # absent flags leave the field to the environment or default
            help=f"{description} [env {env_name(field)}; default {default!r}]",
            **takes,
        )


def config_from_flags(args: argparse.Namespace) -> ServerConfig:
    """The config from the `serve` flags given, the environment and the defaults, in that order."""
    flags = {field: value for field, value in vars(args).items() if field in ServerConfig.model_fields}
    # pydantic-settings ranks init arguments above environment variables: flags win.
    return ServerConfig(**flags)


def describe_config_errors(error: ValidationError) -> str:
    """One line per error, naming the flag and what is wrong, never the value given: a value may be
    the API key, and pydantic would print the start of it."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        fields = [str(part) for part in item["loc"]]
        where = ", ".join(flag_name(field) for field in fields) if fields else "configuration"
        lines.append(f"  {where}: {item['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    try:
        config = config_from_flags(args)
    except ValidationError as error:
        print(f"invalid server configuration:\n{describe_config_errors(error)}", file=sys.stderr)
        return 2
    from inference.server import serve

    return serve(config)


def _make_tiny_model(args: argparse.Namespace) -> int:
    if args.lora is not None:
        from inference.lora.random_adapter import make_tiny_lora

        print(make_tiny_lora(args.lora, args.out))
        return 0
    from inference.tiny_model import make_tiny_model

    print(make_tiny_model(args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference",
        description="Serve a causal LM behind an OpenAI-compatible API; benchmark and quantize it.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the OpenAI-compatible API")
    add_config_flags(serve_parser)
    serve_parser.set_defaults(handler=_serve)
    tiny_parser = commands.add_parser("make-tiny-model", help="write the random-weight demo model")
    tiny_parser.add_argument("--out", type=Path, required=True, help="directory to write it to")
    tiny_parser.add_argument(
        "--lora", metavar="NAME", help="write a random LoRA adapter (seeded by NAME) for the demo model"
    )
    tiny_parser.set_defaults(handler=_make_tiny_model)
    for name, module in _DELEGATED.items():
        commands.add_parser(name, help=f"see `{name} --help` ({module})", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in _DELEGATED:
        return importlib.import_module(_DELEGATED[arguments[0]]).main(arguments[1:])
    args = build_parser().parse_args(arguments)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
