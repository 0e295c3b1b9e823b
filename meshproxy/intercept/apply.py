"""Install, inspect and remove the interception rules (the I/O half of step 1).

Where this sits: the init container calls :func:`apply` once, before the app and
the sidecar start; ``meshproxy iptables cleanup`` calls :func:`cleanup`. The rules
themselves come from ``rules.render`` (pure); this module only chooses the
iptables backend, reads the live nat table, and feeds one transaction per address
family to ``iptables-restore --noflush`` on stdin, so a failure leaves the table
as it was.

Invariants:
- Only our four ``MESH_*`` chains and the jump rules tagged ``meshproxy`` in
  PREROUTING/OUTPUT are ever created, changed or deleted; other nat rules survive.
- Applying twice gives the same ruleset: the chains are re-declared (which flushes
  them) and earlier copies of our jump rules are deleted in the same transaction.
- Every subprocess goes through an injectable ``Runner``, so unit tests need
  neither root nor iptables.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Protocol

from meshproxy.intercept import rules
from meshproxy.intercept.rules import InterceptConfig

BACKENDS = ("auto", "nft", "legacy")


class InterceptError(Exception):
    """A failure to report as one line, without a traceback."""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    def __call__(self, argv: list[str], input: str | None = None) -> Result: ...


def run_subprocess(argv: list[str], input: str | None = None) -> Result:
    """The real runner: run ``argv`` with ``input`` on stdin, capture text output."""
    try:
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        hint = "install iptables (1.8+)" if "tables" in argv[0] else "install iproute2"
        raise InterceptError(f"{argv[0]} not found: {hint}") from None
    return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass(frozen=True)
class Backend:
    """One family's iptables flavour: the restore and save binaries to call."""

    family: int
    name: str  # "nft" or "legacy"

    def _tool(self, what: str) -> str:
        return f"{'ip6tables' if self.family == 6 else 'iptables'}-{self.name}-{what}"

    @property
    def restore(self) -> str:
        return self._tool("restore")

    @property
    def save(self) -> str:
        return self._tool("save")


def _check(result: Result, argv: list[str]) -> str:
    if result.returncode == 0:
        return result.stdout
    err = (result.stderr or result.stdout).strip()
    if "ermission denied" in err or "must be root" in err:
        raise InterceptError(f"{argv[0]}: permission denied: run as root (or with CAP_NET_ADMIN)")
    raise InterceptError(f"{' '.join(argv)} failed (exit {result.returncode}): {err}")


def _save(backend: Backend, runner: Runner, table: str | None = "nat") -> str:
    argv = [backend.save] + (["-t", table] if table else [])
    return _check(runner(argv), argv)


def select_backend(family: int, preference: str = "auto", *, runner: Runner = run_subprocess,
                   which: Callable[[str], str | None] = shutil.which) -> Backend:
    """Pick the backend for ``family``.

    ``nft``/``legacy`` are taken as asked. ``auto`` follows Istio's detection: use the
    backend that already holds rules (ours first, then anyone's: the node's
    kube-proxy or CNI chose it), else nft.
    """
    if preference not in BACKENDS:
        raise InterceptError(f"--iptables-backend: expected one of {', '.join(BACKENDS)}, got {preference!r}")
    names = ("nft", "legacy") if preference == "auto" else (preference,)
    present = [Backend(family, name) for name in names
               if which(Backend(family, name).restore) and which(Backend(family, name).save)]
    if not present:
        wanted = " or ".join(Backend(family, name).restore for name in names)
        raise InterceptError(f"{wanted} not found: install iptables (1.8+)")
    if len(present) == 1:
        return present[0]
    dumps = {b.name: _save(b, runner, table=None) for b in present}
    for has in (_has_ours, _has_rules):
        for backend in present:
            if has(dumps[backend.name]):
                return backend
    return present[0]


def _has_ours(saved: str) -> bool:
    return any(line.startswith(f":{rules.INBOUND} ") or line.startswith(f":{rules.OUTPUT} ")
               for line in saved.splitlines())


