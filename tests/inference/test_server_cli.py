"""The command line: flags and environment variables, the demo model command, the log format."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from inference.__main__ import build_parser, config_from_flags, flag_name, main
from inference.config import ServerConfig, env_name
from inference.logging import JsonFormatter


def serve_config(*argv: str) -> ServerConfig:
    return config_from_flags(build_parser().parse_args(["serve", *argv]))


@pytest.mark.parametrize("field", sorted(ServerConfig.model_fields))
def test_every_config_field_has_a_serve_flag(field: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert flag_name(field) in capsys.readouterr().out


def test_environment_sets_a_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_name("max_num_seqs"), "7")
    assert serve_config().max_num_seqs == 7


def test_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_name("max_num_seqs"), "7")
    assert serve_config("--max-num-seqs", "9").max_num_seqs == 9


def test_invalid_flag_value_exits_2_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "0"]) == 2
    assert "port" in capsys.readouterr().err


def test_make_tiny_model_writes_a_hugging_face_directory(tmp_path: Path) -> None:
    assert main(["make-tiny-model", "--out", str(tmp_path / "tiny")]) == 0
    assert {"config.json", "tokenizer.json"} <= {path.name for path in (tmp_path / "tiny").iterdir()}


@pytest.mark.parametrize("separator", ["\n", "\r", "\x85", "\u2028", "\u2029"])
def test_log_records_are_one_json_object_per_line(separator: str) -> None:
    """One line by any reader's count, `str.splitlines` included (a message may carry a client's text)."""
    message = f"two{separator}lines"
    fields = {"msg": message, "levelname": "INFO", "name": "x", "request_id": "r1"}
    record = logging.makeLogRecord(fields)
    line = JsonFormatter().format(record)
    assert line.splitlines() == [line]
    assert (json.loads(line)["message"], json.loads(line)["request_id"]) == (message, "r1")


@pytest.mark.parametrize(("argv", "enabled"), [((), True), (("--no-enable-prefix-caching",), False)])
def test_prefix_caching_is_a_switch_pair_on_by_default(argv: tuple[str, ...], enabled: bool) -> None:
    assert serve_config(*argv).enable_prefix_caching is enabled


def test_a_switch_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_name("enable_prefix_caching"), "false")
    assert serve_config("--enable-prefix-caching").enable_prefix_caching is True


SECRET = "sk-Zq8vW3xK9pL2mN7rT4yB6"


def _pieces(secret: str, length: int = 4) -> set[str]:
    return {secret[start : start + length] for start in range(len(secret) - length + 1)}


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--api-key", SECRET, "--api-key-file", "key.txt"],
        ["serve", "--api-key", SECRET, "--max-num-seqs", "0"],
    ],
)
def test_a_config_error_prints_no_part_of_the_api_key(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    printed = capsys.readouterr()
    assert not any(piece in printed.err + printed.out for piece in _pieces(SECRET))


def test_the_api_key_never_shows_in_the_config_repr() -> None:
    assert not any(piece in repr(ServerConfig(api_key=SECRET)) for piece in _pieces(SECRET))
