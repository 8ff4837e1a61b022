"""Acceptance 5: SIGKILL the apiserver again and again while a client writes;
every write that got a 2xx is there after the restart and resourceVersions
never go backwards."""

from __future__ import annotations

import random
import threading
import time

import httpx

URL = "/api/v1/namespaces/default/configmaps"


def test_acknowledged_writes_survive_sigkill(apiserver) -> None:
    acked: dict[str, int] = {}  # name -> rv of the acknowledged create
    counter_acked = 0  # last acknowledged value of the counter
    highest_rv = 0
    with httpx.Client(base_url=apiserver.url) as c:
        assert c.post(URL, json={"metadata": {"name": "counter"}, "data": {"n": "0"}}).status_code == 201
    rng = random.Random(7)
    seq = 0
    for round_ in range(6):
        stop = threading.Event()

        def writer(stop: threading.Event = stop, round_: int = round_) -> None:
            nonlocal seq, counter_acked, highest_rv
            with httpx.Client(base_url=apiserver.url, timeout=5) as c:
                while not stop.is_set():
                    seq += 1
                    name = f"w{seq}"
                    try:
                        r = c.post(URL, json={"metadata": {"name": name}, "data": {"round": str(round_)}})
                        if r.status_code == 201:
                            rv = int(r.json()["metadata"]["resourceVersion"])
                            assert rv > highest_rv, "resourceVersion went backwards"
                            highest_rv = rv
                            acked[name] = rv
                        value = counter_acked + 1
                        r = c.patch(f"{URL}/counter", content=f'{{"data":{{"n":"{value}"}}}}',
                                    headers={"Content-Type": "application/merge-patch+json"})
                        if r.status_code == 200:
                            counter_acked = value
                            rv = int(r.json()["metadata"]["resourceVersion"])
                            assert rv > highest_rv
                            highest_rv = rv
                    except httpx.HTTPError:
                        return  # the server died under us

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(rng.uniform(0.3, 0.8))
        apiserver.kill()
        stop.set()
        t.join(30)
        apiserver.start()
        with httpx.Client(base_url=apiserver.url) as c:
            listed = c.get(URL).json()
            names = {i["metadata"]["name"]: int(i["metadata"]["resourceVersion"]) for i in listed["items"]}
            missing = [n for n in acked if n not in names]
            assert not missing, f"round {round_}: acknowledged writes lost: {missing[:5]}"
            for n, rv in acked.items():
                assert names[n] == rv
            assert int(listed["metadata"]["resourceVersion"]) >= highest_rv
            n_now = int(c.get(f"{URL}/counter").json()["data"]["n"])
            # an update may have committed without its answer arriving: at most one ahead
            assert counter_acked <= n_now <= counter_acked + 1
            counter_acked = n_now
    assert len(acked) > 50, "the writer should have got through a fair number of writes"