def _has_rules(saved: str) -> bool:
    return any(line.startswith("-A ") for line in saved.splitlines())


def our_jumps(saved_nat: str) -> list[str]:
    """Our jump rules in PREROUTING/OUTPUT, as ``-A`` lines from an ``iptables-save -t nat`` dump."""
    tag = f"--comment {rules.COMMENT} "
    return [line for line in saved_nat.splitlines()
            if any(line.startswith(f"-A {hook} ") and line.endswith(f"-j {ours}")
                   for hook, ours in rules.HOOKS.items())
            and tag in line]


def our_chains(saved_nat: str) -> list[str]:
    """Which of our chains exist, in declaration order."""
    declared = {line[1:].split(" ", 1)[0] for line in saved_nat.splitlines() if line.startswith(":")}
    return [chain for chain in rules.CHAINS if chain in declared]


def apply_text(cfg: InterceptConfig, family: int, saved_nat: str) -> str:
    """The transaction apply feeds to restore: delete our old jumps, then the rendered rules."""
    rendered = rules.render(cfg, family).splitlines()
    deletes = ["-D" + line[2:] for line in our_jumps(saved_nat)]
    # Declarations first (they must precede rules), then the deletes, then the new rules.
    split = len(rules.CHAINS) + 1
    return "\n".join(rendered[:split] + deletes + rendered[split:]) + "\n"


def cleanup_text(saved_nat: str) -> str | None:
    """The transaction that removes our jumps and chains, or ``None`` if nothing of ours is there."""
    jumps, chains = our_jumps(saved_nat), our_chains(saved_nat)
    if not jumps and not chains:
        return None
    lines = ["*nat"]
    lines += ["-D" + line[2:] for line in jumps]
    lines += [f"-F {chain}" for chain in chains]  # our chains jump to each other: empty all first
    lines += [f"-X {chain}" for chain in chains]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _restore(backend: Backend, text: str, runner: Runner) -> None:
    argv = [backend.restore, "--noflush"]
    _check(runner(argv, input=text), argv)


def _passthrough_v6(cfg: InterceptConfig, runner: Runner, add: bool) -> None:
    """The v6 passthrough source (``::6``) is not local by default: put it on lo, as Istio does."""
    argv = ["ip", "-6", "addr", "replace" if add else "del", f"{cfg.inbound_passthrough_source_v6}/128", "dev", "lo"]
    result = runner(argv)
    if add:
        _check(result, argv)


def apply(cfg: InterceptConfig, backend: str = "auto", *, runner: Runner = run_subprocess,
          which: Callable[[str], str | None] = shutil.which) -> list[Backend]:
    """Install the rules for every family of ``cfg``; returns the backends used."""
    used = []
    for family in rules.families(cfg):
        chosen = select_backend(family, backend, runner=runner, which=which)
        _restore(chosen, apply_text(cfg, family, _save(chosen, runner)), runner)
        if family == 6:
            _passthrough_v6(cfg, runner, add=True)
        used.append(chosen)
    return used


def cleanup(cfg: InterceptConfig = InterceptConfig(), backend: str = "auto", *, runner: Runner = run_subprocess,
            which: Callable[[str], str | None] = shutil.which) -> list[Backend]:
    """Remove our jumps and chains (both families when ``cfg.ipv6``); returns the backends cleaned."""
    cleaned = []
    for family in rules.families(cfg):
        chosen = select_backend(family, backend, runner=runner, which=which)
        text = cleanup_text(_save(chosen, runner))
        if text is not None:
            _restore(chosen, text, runner)
            cleaned.append(chosen)
            if family == 6:
                _passthrough_v6(cfg, runner, add=False)
    return cleaned


def dump(cfg: InterceptConfig = InterceptConfig(), backend: str = "auto", *, runner: Runner = run_subprocess,
         which: Callable[[str], str | None] = shutil.which) -> dict[int, str]:
    """The live nat table per family, as ``iptables-save -t nat`` prints it."""
    return {family: _save(select_backend(family, backend, runner=runner, which=which), runner)
            for family in rules.families(cfg)}
