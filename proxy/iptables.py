"""The proxy's only door to the kernel's iptables: apply a rendered ruleset, read ours, clean up.

Three backends share one behaviour (the `_Applier` base), differing only in
how they read (`_save`) and write (`_restore`) a table:

- RestoreBackend: `iptables-{legacy,nft}-restore --noflush`, one process for all
  tables (each table its own atomic COMMIT).  The production path.
- LibiptcBackend: python-iptables (libiptc, legacy only), kept for the benchmark
  comparison.  libiptc acts in the calling process's network namespace, so for a
  named namespace the work runs in a short-lived child entered with nsenter;
  the caller never calls setns().
- FakeBackend: an in-memory kernel that interprets the same restore text (with the
  kernel's own refusals: unknown jump targets, deleting a referenced or non-empty
  chain) for unit tests.

What `apply` does:
- the first sync, after a failure, or with full=True: read the kernel (`*-save`),
  send the full payload plus `-X` for any chain of ours it no longer declares,
  and fix the jumps from the built-in chains (each exactly once, at the head);
  no other rule of a built-in chain is ever touched and built-in chains are never
  declared, so never flushed.
- later syncs: a partial payload (render.diff against what was applied last): only
  changed chains.  If that fails, a full sync follows at once.

Commands in a namespace run as `nsenter --net=/var/run/netns/<name> <cmd>`:
argument lists, timeouts, no shell.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from proxy.render import (
    TABLES,
    JumpRule,
    RenderConfig,
    Rendered,
    diff,
    jump_rules,
    payload,
    payload_head,
    payload_tail,
)

log = logging.getLogger(__name__)

Mode = Literal["legacy", "nft"]
NETNS_DIR = "/var/run/netns"
BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
# Targets that are not chains (what a -j may name besides a chain).
_TARGETS = frozenset({"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "SNAT", "MASQUERADE", "MARK", "LOG",
                      "REDIRECT", "CONNMARK", "NOTRACK", "CT", "QUEUE", "NFQUEUE", "TCPMSS"})


class ProxyApplyError(RuntimeError):
    """A restore (or save) failed; the message carries the tool's stderr."""


def ns_argv(argv: Sequence[str], netns: str | None) -> list[str]:
    """argv, run inside the named network namespace when one is given (network only:
    mounts stay shared, unlike `ip netns exec`)."""
    return ["nsenter", f"--net={NETNS_DIR}/{netns}", *argv] if netns else list(argv)


def _run(argv: Sequence[str], netns: str | None, *, stdin: str | None = None,
         timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(ns_argv(argv, netns), input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise ProxyApplyError(f"{argv[0]} timed out after {timeout:.0f}s (netns={netns})") from e
    except FileNotFoundError as e:
        raise ProxyApplyError(f"{e.filename} not found: apt-get install iptables util-linux") from e


PIPE_SIZE = 1 << 20  # the Linux default fs.pipe-max-size


def _grow_pipe(stream: IO[str]) -> None:
    """A 1 MiB pipe (default 64 KiB) to a restore: about 10 ms of its parsing buffered, so that
    it never waits on us while we make the next piece of the payload (a pause of the render
    longer than a 64 KiB pipe lasts, ~2.5 ms, stalled it).  Best effort: on failure nothing
    changes but speed."""
    try:
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, AttributeError, ValueError):
        pass


def _count_rules(argv: Sequence[str], netns: str | None) -> int:
    try:
        out = _run(argv, netns, timeout=30).stdout
    except ProxyApplyError:
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("-"))


def detect_mode(netns: str | None = None) -> Mode:
    """Which iptables backend this node uses, as kube-proxy's iptables-wrapper decides:
    the one that holds more rules now (legacy and nft nat tables must never mix in a
    namespace: whichever was created later would get every packet).  When neither holds
    any rule: legacy, because restoring 5,000 services takes 0.4 s with legacy and 6 s
    with nft on this machine (notes/linux.md): a 15x faster sync."""
    legacy = _count_rules(["iptables-legacy-save"], netns)
    nft = _count_rules(["iptables-nft-save"], netns)
    return "nft" if nft > legacy else "legacy"


# --- reading iptables-save text --------------------------------------------------------------

@dataclass
class TableState:
    """What matters to us in one table of the kernel."""

    ours: set[str] = field(default_factory=set)  # our chains
    jumps: dict[str, list[str]] = field(default_factory=dict)  # built-in chain -> specs jumping to ours


