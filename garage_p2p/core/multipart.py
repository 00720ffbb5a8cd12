"""Reading (and renaming) one form field of a ``multipart/form-data`` body, without parsing the rest.

The audio endpoints take multipart bodies that the mesh forwards byte for byte: the consumer's
endpoint reads only ``model`` and ``stream`` out of them, and a provider whose backend knows the
model by another name replaces the ``model`` field's value and nothing else. Bounded: at most
MAX_PARTS parts are looked at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

MAX_PARTS = 256
"""Parts of a body looked at, at most (an audio request has a file and a handful of fields)."""
MAX_FIELD_BYTES = 1024
"""A field's value read at most (a model name, ``true``)."""

_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)
_NAME = re.compile(rb';\s*name="([^"]*)"', re.IGNORECASE)


class MultipartError(ValueError):
    """A body that is not the multipart/form-data its content type says."""


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type; MultipartError if it has none."""
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise MultipartError("the body must be multipart/form-data")
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise MultipartError("the multipart content type has no boundary")
    return (found.group(1) or found.group(2)).encode()


def _fields(body: bytes, boundary: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(name, start, end) of each part's content, in order (a file part's name too)."""
    delimiter = b"--" + boundary
    at = body.find(delimiter)
    for _ in range(MAX_PARTS):
        if at < 0:
            return
        after = at + len(delimiter)
        if body[after : after + 2] == b"--":
            return  # the closing delimiter
        headers_end = body.find(b"\r\n\r\n", after)
        if headers_end < 0:
            return
        content = headers_end + 4
        end = body.find(b"\r\n" + delimiter, content)
        if end < 0:
            return
        disposition = next(
            (
                line
                for line in body[after:headers_end].split(b"\r\n")
                if line.lower().startswith(b"content-disposition:")
            ),
            b"",
        )
        name = _NAME.search(disposition)
        if name is not None:
            yield name.group(1), content, end
        at = end + 2


def form_field(body: bytes, content_type: str | None, name: str) -> str | None:
    """The value of form field ``name`` (None if absent); MultipartError for a body that is not
    multipart or a value that is not short UTF-8 text."""
    boundary = boundary_of(content_type)
    for field, start, end in _fields(body, boundary):
        if field == name.encode():
            if end - start > MAX_FIELD_BYTES:
                raise MultipartError(f"the {name} field is longer than {MAX_FIELD_BYTES} bytes")
            try:
                return body[start:end].decode()
            except UnicodeDecodeError:
                raise MultipartError(f"the {name} field is not UTF-8 text") from None
    return None


def replace_field(body: bytes, content_type: str | None, name: str, value: str) -> bytes:
    """``body`` with form field ``name``'s value replaced (every other byte unchanged); the body as
    it was if it has no such field."""
    boundary = boundary_of(content_type)
    for field, start, end in _fields(body, boundary):
        if field == name.encode():
            return body[:start] + value.encode() + body[end:]
    return body
