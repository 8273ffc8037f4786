"""JSON text kept on one line by every reader's count, for SSE events and log lines alike."""

from __future__ import annotations

# JSON escapes every control character but may carry these three raw inside a string, and
# `str.splitlines` ends a line at each: so do httpx's and requests' line iterators, and log
# shippers written in Python. Escaped, they decode to the same text.
_SEPARATORS_ESCAPED = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def one_line(json_text: str) -> str:
    """`json_text` (one line as JSON writes it) with U+0085, U+2028 and U+2029 escaped."""
    return json_text.translate(_SEPARATORS_ESCAPED)