def _target(spec: str) -> str:
    toks = spec.split()
    for i, tok in enumerate(toks[:-1]):
        if tok in ("-j", "--jump", "-g", "--goto"):
            return toks[i + 1]
    return ""


def parse_save(text: str, cfg: RenderConfig = RenderConfig()) -> dict[str, TableState]:
    """table -> TableState, for the tables we use, from `iptables-save` output."""
    out = {t: TableState() for t in TABLES}
    table: TableState | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = out.get(line[1:].strip())
        elif table is None:
            continue
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if name.startswith(cfg.prefixes):
                table.ours.add(name)
        elif line.startswith("-A "):
            _, chain, spec = line.split(" ", 2)
            if not chain.startswith(cfg.prefixes) and _target(spec).startswith(cfg.prefixes):
                table.jumps.setdefault(chain, []).append(spec)
    return out


def _jump_fixups(table: str, state: TableState, wanted: Iterable[JumpRule]) -> list[str]:
    """Restore lines that leave each wanted jump exactly once at the head of its built-in chain:
    a chain already right is left alone; otherwise our jumps there are deleted and re-inserted."""
    lines: list[str] = []
    by_chain: dict[str, list[str]] = {}
    for jr in wanted:
        if jr.table == table:
            by_chain.setdefault(jr.chain, []).append(jr.spec)
    for chain in sorted(set(by_chain) | set(state.jumps)):
        want, have = by_chain.get(chain, []), state.jumps.get(chain, [])
        if want == have:
            continue
        lines.extend(f"-D {chain} {spec}" for spec in have)
        lines.extend(f"-I {chain} 1 {spec}" for spec in reversed(want))
    return lines


# --- the shared behaviour --------------------------------------------------------------------

class _Applier:
    """Apply/cleanup logic over two primitives: `_save()` and `_restore(text, test)`."""

    def __init__(self, cfg: RenderConfig = RenderConfig()) -> None:
        self.cfg = cfg
        self._applied: Rendered | None = None  # what the kernel holds, when we know it
        self._last: Sequence[str] = ()  # the pieces of the last restore's text

    @property
    def last_payload(self) -> str:
        """The text of the last restore (for debugging and benchmarks; joined on demand)."""
        if len(self._last) != 1:
            self._last = ["".join(self._last)]
        return self._last[0]

    @last_payload.setter
    def last_payload(self, text: str) -> None:
        self._last = [text]

    # primitives
    def _save(self) -> str:
        raise NotImplementedError

    def _restore(self, text: str, *, test: bool = False) -> None:
        raise NotImplementedError

    # interface
    def state(self) -> dict[str, TableState]:
        return parse_save(self._save(), self.cfg)

    def our_chains(self) -> dict[str, set[str]]:
        """table -> our chains now in the kernel (prefixes KUBELING-/KL- only)."""
        return {t: s.ours for t, s in self.state().items()}

    def full_tail(self, table: str, rendered: Rendered, state: Mapping[str, TableState]) -> str:
        """What follows a table's head in a full sync, given the kernel's `state`: the jump
        fix-ups and `-X` for chains of ours the ruleset no longer declares."""
        chains = rendered.chains.get(table, {})
        st = state.get(table, TableState())
        return payload_tail(sorted(st.ours - set(chains)), _jump_fixups(table, st, jump_rules(self.cfg)), chains)

    def full_payload(self, rendered: Rendered, state: Mapping[str, TableState]) -> str:
        """The full restore text for `rendered` given the kernel's `state`: all our chains,
        `-X` for chains of ours not declared any more, and the jump fix-ups."""
        return "".join(payload_head(t, rendered.chains.get(t, {})) + self.full_tail(t, rendered, state)
                       for t in TABLES)

    def _full_apply(self, rendered: Rendered) -> None:
        """Read the kernel, then restore everything (RestoreBackend overlaps the two)."""
        text = self.full_payload(rendered, self.state())
        self.last_payload = text
        self._restore(text)

    def apply(self, rendered: Rendered, *, full: bool = False) -> None:
        """Make the kernel hold `rendered`: partially when we know what it holds, else fully.
        Raises ProxyApplyError (with the tool's stderr) when even the full restore fails."""
        if not full and self._applied is not None:
            part = diff(self._applied, rendered)
            text = "".join(part.tables[t] for t in TABLES
                           if part.chains.get(t) or part.deleted.get(t))
            if not text:
                self._applied = rendered
                return
            try:
                self.last_payload = text
                self._restore(text)
                self._applied = rendered
                return
            except ProxyApplyError as e:
                log.warning("partial iptables sync failed, doing a full one: %s", e)
        self._applied = None
        self._full_apply(rendered)
        self._applied = rendered

    def test(self, rendered: Rendered) -> None:
        """Have the kernel's parser check `rendered`'s payload without committing it."""
        self._restore("".join(rendered.tables[t] for t in TABLES if t in rendered.tables), test=True)

    def cleanup(self) -> None:
        """Remove our jumps and all our chains; nothing else."""
        self._applied = None
        state = self.state()
        parts = []
        for t in TABLES:
            st = state[t]
            if not st.ours and not st.jumps:
                continue
            unjump = [f"-D {chain} {spec}" for chain, specs in sorted(st.jumps.items()) for spec in specs]
            parts.append(payload(t, {}, sorted(st.ours), unjump))
        if parts:
            self._restore("".join(parts))


