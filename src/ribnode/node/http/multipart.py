"""A streaming parser of ``multipart/related`` bodies (RFC 2046 5.1, RFC 2387), as STOW-RS
sends them (PS3.18 8.6.1.2): it is fed the body chunk by chunk and hands back events, so a
part is written to disk as it arrives and never held whole in memory.

Starlette's own parser handles ``multipart/form-data`` only (and needs python-multipart); a
STOW-RS body is ``multipart/related; type="application/dicom"``, hence this small one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser

MAX_HEADER_BYTES = 16 * 1024  # the headers of one part; a part header longer than this is refused


class MultipartError(ValueError):
    """The body is not well-formed multipart (no boundary, headers too long, ...)."""


@dataclass
class PartStart:
    """A part begins; ``headers`` are its MIME headers (names case-insensitive)."""

    headers: Message


@dataclass
class PartData:
    """The next bytes of the current part's body."""

    data: bytes


@dataclass
class PartEnd:
    """The current part is complete."""


Event = PartStart | PartData | PartEnd


def boundary_of(content_type: Message) -> str:
    """The ``boundary`` parameter of a parsed Content-Type header; raises MultipartError."""
    boundary = content_type.get_param("boundary")
    # RFC 2046 5.1.1 allows 70 characters; Orthanc sends 73, so be lenient up to 200.
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 200:
        raise MultipartError("Content-Type has no valid boundary parameter")
    return boundary


@dataclass
class MultipartParser:
    """Feed body chunks with :meth:`feed`; each call returns the events they complete.

    ``done`` is True once the close delimiter (``--boundary--``) was seen: a body that ends
    without it was truncated."""

    boundary: str
    done: bool = False
    _buffer: bytearray = field(default_factory=lambda: bytearray(b"\r\n"))
    _state: str = "preamble"  # preamble -> delimiter_line -> headers -> body -> delimiter_line ... -> epilogue

    @property
    def _delimiter(self) -> bytes:
        return b"\r\n--" + self.boundary.encode("latin-1")

    def feed(self, chunk: bytes) -> list[Event]:
        """Consume ``chunk``; return the events it completes (in order)."""
        if self.done:
            return []  # the epilogue is ignored (RFC 2046 5.1.1)
        self._buffer += chunk
        events: list[Event] = []
        while True:
            step = getattr(self, f"_{self._state}")(events)
            if not step:
                return events

    def _preamble(self, events: list[Event]) -> bool:
        index = self._buffer.find(self._delimiter)
        if index < 0:
            keep = len(self._delimiter) - 1  # the delimiter may straddle two chunks
            if len(self._buffer) > keep:
                del self._buffer[: len(self._buffer) - keep]
            return False
        del self._buffer[:index]
        self._state = "delimiter_line"
        return True

    def _delimiter_line(self, events: list[Event]) -> bool:
        """The buffer starts with a delimiter: ``--`` closes the body, otherwise a part
        follows (after optional transport padding and CRLF)."""
        rest = len(self._delimiter)
        if len(self._buffer) < rest + 2:
            return False
        line_end = self._buffer.find(b"\r\n", rest)
        if self._buffer[rest : rest + 2] == b"--":
            self.done = True
            self._state = "epilogue"
            self._buffer.clear()
            return False
        if line_end < 0:
            if len(self._buffer) - rest > 1024:
                raise MultipartError("boundary line is not followed by CRLF")
            return False
        if self._buffer[rest:line_end].strip(b" \t"):  # transport padding only (RFC 2046)
            raise MultipartError("unexpected characters after a boundary")
        del self._buffer[: line_end + 2]
        self._state = "headers"
        return True

    def _headers(self, events: list[Event]) -> bool:
        if self._buffer.startswith(b"\r\n"):  # a part without headers
            end, size = 0, 2
        else:
            end, size = self._buffer.find(b"\r\n\r\n"), 4
        if end < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise MultipartError(f"part headers longer than {MAX_HEADER_BYTES} bytes")
            return False
        headers = BytesHeaderParser().parsebytes(bytes(self._buffer[:end]) + b"\r\n\r\n")
        del self._buffer[: end + size]
        events.append(PartStart(headers))
        self._state = "body"
        return True

    def _body(self, events: list[Event]) -> bool:
        index = self._buffer.find(self._delimiter)
        if index < 0:
            safe = len(self._buffer) - (len(self._delimiter) - 1)
            if safe > 0:
                events.append(PartData(bytes(self._buffer[:safe])))
                del self._buffer[:safe]
            return False
        if index:
            events.append(PartData(bytes(self._buffer[:index])))
        events.append(PartEnd())
        del self._buffer[:index]
        self._state = "delimiter_line"
        return True

    def _epilogue(self, events: list[Event]) -> bool:
        return False
