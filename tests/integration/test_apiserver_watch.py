"""Acceptance 3: a watcher resuming from any retained resourceVersion gets every
later event exactly once, in order, across an apiserver restart; a compacted
resourceVersion gets an ERROR event with code 410."""

from __future__ import annotations

import time

import httpx
import orjson

CM = "/api/v1/namespaces/default/configmaps"


def write_events(url: str, tag: str, count: int) -> list[tuple[str, str, int]]:
    """Creates, updates and deletes configmaps; returns (type, name, rv) as the
    watch must report them (rv 0 where the response does not carry it)."""
    out: list[tuple[str, str, int]] = []
    with httpx.Client(base_url=url, timeout=10) as c:
        for i in range(count):
            name = f"{tag}-{i // 3}"
            if i % 3 == 0:
                r = c.post(CM, json={"metadata": {"name": name}, "data": {"i": str(i)}})
                assert r.status_code == 201, r.text
                out.append(("ADDED", name, int(r.json()["metadata"]["resourceVersion"])))
            elif i % 3 == 1:
                r = c.patch(f"{CM}/{name}", content=orjson.dumps({"data": {"i": str(i)}}),
                            headers={"Content-Type": "application/merge-patch+json"})
                assert r.status_code == 200, r.text
                out.append(("MODIFIED", name, int(r.json()["metadata"]["resourceVersion"])))
            else:
                r = c.delete(f"{CM}/{name}")
                assert r.status_code == 200, r.text
                out.append(("DELETED", name, 0))
    return out


def watch_from(url: str, rv: int, expect: int, timeout: float = 10.0) -> list[tuple[str, str, int]]:
    got: list[tuple[str, str, int]] = []
    deadline = time.monotonic() + timeout
    params = {"watch": "1", "resourceVersion": str(rv), "timeoutSeconds": str(int(timeout))}
    with httpx.stream("GET", url + CM, params=params, timeout=timeout + 5) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line:
                continue
            ev = orjson.loads(line)
            if ev["type"] == "ERROR":
                got.append(("ERROR", ev["object"]["reason"], ev["object"]["code"]))
                break
            m = ev["object"]["metadata"]
            got.append((ev["type"], m["name"], int(m["resourceVersion"])))
            if len(got) >= expect or time.monotonic() > deadline:
                break
    return got


def check_suffix(got: list[tuple[str, str, int]], want: list[tuple[str, str, int]]) -> None:
    assert [(t, n) for t, n, _ in got] == [(t, n) for t, n, _ in want]
    revs = [r for _, _, r in got]
    assert revs == sorted(set(revs)), "resourceVersions must strictly increase"
    for (_, _, g), (_, _, w) in zip(got, want, strict=True):
        if w:
            assert g == w


def test_resume_from_every_retained_version_across_restart(apiserver) -> None:
    start_rv = int(httpx.get(apiserver.url + CM).json()["metadata"]["resourceVersion"])
    before = write_events(apiserver.url, "a", 30)
    apiserver.restart()
    after = write_events(apiserver.url, "b", 30)
    history = before + after
    # the deletes' revisions are learnt from a full watch, then every resume is checked against it
    full = watch_from(apiserver.url, start_rv, len(history))
    check_suffix(full, history)
    revs = [r for _, _, r in full]
    for i, rv in enumerate([start_rv, *revs[:-1]]):
        want = full[i:]
        got = watch_from(apiserver.url, rv, len(want))
        assert got == want, f"resume from {rv} (event {i})"
    # a watch from the newest version sees only what comes next
    newest = revs[-1]
    more = write_events(apiserver.url, "c", 3)
    got = watch_from(apiserver.url, newest, 3)
    check_suffix(got, more)


def test_live_watch_survives_nothing_but_resumes_after_restart(apiserver) -> None:
    """The informer pattern: remember the last rv seen, reconnect after a restart."""
    rv = int(httpx.get(apiserver.url + CM).json()["metadata"]["resourceVersion"])
    first = write_events(apiserver.url, "x", 6)
    seen = watch_from(apiserver.url, rv, len(first))
    check_suffix(seen, first)
    apiserver.kill()
    apiserver.start()
    second = write_events(apiserver.url, "y", 6)
    resumed = watch_from(apiserver.url, seen[-1][2], len(second))
    check_suffix(resumed, second)


def test_compacted_version_gets_410(apiserver_factory) -> None:
    srv = apiserver_factory("--compact-interval", "0.2", "--compact-keep", "3")
    rv0 = int(httpx.get(srv.url + CM).json()["metadata"]["resourceVersion"])
    written = write_events(srv.url, "k", 30)
    deadline = time.monotonic() + 10
    while True:
        got = watch_from(srv.url, rv0, 1, timeout=2)
        if got and got[0][0] == "ERROR":
            break
        assert time.monotonic() < deadline, "compaction never happened"
        time.sleep(0.1)
    assert got[0] == ("ERROR", "Expired", 410)
    # a version that is still retained works
    last_two = written[-2:]
    newest_rv = written[-3][2] or written[-4][2]
    tail = watch_from(srv.url, newest_rv, 10, timeout=2)
    assert [(t, n) for t, n, _ in tail][-2:] == [(t, n) for t, n, _ in last_two]