class RestoreBackend(_Applier):
    """iptables-{legacy,nft}-restore --noflush, optionally inside a named network namespace."""

    def __init__(self, mode: Mode, netns: str | None = None, cfg: RenderConfig = RenderConfig(),
                 timeout: float = 120.0) -> None:
        super().__init__(cfg)
        if mode not in ("legacy", "nft"):
            raise ValueError(f"iptables mode must be 'legacy' or 'nft', not {mode!r}")
        self.mode: Mode = mode
        self.netns = netns
        self.timeout = timeout

    def _save(self) -> str:
        res = _run([f"iptables-{self.mode}-save"], self.netns, timeout=self.timeout)
        if res.returncode != 0:
            raise ProxyApplyError(f"iptables-{self.mode}-save failed (netns={self.netns}): {res.stderr.strip()}")
        return res.stdout

    def _full_apply(self, rendered: Rendered) -> None:
        """The full sync with the render and the kernel read overlapped: the restore process
        starts first and parses the nat head as `rendered.head_chunks` makes it, piece by
        piece, while `*-save` runs beside it (2 cores: at 10,000 services the render takes
        0.15 s and the save of a populated table 0.15 s, against 0.45 s of restore).  Only the
        tails (stale chains, jump fix-ups) need the save, and nothing commits before a table's
        COMMIT, so this is still one atomic restore per table, of exactly `full_payload`'s text."""
        saved: dict[str, str | int] = {}

        def read_kernel() -> None:
            try:
                res = _run([f"iptables-{self.mode}-save"], self.netns, timeout=self.timeout)
                saved.update(rc=res.returncode, out=res.stdout, err=res.stderr)
            except ProxyApplyError as e:
                saved.update(rc=-1, out="", err=str(e))

        reader = threading.Thread(target=read_kernel, name="iptables-save", daemon=True)
        reader.start()
        argv = [f"iptables-{self.mode}-restore", "--noflush", "-w", "5"]
        with tempfile.TemporaryFile("w+") as errf:
            proc = subprocess.Popen(ns_argv(argv, self.netns), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=errf, text=True)
            watchdog = threading.Timer(self.timeout, proc.kill)
            watchdog.start()
            assert proc.stdin is not None
            _grow_pipe(proc.stdin)
            sent: list[str] = []
            try:
                try:
                    # The first table's head as it is rendered: the restore parses the chain
                    # declarations while the rules are made (Rendered.head_chunks).
                    for chunk in rendered.head_chunks(TABLES[0]):
                        sent.append(chunk)
                        proc.stdin.write(chunk)
                    reader.join(self.timeout)
                    if saved.get("rc") != 0:
                        proc.kill()  # before any COMMIT: nothing of this restore is applied
                        raise ProxyApplyError(f"iptables-{self.mode}-save failed (netns={self.netns}): "
                                              f"{str(saved.get('err', 'timed out')).strip()}")
                    state = parse_save(str(saved["out"]), self.cfg)
                    rest = [self.full_tail(TABLES[0], rendered, state)]
                    for t in TABLES[1:]:
                        rest += [*rendered.head_chunks(t), self.full_tail(t, rendered, state)]
                    sent += rest
                    proc.stdin.write("".join(rest))
                    proc.stdin.close()
                except BrokenPipeError:
                    pass  # the restore stopped early: its exit status and stderr say why
                rc = proc.wait()
            finally:
                watchdog.cancel()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            self._last = sent
            if rc != 0:
                errf.seek(0)
                why = errf.read().strip() or ("killed after timeout" if rc < 0 else f"exit status {rc}")
                raise ProxyApplyError(f"{' '.join(argv)} failed (netns={self.netns}): {why}")

    def _restore(self, text: str, *, test: bool = False) -> None:
        argv = [f"iptables-{self.mode}-restore", "--noflush", "-w", "5"] + (["--test"] if test else [])
        res = _run(argv, self.netns, stdin=text, timeout=self.timeout)
        if res.returncode != 0:
            self._applied = None
            raise ProxyApplyError(f"{' '.join(argv)} failed (netns={self.netns}): {res.stderr.strip()}")


