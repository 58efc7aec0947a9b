"""Reading msgspec's validation errors: where they point and what value stood there.

msgspec says "Expected `int` >= 1 - at `$.gateway.queue_depth`" but never the value it rejected;
both config files and request bodies report errors as "field: what is wrong, got VALUE", so
both split the message here and look the value up in the undecoded data.
"""

from __future__ import annotations

import re
from typing import Any

MISSING: Any = object()
_AT = re.compile(r" - at `\$\.?(.*)`$")
_PART = re.compile(r"[^.\[\]]+|\[\d+\]")


def split_error(text: str) -> tuple[str, str | None]:
    """'msg - at `$.a.b[0]`' -> ('msg', 'a.b[0]'); a path of None means the top level."""
    match = _AT.search(text)
    if match is None:
        return text, None
    return text[: match.start()], match.group(1) or None


def path_parts(path: str) -> list[str]:
    """'a.b[0].c' -> ['a', 'b', '[0]', 'c']."""
    return _PART.findall(path)


def value_at(data: Any, path: str) -> Any:
    """The value at a msgspec path ('a.b[0]') in decoded data, or MISSING."""
    node = data
    for part in path_parts(path):
        try:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return MISSING
    return node
