"""``meshproxy iptables apply | cleanup | print``: flags and env vars → InterceptConfig → rules.

Where this sits: the entry point of step 1. The init container runs
``meshproxy iptables apply`` (via ``iptables/meshproxy-init.sh``); the main CLI
registers this subcommand with :func:`add_parser`. Every flag can also come from
the environment as ``MESHPROXY_<FLAG>`` (``--include-outbound-cidrs`` →
``MESHPROXY_INCLUDE_OUTBOUND_CIDRS``); precedence is flag > env > default.
Errors print one line to stderr and exit non-zero, never a traceback.

Standalone use (no main CLI needed): ``python -m meshproxy.intercept.cli iptables print``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Mapping

from meshproxy.intercept import apply as iptables
from meshproxy.intercept import rules
from meshproxy.intercept.rules import ConfigError, InterceptConfig

_DEFAULTS = InterceptConfig()
_INT_FIELDS = ("proxy_uid", "proxy_gid", "inbound_port", "outbound_port")
_STR_FIELDS = ("include_inbound_ports", "exclude_inbound_ports", "exclude_outbound_ports",
               "include_outbound_cidrs", "exclude_outbound_cidrs")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _env_name(dest: str) -> str:
    return "MESHPROXY_" + dest.upper()


def _flags() -> argparse.ArgumentParser:
    """The flags shared by apply, cleanup and print (defaults are None: resolved later)."""
    p = argparse.ArgumentParser(add_help=False)
    for name in _INT_FIELDS + _STR_FIELDS:
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, dest=name, metavar="VALUE",
                       help=f"default {getattr(_DEFAULTS, name)!r}; env {_env_name(name)}")
    p.add_argument("--ipv6", action=argparse.BooleanOptionalAction, default=None,
                   help="also install ip6tables rules (default on; env MESHPROXY_IPV6=true|false)")
    p.add_argument("--iptables-backend", dest="iptables_backend", choices=iptables.BACKENDS, default=None,
                   help="auto (default: the backend that already has rules, else nft), nft or legacy; "
                        "env MESHPROXY_IPTABLES_BACKEND")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``iptables`` with its ``apply | cleanup | print`` subcommands."""
    parser = subparsers.add_parser("iptables", help="install, print or remove the traffic interception rules",
                                   description="Traffic interception rules (nat table, Istio semantics).")
    actions = parser.add_subparsers(dest="iptables_action", metavar="{apply,cleanup,print}", required=True)
    common = _flags()
    apply_p = actions.add_parser("apply", parents=[common], help="install the rules (needs root / NET_ADMIN)")
    apply_p.add_argument("--dry-run", action="store_true", default=None,
                         help="print the rules instead of installing them (env MESHPROXY_DRY_RUN)")
    apply_p.set_defaults(func=run_apply)
    actions.add_parser("cleanup", parents=[common], help="remove exactly our rules and chains"
                       ).set_defaults(func=run_cleanup)
    actions.add_parser("print", parents=[common], help="print what apply feeds to iptables-restore (no root)"
                       ).set_defaults(func=run_print)
    return parser


def _parse_bool(text: str, env: str) -> bool:
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise ConfigError(env.removeprefix("MESHPROXY_").lower().replace("_", "-"),
                      f"{env}={text!r}: expected true or false")


def config_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> InterceptConfig:
    """Resolve every setting: flag if given, else ``MESHPROXY_<FLAG>``, else the default."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    from_env: dict[str, str] = {}
    for name in _INT_FIELDS + _STR_FIELDS:
        value = getattr(args, name, None)
        source = f"--{name.replace('_', '-')}"
        if value is None and _env_name(name) in environ:
            value, source = environ[_env_name(name)], _env_name(name)
            from_env[name.replace("_", "-")] = source
        if value is None:
            continue
        if name in _INT_FIELDS:
            if not value.strip().isdigit():
                raise ConfigError(name.replace("_", "-"), f"{value!r} (from {source}) is not a number")
            value = int(value)
        values[name] = value
    if args.ipv6 is not None:
        values["ipv6"] = args.ipv6
    elif "MESHPROXY_IPV6" in environ:
        values["ipv6"] = _parse_bool(environ["MESHPROXY_IPV6"], "MESHPROXY_IPV6")
    try:
        return dataclasses.replace(_DEFAULTS, **values)
    except ConfigError as exc:
        if exc.flag in from_env:
            raise ConfigError(exc.flag, f"{str(exc).split(': ', 1)[1]} (from {from_env[exc.flag]})") from None
        raise


def _backend(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    choice = args.iptables_backend or environ.get("MESHPROXY_IPTABLES_BACKEND", "auto")
    if choice not in iptables.BACKENDS:
        raise ConfigError("iptables-backend", f"MESHPROXY_IPTABLES_BACKEND={choice!r}: expected auto, nft or legacy")
    return choice


def render_all(cfg: InterceptConfig) -> str:
    """What apply feeds to restore on a pod with none of our rules yet, both families, labelled."""
    parts = []
    for family in rules.families(cfg):
        tool = "ip6tables-restore" if family == 6 else "iptables-restore"
        parts.append(f"# IPv{family}: {tool} --noflush\n{rules.render(cfg, family)}")
    return "".join(parts)


def _guarded(action):
    def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None, out=None, err=None) -> int:
        environ = os.environ if environ is None else environ
        out, err = out or sys.stdout, err or sys.stderr
        try:
            return action(args, environ, out)
        except (ConfigError, iptables.InterceptError) as exc:
            print(f"meshproxy iptables: error: {exc}", file=err)
            return 2 if isinstance(exc, ConfigError) else 1
    run.__name__ = action.__name__
    return run


@_guarded
def run_print(args, environ, out) -> int:
    out.write(render_all(config_from(args, environ)))
    return 0


@_guarded
def run_apply(args, environ, out) -> int:
    cfg = config_from(args, environ)
    dry = args.dry_run or (args.dry_run is None and _parse_bool(environ.get("MESHPROXY_DRY_RUN", ""),
                                                                "MESHPROXY_DRY_RUN"))
    if dry:
        out.write(render_all(cfg))
        return 0
    used = iptables.apply(cfg, _backend(args, environ))
    out.write("meshproxy iptables: applied (" + ", ".join(f"IPv{b.family}: {b.restore}" for b in used) + ")\n")
    return 0


@_guarded
def run_cleanup(args, environ, out) -> int:
    cfg = config_from(args, environ)
    cleaned = iptables.cleanup(cfg, _backend(args, environ))
    what = ", ".join(f"IPv{b.family}: {b.restore}" for b in cleaned) or "nothing of ours was installed"
    out.write(f"meshproxy iptables: cleaned up ({what})\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m meshproxy.intercept.cli iptables ...``."""
    parser = argparse.ArgumentParser(prog="meshproxy")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
