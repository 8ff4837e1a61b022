"""cni.cjson against json, and the exec path's import set (no root)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cni import cjson
from cni.api import host_veth_name, is_host_veth_name
from cni.config import _bad_ifname_char, _valid_name

REPO = Path(__file__).resolve().parents[2]

DOCS = ['{"a": 1}', ' [1, 2.5, -3e10, true, false, null, "x\\u00e9\\n"] ', '{"a": {"b": [{}]}}\n', '"s"', "1",
        "NaN", "[Infinity, -Infinity]", '{"\u00e9": "\u00fc"}', "", "   ", "{", "{not json", '{"a": 1} x',
        '{"a": 1}  \n{"b": 2}', "{'a': 1}", "[1,]", '{"a": 1,}', "\ufeff{}", '{"a": "\x01"}', "01", "[1, 2",
        '{"a": tru}']


def _outcome(fn: object, doc: str | bytes) -> tuple[str, str]:
    try:
        return "ok", repr(fn(doc))  # type: ignore[operator]
    except ValueError as e:
        return type(e).__name__, str(e)


@pytest.mark.parametrize("doc", DOCS)
def test_loads_matches_json(doc: str) -> None:
    assert _outcome(cjson.loads, doc) == _outcome(json.loads, doc)
    assert _outcome(cjson.loads, doc.encode()) == _outcome(json.loads, doc.encode())


def test_dumps_matches_json() -> None:
    for obj in [{"a": [1, 2.5, None, True, "\u00e9\n\"", {"x": {}}], "b": 1e100}, [], "x", 3, {1: 2}, {"k": (1, 2)}]:
        assert cjson.dumps(obj) == json.dumps(obj)
    with pytest.raises(TypeError, match="not JSON serializable"):
        cjson.dumps({"a": object()})


def test_name_checks() -> None:
    for ok in ["a", "A9", "net-1_x.y", "0abc"]:
        assert _valid_name(ok), ok
    for bad in ["", "-a", ".a", "a b", "a/b", "a\n", "\u00e9t\u00e9", "a:b"]:
        assert not _valid_name(bad), bad
    assert not _bad_ifname_char("eth0") and _bad_ifname_char("a b") and _bad_ifname_char("a/b")
    assert _bad_ifname_char("a:b") and _bad_ifname_char("a\t")
    assert is_host_veth_name(host_veth_name("n", "c", "eth0"))
    for bad in ["klv", "klv0123456789aB", "klx0123456789ab", "klv0123456789abc"]:
        assert not is_host_veth_name(bad), bad


def test_exec_path_imports_stay_small() -> None:
    """What ADD with ipMasq off loads: none of the modules that cost milliseconds to import."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import cni.main, cni.config, cni.api, cni.host, cni.nsfd, cni.result, cni.ipam; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(REPO)], capture_output=True, text=True,
                         timeout=30, check=True).stdout.split()
    heavy = {"json", "re", "enum", "typing", "socket", "subprocess", "threading", "copy", "dataclasses"}
    assert heavy.isdisjoint(out), sorted(heavy.intersection(out))
