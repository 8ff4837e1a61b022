"""Shared fixtures: a real `kubeling apiserver` process on a free loopback port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from apiserver_proc import ApiServer, free_port


@pytest.fixture
def apiserver_factory(tmp_path: Path) -> Iterator[Callable[..., ApiServer]]:
    """make(*extra_args, start=True, secure=False): apiservers of the test's own, killed at the end
    (secure=True: HTTPS and authentication, as shipped; see ApiServer)."""
    made: list[ApiServer] = []

    def make(*extra: str, start: bool = True, secure: bool = False) -> ApiServer:
        srv = ApiServer(tmp_path / f"data{len(made)}", free_port(), tuple(extra), secure=secure)
        made.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    for srv in made:
        srv.kill()


@pytest.fixture
def apiserver(apiserver_factory: Callable[..., ApiServer]) -> ApiServer:
    return apiserver_factory()
