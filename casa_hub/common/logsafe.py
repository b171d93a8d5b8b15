"""One log record, one line: values from requests and providers cannot forge log lines.

A name from a URL (``/hub/api/casa/tokens/xcache%0Amint user=bob ...``) or a group name from the
provider may hold a newline; written into a log as is, it would start a line that looks like the
hub's own (an audit ``mint`` line, say). :func:`escape_controls` writes such characters as escapes,
and :class:`OneLinePerRecord` applies it to every record a handler writes (the formatted message;
tracebacks, which the formatter appends afterwards, keep their lines).
"""

from __future__ import annotations

import logging
import re

#: C0 and C1 control characters, DEL, and the Unicode line and paragraph separators
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with every control character (newline, carriage return, escape, ...) written as
    ``\\n``, ``\\r``, ``\\x1b``, ``\\u2028``: printable and on one line."""
    def escape(m: re.Match[str]) -> str:
        c = m.group(0)
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")

    return _CONTROLS.sub(escape, text)


def has_controls(text: str) -> bool:
    """Whether ``text`` holds a character :func:`escape_controls` would escape."""
    return bool(_CONTROLS.search(text))


class OneLinePerRecord(logging.Filter):
    """A handler filter: the record's message is escaped so that it stays on one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it as usual
            return True
        if has_controls(message):
            record.msg, record.args = escape_controls(message), None
        return True


def install(log: logging.Logger) -> None:
    """Add :class:`OneLinePerRecord` to the handlers of ``log`` and of the root logger (once each).
    Children of ``log`` (audit lines) and tornado's loggers write through these handlers."""
    for handler in [*log.handlers, *logging.getLogger().handlers]:
        if not any(isinstance(f, OneLinePerRecord) for f in handler.filters):
            handler.addFilter(OneLinePerRecord())
