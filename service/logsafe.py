"""Client-supplied text made safe for a log line: control characters shown as escapes, length bounded.

A request id, a model name or any other string a client sends is written with escape() wherever it
reaches a log, so a client can neither start a log line of its own (CWE-117) nor fill the disk."""

from __future__ import annotations

DEFAULT_LIMIT = 128  # characters of client text kept in one log field


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if ch in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch]
    if code < 0x20 or 0x7F <= code < 0xA0 or code in (0x2028, 0x2029):  # C0, DEL, C1, Unicode line breaks
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def escape(text: str | bytes, limit: int = DEFAULT_LIMIT) -> str:
    """text with every control character written as an escape (\\n, \\x1b, ...), cut to its first `limit`
    characters with the number left off appended: one printable log field. Backslashes are kept as they are,
    so escaping twice changes nothing."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="backslashreplace")
    head = text[:limit]
    out = "".join(_escape_char(c) for c in head)
    if len(text) > limit:
        out += f"...(+{len(text) - limit} chars)"
    return out
