"""``meshproxy ca init | issue``: a small CA for demos, tests and clusters without
cert-manager or SPIRE.

Where this sits: beside the data flow (nothing here runs in the proxy). The main
CLI registers the subcommand with :func:`add_parser`; the work is done by
``tls/ca.py``. Errors print one line to stderr and exit 2 (bad input, unusable
CA files) or 1 (cannot write the output); never a traceback.

    meshproxy ca init  --trust-domain cluster.local --out ca/ [--ttl 87600h] [--force]
    meshproxy ca issue --ca ca/ --spiffe-id spiffe://cluster.local/ns/NS/sa/SA \\
                       [--ttl 24h] [--dns NAME ...] --out certs/

Standalone use: ``python -m meshproxy.tls.cli ca init ...``.
"""

from __future__ import annotations

import argparse
import sys

# ``cryptography`` (behind .ca) is imported only when a ``ca`` command runs: registering the
# subcommand must not cost ``meshproxy run`` its memory (about 8 MiB).

EXIT_USAGE = 2
EXIT_IO = 1


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ca`` with its ``init | issue`` subcommands."""
    parser = subparsers.add_parser("ca", help="create a mesh CA and issue workload certificates (SPIFFE)",
                                   description="A minimal mesh CA: ECDSA P-256 root, SPIFFE workload certificates.")
    actions = parser.add_subparsers(dest="ca_action", metavar="{init,issue}", required=True)

    init = actions.add_parser("init", help="create a root CA: OUT/ca.pem, OUT/ca-key.pem (0600)")
    init.add_argument("--trust-domain", required=True, help="SPIFFE trust domain, e.g. cluster.local")
    init.add_argument("--out", required=True, metavar="DIR", help="output directory (created 0700 if missing)")
    init.add_argument("--ttl", default="87600h", help="validity: 30m, 24h, 7d ... (default 87600h = 10 years)")
    init.add_argument("--force", action="store_true", help="replace an existing CA key in DIR")
    init.set_defaults(func=run_init)

    issue = actions.add_parser("issue", help="issue a workload certificate: OUT/cert.pem, key.pem (0600), "
                                             "chain.pem, bundle.pem")
    issue.add_argument("--ca", required=True, metavar="DIR", help="directory with ca.pem and ca-key.pem")
    issue.add_argument("--spiffe-id", required=True, help="spiffe://TRUST_DOMAIN/ns/NS/sa/SA")
    issue.add_argument("--ttl", default="24h", help="validity: 30m, 24h, 7d ... (default 24h)")
    issue.add_argument("--dns", action="append", default=[], metavar="NAME", help="extra DNS SAN (repeatable)")
    issue.add_argument("--out", required=True, metavar="DIR", help="output directory")
    issue.set_defaults(func=run_issue)
    return parser


def _ttl(text: str):
    from .ca import CaError, parse_ttl

    try:
        return parse_ttl(text)
    except ValueError as e:
        raise CaError(f"--ttl: {e}") from None


def _guard(action: str, body) -> int:
    from .ca import CaError

    try:
        return body()
    except CaError as e:
        print(f"meshproxy ca {action}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"meshproxy ca {action}: error: cannot write: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_IO


def run_init(args) -> int:
    from .ca import CertificateAuthority

    def body() -> int:
        ca = CertificateAuthority.create(args.trust_domain, _ttl(args.ttl))
        paths = ca.save(args.out, force=args.force)
        print(f"wrote {', '.join(paths)} (trust domain {ca.trust_domain}, "
              f"valid until {ca.cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})")
        return 0
    return _guard("init", body)


def run_issue(args) -> int:
    from .ca import CaError, CertificateAuthority
    from .identity import SpiffeId, SpiffeIdError

    def body() -> int:
        try:
            SpiffeId.parse(args.spiffe_id)  # input first: a bad ID is reported even without a CA
        except SpiffeIdError as e:
            raise CaError(f"--spiffe-id: {e}") from None
        ttl = _ttl(args.ttl)
        ca = CertificateAuthority.load(args.ca)
        leaf = ca.issue(args.spiffe_id, ttl, dns=args.dns)
        paths = leaf.save(args.out)
        print(f"wrote {', '.join(paths)} ({args.spiffe_id}, "
              f"valid until {leaf.cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})")
        return 0
    return _guard("issue", body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshproxy")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
