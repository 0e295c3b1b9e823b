"""`meshproxy iptables` CLI: flag > env > default, print/dry-run output, one-line errors."""

from __future__ import annotations

import argparse
import io

import pytest

from meshproxy.intercept import cli
from meshproxy.intercept.rules import InterceptConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meshproxy")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["iptables", *argv])


def run(*argv: str, env: dict | None = None) -> tuple[int, str, str]:
    args, out, err = parse(*argv), io.StringIO(), io.StringIO()
    code = args.func(args, environ=env or {}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_defaults_without_flags_or_env():
    assert cli.config_from(parse("print"), {}) == InterceptConfig()


def test_env_overrides_default_and_flag_overrides_env():
    env = {"MESHPROXY_INCLUDE_OUTBOUND_CIDRS": "10.0.0.0/8", "MESHPROXY_INBOUND_PORT": "16006",
           "MESHPROXY_PROXY_UID": "2000", "MESHPROXY_IPV6": "false"}
    cfg = cli.config_from(parse("print"), env)
    assert (cfg.include_outbound_cidrs, cfg.inbound_port, cfg.proxy_uid, cfg.ipv6) == ("10.0.0.0/8", 16006, 2000, False)
    cfg = cli.config_from(parse("print", "--include-outbound-cidrs", "*", "--inbound-port", "17006", "--ipv6"), env)
    assert (cfg.include_outbound_cidrs, cfg.inbound_port, cfg.proxy_uid, cfg.ipv6) == ("*", 17006, 2000, True)


def test_empty_flag_value_means_empty_list_not_unset():
    env = {"MESHPROXY_EXCLUDE_INBOUND_PORTS": "8080"}
    assert cli.config_from(parse("print", "--exclude-inbound-ports", ""), env).exclude_inbound_ports == ""
    assert cli.config_from(parse("print"), {"MESHPROXY_EXCLUDE_INBOUND_PORTS": ""}).exclude_inbound_ports == ""


@pytest.mark.parametrize("flag, env", [
    ("--proxy-gid", "MESHPROXY_PROXY_GID"), ("--outbound-port", "MESHPROXY_OUTBOUND_PORT"),
    ("--include-inbound-ports", "MESHPROXY_INCLUDE_INBOUND_PORTS"),
    ("--exclude-inbound-ports", "MESHPROXY_EXCLUDE_INBOUND_PORTS"),
    ("--exclude-outbound-ports", "MESHPROXY_EXCLUDE_OUTBOUND_PORTS"),
    ("--exclude-outbound-cidrs", "MESHPROXY_EXCLUDE_OUTBOUND_CIDRS"),
])
def test_every_flag_has_an_env_var(flag, env):
    value = "1.2.3.0/24" if "cidrs" in flag else "4242"
    field = flag[2:].replace("-", "_")
    from_env = getattr(cli.config_from(parse("print"), {env: value}), field)
    from_flag = getattr(cli.config_from(parse("print", flag, value), {}), field)
    assert str(from_env) == str(from_flag) == value


def test_print_is_both_families_labelled():
    code, out, err = run("print")
    assert code == 0 and err == ""
    assert out.startswith("# IPv4: iptables-restore --noflush\n*nat\n")
    assert "\n# IPv6: ip6tables-restore --noflush\n*nat\n" in out and out.count("COMMIT") == 2
    assert "::6/128" in out


def test_print_without_ipv6_from_env():
    code, out, _ = run("print", env={"MESHPROXY_IPV6": "0"})
    assert code == 0 and "IPv6" not in out and out.count("COMMIT") == 1


def test_apply_dry_run_prints_what_print_prints():
    flags = ("--exclude-outbound-ports", "3306", "--no-ipv6")
    assert run("apply", "--dry-run", *flags)[1] == run("print", *flags)[1]
    assert run("apply", *flags, env={"MESHPROXY_DRY_RUN": "true"})[1] == run("print", *flags)[1]


@pytest.mark.parametrize("argv, env, needle", [
    (("--inbound-port", "abc"), {}, "--inbound-port: 'abc' (from --inbound-port) is not a number"),
    ((), {"MESHPROXY_OUTBOUND_PORT": "x"}, "(from MESHPROXY_OUTBOUND_PORT)"),
    ((), {"MESHPROXY_EXCLUDE_OUTBOUND_CIDRS": "10.0.0.0/99"},
     "--exclude-outbound-cidrs: '10.0.0.0/99' is not a valid CIDR"),
    ((), {"MESHPROXY_IPV6": "maybe"}, "MESHPROXY_IPV6='maybe': expected true or false"),
    (("--include-inbound-ports", "80,,x"), {}, "--include-inbound-ports: 'x'"),
])
def test_bad_values_exit_2_with_one_line(argv, env, needle):
    code, out, err = run("print", *argv, env=env)
    assert code == 2 and out == ""
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_backend_env_is_reported():
    code, _, err = run("cleanup", env={"MESHPROXY_IPTABLES_BACKEND": "xtables"})
    assert code == 2 and "MESHPROXY_IPTABLES_BACKEND='xtables'" in err


def test_backend_flag_choices():
    assert parse("apply", "--iptables-backend", "legacy").iptables_backend == "legacy"
    with pytest.raises(SystemExit):
        parse("apply", "--iptables-backend", "xtables")


def test_apply_failure_is_one_line(monkeypatch):
    def boom(cfg, backend):
        raise cli.iptables.InterceptError("iptables-nft-restore not found: install iptables (1.8+)")
    monkeypatch.setattr(cli.iptables, "apply", boom)
    code, _, err = run("apply")
    assert code == 1 and err == "meshproxy iptables: error: iptables-nft-restore not found: install iptables (1.8+)\n"


def test_apply_and_cleanup_pass_config_and_backend(monkeypatch):
    seen = []
    backend = cli.iptables.Backend(4, "legacy")
    monkeypatch.setattr(cli.iptables, "apply", lambda cfg, b: seen.append(("apply", cfg, b)) or [backend])
    monkeypatch.setattr(cli.iptables, "cleanup", lambda cfg, b: seen.append(("cleanup", cfg, b)) or [])
    env = {"MESHPROXY_IPTABLES_BACKEND": "legacy", "MESHPROXY_IPV6": "false"}
    assert run("apply", env=env)[1] == "meshproxy iptables: applied (IPv4: iptables-legacy-restore)\n"
    assert "nothing of ours" in run("cleanup", "--iptables-backend", "nft", env=env)[1]
    assert seen == [("apply", InterceptConfig(ipv6=False), "legacy"), ("cleanup", InterceptConfig(ipv6=False), "nft")]
