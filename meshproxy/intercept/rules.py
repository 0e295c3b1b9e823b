"""Interception rules: a validated config in, iptables-restore text out (pure).

Where this sits: step 1 of the data flow. Before the app or the sidecar start,
the init container turns an :class:`InterceptConfig` into nat-table rules
(this module) and feeds them to ``iptables-restore --noflush`` (``apply.py``).
From then on the kernel sends the app's outbound TCP to the outbound listener
(15001) and the pod's inbound TCP to the inbound listener (15006); the
listeners read the original destination with ``SO_ORIGINAL_DST``.

The rules follow Istio's istio-iptables (REDIRECT mode), with ``MESH_*``
chains in place of ``ISTIO_*``::

    PREROUTING -p tcp ─▶ MESH_INBOUND ─(port included, not excluded)─▶ MESH_IN_REDIRECT ─▶ REDIRECT :15006
    OUTPUT     -p tcp ─▶ MESH_OUTPUT  ─(first match wins, see _output)─▶ MESH_REDIRECT    ─▶ REDIRECT :15001

Rules here must not do I/O, and must render in the exact form
``iptables-save`` prints them, so that a saved ruleset can be compared with a
rendered one line by line. Every rule carries ``-m comment --comment
meshproxy``: cleanup recognises our jump rules by that tag and our chains by
name, and touches nothing else.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Iterable

COMMENT = "meshproxy"
"""Tag carried by every rule we install."""

INBOUND = "MESH_INBOUND"
IN_REDIRECT = "MESH_IN_REDIRECT"
OUTPUT = "MESH_OUTPUT"
REDIRECT = "MESH_REDIRECT"
CHAINS = (INBOUND, IN_REDIRECT, OUTPUT, REDIRECT)
"""Our chains, in declaration order. Cleanup deletes exactly these."""

HOOKS = {"PREROUTING": INBOUND, "OUTPUT": OUTPUT}
"""Built-in chain → our chain it jumps to (the only rules we add outside our chains)."""

LOOPBACK = {4: "127.0.0.1/32", 6: "::1/128"}


class ConfigError(ValueError):
    """A bad interception setting; ``flag`` names the command-line flag it came from."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"--{flag}: {message}")
        self.flag = flag


@dataclass(frozen=True)
class InterceptConfig:
    """What to capture. Field names match the CLI flags (``_`` ↔ ``-``)."""

    proxy_uid: int = 1337
    """Traffic from this uid (the sidecar) is never redirected outbound."""
    proxy_gid: int = 1337
    """Traffic from this gid is never redirected outbound."""
    inbound_port: int = 15006
    """Port of the inbound listener; captured inbound TCP is redirected here."""
    outbound_port: int = 15001
    """Port of the outbound listener; captured outbound TCP is redirected here."""
    include_inbound_ports: str = "*"
    """``*`` = every inbound port, ``""`` = none, else a comma list of ports."""
    exclude_inbound_ports: str = "15090,15021,15020"
    """Ports never captured inbound (only used with ``include_inbound_ports="*"``, as in Istio)."""
    exclude_outbound_ports: str = ""
    """Destination ports never captured outbound."""
    include_outbound_cidrs: str = "*"
    """``*`` = every destination, ``""`` = none, else a comma list of v4/v6 CIDRs."""
    exclude_outbound_cidrs: str = ""
    """Destinations never captured outbound (v4/v6 CIDRs; they win over includes)."""
    ipv6: bool = True
    """Also install the ip6tables rules."""
    inbound_passthrough_source: str = "127.0.0.6"
    """Source address of the sidecar's inbound leg to the app (IPv4); never captured again."""
    inbound_passthrough_source_v6: str = "::6"
    """Same for IPv6."""

    def __post_init__(self) -> None:
        for name in ("proxy_uid", "proxy_gid"):
            _check_id(name, getattr(self, name))
        for name in ("inbound_port", "outbound_port"):
            _check_port(name, getattr(self, name))
        if self.include_inbound_ports.strip() != "*":
            ports(self.include_inbound_ports, "include_inbound_ports")
        ports(self.exclude_inbound_ports, "exclude_inbound_ports")
        ports(self.exclude_outbound_ports, "exclude_outbound_ports")
        if self.include_outbound_cidrs.strip() != "*":
            cidrs(self.include_outbound_cidrs, "include_outbound_cidrs")
        cidrs(self.exclude_outbound_cidrs, "exclude_outbound_cidrs")
        _check_host(self.inbound_passthrough_source, 4, "inbound_passthrough_source")
        _check_host(self.inbound_passthrough_source_v6, 6, "inbound_passthrough_source_v6")
        if not isinstance(self.ipv6, bool):
            raise ConfigError("ipv6", f"expected true or false, got {self.ipv6!r}")

    def replace(self, **changes) -> "InterceptConfig":
        return dataclasses.replace(self, **changes)


def _flag(field: str) -> str:
    return field.replace("_", "-")


