"""json.loads / json.dumps for the exec path, without `import json`.

`import json` costs ~3 ms of an exec'd plugin (json.decoder and json.scanner
compile regular expressions at import, which pulls in re and enum), a third of
the reference plugin's whole run.  The stdlib's json does its real work in
the C accelerator `_json` anyway; this module drives `_json` directly with
json's default options, so the results are the same as json.loads(s) and
json.dumps(obj).  Malformed input is handed to json.loads itself, so errors
are json's own JSONDecodeError (json is imported on that path only).  Input
bytes must be UTF-8 (CNI's encoding).  For any other option, use json.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WS = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Options:
    """The attributes _json.make_scanner reads: json.JSONDecoder()'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan = _json.make_scanner(_Options())  # type: ignore[arg-type]  # typeshed wants a JSONDecoder; any object with its attributes works


def _default(o: Any) -> Any:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


# markers (circular check), default, encoder, indent, key/item separators, sort_keys, skipkeys, allow_nan
_encode = _json.make_encoder({}, _default, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)


def _json_loads(s: str) -> Any:
    """Malformed input: let json itself parse it and raise its JSONDecodeError.

    (_json reports errors with json.decoder's exception class, which exists
    only once json has been imported.)
    """
    import json
    return json.loads(s)


def loads(data: bytes | str) -> Any:
    """json.loads for UTF-8 bytes (a BOM is skipped, as json does) or str."""
    s = data.decode("utf-8-sig") if isinstance(data, (bytes, bytearray)) else data
    try:
        obj, end = _scan(s, len(s) - len(s.lstrip(_WS)))
    except Exception:  # noqa: BLE001 - StopIteration (no value) or the scanner's own error
        return _json_loads(s)
    if s[end:].strip(_WS):
        return _json_loads(s)  # "Extra data"
    return obj


def dumps(obj: Any) -> str:
    """json.dumps(obj) with the default options (ASCII, ", " and ": " separators)."""
    return "".join(_encode(obj, 0))