# --- in-memory kernel ------------------------------------------------------------------------

def simulate(tables: dict[str, dict[str, list[str]]], text: str, *, test: bool = False) -> None:
    """Interpret restore text against `tables` (table -> chain -> rule specs), with the
    kernel's refusals.  Each table commits on COMMIT or not at all; raises ProxyApplyError."""
    work: dict[str, list[str]] | None = None
    table = ""
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:]
            base = tables.get(table) or {c: [] for c in BUILTIN_CHAINS.get(table, ())}
            work = {c: list(r) for c, r in base.items()}
            continue
        if work is None:
            raise ProxyApplyError(f"line {n}: no table")
        if line == "COMMIT":
            if not test:
                tables[table] = work
            work = None
            continue
        if line.startswith(":"):
            name = line[1:].split()[0]
            if name not in BUILTIN_CHAINS.get(table, ()):
                work[name] = []
            continue
        op, rest = line.split(" ", 1)
        if op == "-X":
            name = rest.strip()
            if name not in work or name in BUILTIN_CHAINS.get(table, ()):
                raise ProxyApplyError(f"line {n}: -X {name}: no chain/target/match by that name")
            if work[name]:
                raise ProxyApplyError(f"line {n}: -X {name}: Directory not empty")
            if any(_target(s) == name for rules in work.values() for s in rules):
                raise ProxyApplyError(f"line {n}: -X {name}: Too many links")
            del work[name]
            continue
        chain, spec = (rest.split(" ", 1) + [""])[:2]
        if chain not in work:
            raise ProxyApplyError(f"line {n}: chain {chain} does not exist")
        if op == "-I":
            pos_text, _, spec = spec.partition(" ")
            work[chain].insert(int(pos_text) - 1, spec)
        elif op in ("-A", "-D"):
            if op == "-D":
                if spec not in work[chain]:
                    raise ProxyApplyError(f"line {n}: -D {chain}: Bad rule (does a matching rule exist?)")
                work[chain].remove(spec)
                continue
            work[chain].append(spec)
        else:
            raise ProxyApplyError(f"line {n}: unknown command {op}")
        target = _target(spec)
        if target and target not in _TARGETS and target not in work:
            raise ProxyApplyError(f"line {n}: Couldn't load target `{target}'")
    if work is not None:
        raise ProxyApplyError("input ended without COMMIT")


def save_text(tables: Mapping[str, Mapping[str, Sequence[str]]]) -> str:
    """iptables-save-like text of in-memory tables."""
    lines: list[str] = []
    for t, chains in tables.items():
        lines.append(f"*{t}")
        for c in chains:
            lines.append(f":{c} {'ACCEPT' if c in BUILTIN_CHAINS.get(t, ()) else '-'} [0:0]")
        for c, rules in chains.items():
            lines.extend(f"-A {c} {r}" for r in rules)
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class FakeBackend(_Applier):
    """The same behaviour over an in-memory kernel; records every payload it was given."""

    def __init__(self, cfg: RenderConfig = RenderConfig()) -> None:
        super().__init__(cfg)
        self.tables: dict[str, dict[str, list[str]]] = {
            t: {c: [] for c in chains} for t, chains in BUILTIN_CHAINS.items()}
        self.payloads: list[str] = []
        self.fail_next: str | None = None  # set to make the next restore fail with this message

    def _save(self) -> str:
        return save_text(self.tables)

    def _restore(self, text: str, *, test: bool = False) -> None:
        self.payloads.append(text)
        if self.fail_next is not None:
            msg, self.fail_next = self.fail_next, None
            self._applied = None
            raise ProxyApplyError(msg)
        try:
            simulate(self.tables, text, test=test)
        except ProxyApplyError:
            self._applied = None
            raise


# --- python-iptables (libiptc) ---------------------------------------------------------------