def _check_id(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32 - 1:
        raise ConfigError(_flag(field), f"{value!r} is not a valid uid/gid")


def _check_port(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(_flag(field), f"{value!r} is not a valid port (1-65535)")


def _check_host(value: str, family: int, field: str) -> None:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        addr = None
    if addr is None or addr.version != family:
        raise ConfigError(_flag(field), f"{value!r} is not an IPv{family} address")


def _items(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def ports(text: str, field: str) -> tuple[int, ...]:
    """Parse a comma list of ports (``""`` → empty); duplicates are dropped, order kept."""
    out: list[int] = []
    for item in _items(text):
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise ConfigError(_flag(field), f"{item!r} is not a valid port (1-65535)")
        if int(item) not in out:
            out.append(int(item))
    return tuple(out)


def cidrs(text: str, field: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse a comma list of CIDRs or addresses (host bits are masked: ``10.1.2.3/8`` → ``10.0.0.0/8``)."""
    out = []
    for item in _items(text):
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(_flag(field), f"{item!r} is not a valid CIDR (like 10.0.0.0/8 or fd00::/8)") from None
        if net not in out:
            out.append(net)
    return tuple(out)


def _of_family(nets: Iterable, family: int) -> list[str]:
    return [str(net) for net in nets if net.version == family]


def _rule(chain: str, spec: str, target: str) -> str:
    spec = f"{spec} " if spec else ""
    return f"-A {chain} {spec}-m comment --comment {COMMENT} -j {target}"


def _inbound(cfg: InterceptConfig) -> list[str]:
    """MESH_INBOUND: which inbound TCP goes to the inbound listener."""
    include = cfg.include_inbound_ports.strip()
    if include == "*":
        rules = [_rule(INBOUND, f"-p tcp -m tcp --dport {port}", "RETURN")
                 for port in ports(cfg.exclude_inbound_ports, "exclude_inbound_ports")]
        return rules + [_rule(INBOUND, "-p tcp", IN_REDIRECT)]
    return [_rule(INBOUND, f"-p tcp -m tcp --dport {port}", IN_REDIRECT)
            for port in ports(include, "include_inbound_ports")]


def _output(cfg: InterceptConfig, family: int) -> list[str]:
    """MESH_OUTPUT: locally generated TCP, first match wins (Istio's order)."""
    lo = LOOPBACK[family]
    source = cfg.inbound_passthrough_source if family == 4 else cfg.inbound_passthrough_source_v6
    source = str(ipaddress.ip_network(source))
    include = cfg.include_outbound_cidrs.strip()
    included = [] if include == "*" else _of_family(cidrs(include, "include_outbound_cidrs"), family)
    # An explicitly included loopback range means "capture app traffic on lo too" (as in Istio).
    loopback_included = include != "*" and any(
        net.is_loopback for net in cidrs(include, "include_outbound_cidrs") if net.version == family)

    rules = [_rule(OUTPUT, f"-p tcp -m tcp --dport {port}", "RETURN")
             for port in ports(cfg.exclude_outbound_ports, "exclude_outbound_ports")]
    # The sidecar's inbound leg to the app (bound to the passthrough source) is already handled.
    rules.append(_rule(OUTPUT, f"-s {source} -o lo", "RETURN"))
    for owner, ident in (("uid-owner", cfg.proxy_uid), ("gid-owner", cfg.proxy_gid)):
        # Sidecar → own pod IP (via lo): the outbound leg of app → VIP → itself; capture it as inbound.
        rules.append(_rule(OUTPUT, f"! -d {lo} -o lo -m owner --{owner} {ident}", IN_REDIRECT))
        # App → own pod IP or other local address (via lo): leave it alone.
        if not loopback_included:
            rules.append(_rule(OUTPUT, f"-o lo -m owner ! --{owner} {ident}", "RETURN"))
        # Everything else the sidecar sends goes out untouched (no loops).
        rules.append(_rule(OUTPUT, f"-m owner --{owner} {ident}", "RETURN"))
    # App → localhost: not captured.
    rules.append(_rule(OUTPUT, f"-d {lo}", "RETURN"))
    rules += [_rule(OUTPUT, f"-d {net}", "RETURN")
              for net in _of_family(cidrs(cfg.exclude_outbound_cidrs, "exclude_outbound_cidrs"), family)]
    if include == "*":
        rules.append(_rule(OUTPUT, "", REDIRECT))
    else:
        rules += [_rule(OUTPUT, f"-d {net}", REDIRECT) for net in included]
    return rules


def render(cfg: InterceptConfig, family: int = 4) -> str:
    """The nat-table ruleset for one address family, as ``iptables-restore --noflush`` input.

    Declaring a chain under ``--noflush`` creates it or, if it exists, flushes it, so
    our four chains are rebuilt from scratch on every apply. The two jump rules live in
    built-in chains and are appended; ``apply`` deletes any earlier copies of them in
    the same transaction, which makes re-applying idempotent.
    """
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, got {family!r}")
    lines = ["*nat"]
    lines += [f":{chain} - [0:0]" for chain in CHAINS]
    lines.append(_rule(IN_REDIRECT, "-p tcp", f"REDIRECT --to-ports {cfg.inbound_port}"))
    lines.append(_rule(REDIRECT, "-p tcp", f"REDIRECT --to-ports {cfg.outbound_port}"))
    lines += _inbound(cfg)
    lines += _output(cfg, family)
    if cfg.include_inbound_ports.strip() != "":
        lines.append(_rule("PREROUTING", "-p tcp", INBOUND))
    lines.append(_rule("OUTPUT", "-p tcp", OUTPUT))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def families(cfg: InterceptConfig) -> tuple[int, ...]:
    """The address families apply installs rules for."""
    return (4, 6) if cfg.ipv6 else (4,)
