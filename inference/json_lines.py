"""JSON text kept on one line by every reader's count, for SSE events and log lines alike."""

from __future__ import annotations

import re

# JSON escapes every control character but may carry these three raw inside a string, and
# `str.splitlines` ends a line at each: so do httpx's and requests' line iterators, and log
# shippers written in Python. Escaped, they decode to the same text.
_LINE_SEPARATORS = re.compile("[\x85\u2028\u2029]")


def _escaped(separator: re.Match[str]) -> str:
    return f"\\u{ord(separator[0]):04x}"


def one_line(json_text: str) -> str:
    """`json_text` (one line as JSON writes it) with U+0085, U+2028 and U+2029 escaped.

    Every SSE chunk passes here: ASCII text (`isascii` reads a flag) returns at once, and other text
    is searched for the three, several times faster than translating it character by character."""
    return json_text if json_text.isascii() else _LINE_SEPARATORS.sub(_escaped, json_text)