class LibiptcBackend(_Applier):
    """Writes through python-iptables (libiptc, legacy tables only); reads with
    iptables-legacy-save.  Interprets the same restore text rule by rule, which is what
    makes it slow: kept to compare against the restore path, not for production."""

    def __init__(self, netns: str | None = None, cfg: RenderConfig = RenderConfig(),
                 timeout: float = 600.0) -> None:
        super().__init__(cfg)
        self.netns = netns
        self.timeout = timeout

    def _save(self) -> str:
        res = _run(["iptables-legacy-save"], self.netns, timeout=self.timeout)
        if res.returncode != 0:
            raise ProxyApplyError(f"iptables-legacy-save failed (netns={self.netns}): {res.stderr.strip()}")
        return res.stdout

    def _restore(self, text: str, *, test: bool = False) -> None:
        # Always a child: libiptc is not thread-safe and acts in the process's own netns.
        code = "import sys, proxy.iptables as m; sys.exit(m._libiptc_main())"
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        argv = ns_argv([sys.executable, "-c", code] + (["--test"] if test else []), self.netns)
        try:
            res = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=self.timeout,
                                 check=False, env=env)
        except subprocess.TimeoutExpired as e:
            self._applied = None
            raise ProxyApplyError(f"python-iptables apply timed out after {self.timeout:.0f}s") from e
        if res.returncode != 0:
            self._applied = None
            raise ProxyApplyError(f"python-iptables apply failed (netns={self.netns}): {res.stderr.strip()[-2000:]}")


def _libiptc_rule(iptc: object, chain_name: str, spec: str) -> object:
    """Build an iptc.Rule from an iptables rule spec ("-m tcp -p tcp --dport 80 -j X")."""
    rule = iptc.Rule()  # type: ignore[attr-defined]
    toks = shlex.split(spec)
    match = target = None
    neg = False
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok == "!":
            neg = True
            i += 1
            continue
        val = toks[i + 1] if i + 1 < len(toks) else ""
        bang = "!" if neg else ""
        if tok == "-p":
            rule.protocol = bang + val
        elif tok == "-s":
            rule.src = bang + val
        elif tok == "-d":
            rule.dst = bang + val
        elif tok == "-m":
            match = rule.create_match(val)
            target = None
        elif tok == "-j":
            target = rule.create_target(val)
            match = None
        elif tok.startswith("--"):
            # Options without a value are flags; python-iptables takes "" for them.
            takes_value = i + 1 < len(toks) and not toks[i + 1].startswith("-") and toks[i + 1] != "!"
            holder = target if target is not None else match
            if holder is None:
                raise ValueError(f"option {tok} outside a match/target in {spec!r}")
            holder.parse(tok[2:], bang + (val if takes_value else ""))  # type: ignore[attr-defined]
            i += 2 if takes_value else 1
            neg = False
            continue
        else:
            raise ValueError(f"unsupported token {tok!r} in {spec!r}")
        neg = False
        i += 2
    return rule


def _libiptc_main() -> int:
    """Child process entry: apply restore text from stdin with python-iptables (in this netns)."""
    import iptc  # type: ignore[import-not-found]

    test = "--test" in sys.argv
    text = sys.stdin.read()
    table = None
    line = ""
    try:
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                table = iptc.Table(line[1:])
                table.autocommit = False
                table.refresh()
                continue
            assert table is not None
            if line == "COMMIT":
                if test:
                    table.refresh()  # drop the work
                else:
                    table.commit()
                table.autocommit = True
                table = None
                continue
            if line.startswith(":"):
                name = line[1:].split()[0]
                if table.is_chain(name):
                    iptc.Chain(table, name).flush()
                else:
                    table.create_chain(name)
                continue
            op, rest = line.split(" ", 1)
            if op == "-X":
                table.delete_chain(rest.strip())
                continue
            chain_name, spec = rest.split(" ", 1)
            chain = iptc.Chain(table, chain_name)
            if op == "-I":
                pos, spec = spec.split(" ", 1)
                chain.insert_rule(_libiptc_rule(iptc, chain_name, spec), int(pos) - 1)
            elif op == "-A":
                chain.append_rule(_libiptc_rule(iptc, chain_name, spec))
            elif op == "-D":
                chain.delete_rule(_libiptc_rule(iptc, chain_name, spec))
            else:
                raise ValueError(f"unknown command {op}")
    except Exception as e:  # noqa: BLE001 - report anything to the parent
        print(f"{type(e).__name__}: {e} (at: {line[:200]})", file=sys.stderr)
        return 1
    print(json.dumps({"ok": True}))
    return 0
