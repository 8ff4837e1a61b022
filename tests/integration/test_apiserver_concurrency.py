"""Acceptance 4: 20 concurrent writers incrementing one ConfigMap through update:
every answer is 200 or 409, and the final value equals the number of 200s."""

from __future__ import annotations

import threading
from collections import Counter

import httpx

URL = "/api/v1/namespaces/default/configmaps"


def test_twenty_writers_compare_and_swap(apiserver) -> None:
    with httpx.Client(base_url=apiserver.url) as c:
        r = c.post(URL, json={"metadata": {"name": "counter"}, "data": {"n": "0"}})
        assert r.status_code == 201
    codes: Counter[int] = Counter()
    lock = threading.Lock()

    def writer() -> None:
        with httpx.Client(base_url=apiserver.url, timeout=30) as c:
            for _ in range(15):
                cm = c.get(f"{URL}/counter").json()
                cm["data"]["n"] = str(int(cm["data"]["n"]) + 1)
                r = c.put(f"{URL}/counter", json=cm)
                with lock:
                    codes[r.status_code] += 1
                if r.status_code == 409:
                    assert r.json()["reason"] == "Conflict"

    threads = [threading.Thread(target=writer) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(codes) <= {200, 409}, codes
    assert sum(codes.values()) == 300
    final = httpx.get(apiserver.url + f"{URL}/counter").json()
    assert int(final["data"]["n"]) == codes[200]
    assert codes[200] > 0
