"""Command line: ``meshproxy run | validate | wait-ready | iptables | ca``.

Where this sits: the entry point. It parses arguments, loads the config (exiting
2 with a clear message on a bad file, never a traceback), sets up logging and
runs ``app.App`` on the chosen loop.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request

from . import __version__, build

EXIT_CONFIG = 2


def _load_snapshot(path: str | None):
    from .config.load import ConfigError, load
    from .config.snapshot import Snapshot

    try:
        cfg = load(path)
    except ConfigError as e:
        print(f"meshproxy: invalid config\n{e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    return Snapshot(cfg, source=path or "<defaults>")


def _compile_snapshot(path: str | None):
    """``run``: the config validated in a child process, as frozen records (see config/frozen.py)."""
    from .config.frozen import CompileError, compile_config
    from .config.snapshot import Snapshot

    try:
        cfg = compile_config(path)
    except CompileError as e:
        if e.config_error:
            print(f"meshproxy: invalid config\n{e}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
        print(f"meshproxy: cannot start: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    return Snapshot(cfg, source=path or "<defaults>")


def _config_path(args) -> str | None:
    return args.config or os.environ.get("MESHPROXY_CONFIG") or None


def cmd_run(args) -> int:
    from . import loop
    from .app import App
    from .errors import StartupError
    from .observe import log as logsetup

    snapshot = _compile_snapshot(_config_path(args))
    logsetup.setup(args.log_level or snapshot.config.log.level)

    async def main() -> int:
        app = App(snapshot)
        try:
            return await app.run()
        except OSError as e:
            print(f"meshproxy: cannot start: {e.strerror or e}", file=sys.stderr)
            return 1
        except StartupError as e:
            print(f"meshproxy: cannot start: {e}", file=sys.stderr)
            return 1

    return loop.run(main())


def cmd_validate(args) -> int:
    snapshot = _load_snapshot(args.file)
    cfg = snapshot.config
    print(f"{args.file}: valid ({len(cfg.listeners)} explicit listeners; "
          f"outbound {'on :' + str(cfg.outbound.port) if cfg.outbound.enabled else 'off'}, "
          f"inbound {'on :' + str(cfg.inbound.port) if cfg.inbound.enabled else 'off'})")
    return 0


def cmd_wait_ready(args) -> int:
    url = args.url
    if url is None:
        cfg = _load_snapshot(_config_path(args)).config
        host = cfg.health.address if cfg.health.address not in ("0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        url = f"http://{host}:{cfg.health.port}/healthz/ready"
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return 0
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (OSError, urllib.error.URLError) as e:
            last = str(getattr(e, "reason", e))
        if time.monotonic() >= deadline:
            print(f"meshproxy: not ready after {args.timeout:g}s ({url}: {last})", file=sys.stderr)
            return 1
        time.sleep(0.1)


def build_parser(tools: bool = True) -> argparse.ArgumentParser:
    """The whole CLI; ``tools=False`` leaves out ``iptables`` and ``ca`` (and their
    imports), which ``run`` never needs: a sidecar's resident memory is a target."""
    p = argparse.ArgumentParser(prog="meshproxy", description="A transparent L4/L7 sidecar proxy.")
    p.add_argument("--version", action="version", version=f"meshproxy {__version__} ({build()})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the sidecar (built-in defaults without --config)")
    run.add_argument("--config", "-c", help="YAML config file (default: $MESHPROXY_CONFIG, else built-in defaults)")
    run.add_argument("--log-level", help="override log.level")
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check a config file without running")
    val.add_argument("file")
    val.set_defaults(func=cmd_validate)

    wr = sub.add_parser("wait-ready", help="exit 0 once the proxy is ready (for a postStart hook)")
    wr.add_argument("--config", "-c", help="config file, to find the health port")
    wr.add_argument("--url", help="readiness URL (default http://127.0.0.1:<health port>/healthz/ready)")
    wr.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    wr.set_defaults(func=cmd_wait_ready)

    if tools:
        from .intercept import cli as intercept_cli
        from .tls import cli as tls_cli

        intercept_cli.add_parser(sub)
        tls_cli.add_parser(sub)
    return p


_CORE = ("run", "validate", "wait-ready")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(tools=not argv or argv[0] not in _CORE).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
