"""Masking of credentials in text: URLs with a password, tokens in query strings.

Nothing ribnode prints, logs or stores may carry a password or a token. :func:`redact` rewrites
``scheme://user:password@host`` as ``scheme://user:***@host`` and the value of a ``password``,
``token``, ``access_token``, ``api_key`` (...) query parameter as ``***``, anywhere in a text:
``ribnode status``, the audit table, job and delivery errors, and every log record
(:class:`RedactingFilter`, installed by the entry point).
"""

from __future__ import annotations

import logging
import re
from typing import overload

__all__ = ["RedactingFilter", "redact"]

MASK = "***"
# scheme://user:password@ ; the password runs to the last "@" before the host part
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s/:@]*:)(?P<secret>[^\s/@]+)(?=@)")
# ?token=... &password=... (query parameters that carry secrets)
_QUERY = re.compile(
    r"(?P<head>[?&](?:password|passwd|pwd|token|access_token|id_token|api_key|apikey|secret|key)=)"
    r"(?P<secret>[^&\s#'\"]+)",
    re.IGNORECASE,
)
# "Authorization: Bearer xyz" / "Basic xyz" as they may appear in an echoed request
_AUTH = re.compile(r"(?P<head>\b(?:Bearer|Basic)\s+)(?P<secret>[A-Za-z0-9._~+/=\-]{8,})")


@overload
def redact(text: str) -> str: ...
@overload
def redact(text: None) -> None: ...
def redact(text: str | None) -> str | None:
    """``text`` with passwords in URLs, secret query parameters and HTTP credentials masked."""
    if not text:
        return text
    for pattern in (_USERINFO, _QUERY, _AUTH):
        text = pattern.sub(lambda m: m.group("head") + MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter that masks credentials in each record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
