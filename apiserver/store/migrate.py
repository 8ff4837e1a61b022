"""``kubeling store migrate --from URL --to URL``: copy every object from one store to another.

Run it with the apiservers stopped. It lists the source at one revision (page
by page), and creates each key in the target; a key that already exists there
with the same bytes is skipped (so an interrupted migration can be re-run), a
different one is an error unless --overwrite. Revisions are not carried over:
the target numbers the objects with its own revisions, which are all newer than
anything a client could hold from the target. Clients of the old store must
re-list (their resourceVersions mean nothing to the new one), as after a 410.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .base import KeyExists, StoreError
from .etcd import EtcdStore
from .sqlite import open_store

PAGE = 500


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="URL",
                   help="the store to copy from, e.g. sqlite:///var/lib/kubeling/state.db")
    p.add_argument("--to", dest="target", required=True, metavar="URL",
                   help="the store to copy to, e.g. etcd://127.0.0.1:2379")
    p.add_argument("--prefix", default="/registry/", help="keys to copy (default %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace keys that already exist in the target with different contents")


async def _open(url: str) -> Any:
    store = open_store(url, "/nonexistent")  # the URL names the store: no data-dir default here
    if isinstance(store, EtcdStore):
        await store.connect()
    return store


async def migrate(source_url: str, target_url: str, prefix: str = "/registry/", overwrite: bool = False,
                  out: Any = None) -> tuple[int, int, int]:
    """Returns (copied, skipped as identical, overwritten). Progress goes to `out` (default: the
    sys.stderr of the moment, not of import time: tests swap it)."""
    out = out if out is not None else sys.stderr
    if source_url == target_url:
        raise StoreError("--from and --to name the same store")
    src = await _open(source_url)
    try:
        dst = await _open(target_url)
        try:
            copied = same = replaced = 0
            start_after = ""
            while True:
                page = await src.list(prefix, start_after=start_after, limit=PAGE)
                for kv in page.items:
                    try:
                        await dst.create(kv.key, kv.value)
                        copied += 1
                    except KeyExists:
                        have = await dst.get(kv.key)
                        if have is not None and have.value == kv.value:
                            same += 1
                        elif have is not None and overwrite:
                            await dst.update(kv.key, kv.value, have.mod_rev)
                            replaced += 1
                        else:
                            raise StoreError(f"{kv.key} already exists in the target with other contents; "
                                             f"pass --overwrite to replace it") from None
                if not page.more or not page.items:
                    break
                start_after = page.items[-1].key
                print(f"migrate: {copied + same + replaced} keys so far", file=out)
            print(f"migrate: {copied} copied, {same} already there, {replaced} overwritten; "
                  f"target revision {dst.revision}", file=out)
            return copied, same, replaced
        finally:
            await dst.close()
    finally:
        await src.close()


def run(args: argparse.Namespace) -> int:
    """The subcommand: ``args.source``, ``args.target``, ``args.prefix``, ``args.overwrite``."""
    try:
        asyncio.run(migrate(args.source, args.target, args.prefix, args.overwrite))
    except StoreError as e:
        print(f"kubeling store migrate: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kubeling store migrate", description=__doc__.splitlines()[0])
    add_args(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
