#!/usr/bin/env python3
"""Fuzz a fresh apiserver from its OpenAPI document and print what came back (issue 9, acceptance 3).

Starts `kubeling apiserver` (secure, as shipped; --insecure for plain HTTP) on a free 127.0.0.1
port in a temp dir, generates schemathesis cases for every operation (valid and invalid), then sends
them and mutations of them (tests/fuzz_api.py) as the admin, and prints the counts per HTTP code and
per generator, and every response that broke the rules: a code >= 500, or an error that is not a
Status whose .code is the HTTP status. Exit 1 if any did.

    .venv/bin/python bench/fuzz.py                      # 20,000 requests, about 1.5 min
    .venv/bin/python bench/fuzz.py --requests 10000 --seed 7 --positive 4 --negative 2
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from apiserver_proc import ApiServer  # noqa: E402
from fuzz_api import Fuzzer, merged_openapi, schemathesis_seeds  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/fuzz.py", description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=20_000, help="requests in all (default %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="the mutation seed (default %(default)s)")
    p.add_argument("--positive", type=int, default=2, help="schemathesis valid cases per operation")
    p.add_argument("--negative", type=int, default=1, help="schemathesis invalid cases per operation")
    p.add_argument("--seed-budget", type=float, default=120.0, metavar="SECONDS",
                   help="time schemathesis may spend generating (default %(default)s)")
    p.add_argument("--insecure", action="store_true", help="fuzz a plain-HTTP apiserver (--insecure-serving)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubeling-fuzz-") as d:
        srv = ApiServer(d, secure=not args.insecure)
        srv.start()
        try:
            t0 = time.monotonic()
            seeds = schemathesis_seeds(merged_openapi(), positive=args.positive, negative=args.negative,
                                       budget_s=args.seed_budget)
            print(f"schemathesis: {len(seeds)} cases for every operation in {time.monotonic() - t0:.1f} s",
                  file=sys.stderr)
            with srv.http(timeout=15) as http:
                fuzzer = Fuzzer(http, seeds, random.Random(args.seed))
                fuzzer.setup()
                report = fuzzer.run(args.requests)
            with open(srv.log_path, errors="replace") as f:
                internal = f.read().count("internal error")
        finally:
            srv.stop()
    print(f"kubeling apiserver fuzz (seed {args.seed}, {'insecure' if args.insecure else 'secure'}): "
          f"{report.summary()}")
    print(f"server log 'internal error' lines: {internal}")
    for f in report.failures[:50]:
        print(f"- {f.why}: {f.request[:400]}\n    -> {f.body[:300]}")
    return 1 if report.failures or internal else 0


if __name__ == "__main__":
    sys.exit(main())
