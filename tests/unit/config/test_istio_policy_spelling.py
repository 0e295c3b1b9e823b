"""Authorization policies copied from Istio read as written: ``source:`` / ``operation:``
nesting and camelCase field names are taken for ours, and errors still name our fields."""

from __future__ import annotations

import pytest
import yaml

from meshproxy.config.load import ConfigError, from_dict

# The spec of an Istio AuthorizationPolicy, as `kubectl get authorizationpolicy -o yaml` prints it.
ISTIO_SPEC = """
action: ALLOW
rules:
- from:
  - source:
      principals: ["cluster.local/ns/shop/sa/frontend"]
      notNamespaces: ["test"]
      ipBlocks: ["198.18.0.0/16"]
      notIpBlocks: ["198.18.9.0/24"]
  to:
  - operation:
      methods: ["GET"]
      notMethods: ["DELETE"]
      paths: ["/api/*"]
      notPaths: ["/api/admin*"]
      hosts: ["reviews.shop.svc:*"]
      notHosts: ["evil.shop.svc:*"]
      ports: ["9080"]
      notPorts: ["15000"]
  when:
  - key: request.headers[x-tenant]
    notValues: ["blocked"]
"""

OURS = {
    "action": "ALLOW",
    "rules": [{
        "from": [{"principals": ["cluster.local/ns/shop/sa/frontend"], "not_namespaces": ["test"],
                  "ip_blocks": ["198.18.0.0/16"], "not_ip_blocks": ["198.18.9.0/24"]}],
        "to": [{"methods": ["GET"], "not_methods": ["DELETE"], "paths": ["/api/*"], "not_paths": ["/api/admin*"],
                "hosts": ["reviews.shop.svc:*"], "not_hosts": ["evil.shop.svc:*"], "ports": [9080],
                "not_ports": [15000]}],
        "when": [{"key": "request.headers[x-tenant]", "not_values": ["blocked"]}],
    }],
}


def policies(*specs) -> dict:
    return {"security": {"authorization_policies": [{"name": f"p{i}", **s} for i, s in enumerate(specs)]}}


def test_an_istio_spec_reads_as_our_spelling():
    istio = from_dict(policies(yaml.safe_load(ISTIO_SPEC))).security.authorization_policies[0]
    ours = from_dict(policies(OURS)).security.authorization_policies[0]
    assert istio == ours
    rule = istio.rules[0]
    assert rule.from_[0].not_ip_blocks == ["198.18.9.0/24"] and rule.to[0].not_hosts == ["evil.shop.svc:*"]
    assert rule.to[0].ports == [9080] and rule.when[0].not_values == ["blocked"]


def test_both_spellings_of_one_field_are_refused():
    bad = {"rules": [{"to": [{"operation": {"notPaths": ["/a"], "not_paths": ["/b"]}}]}]}
    with pytest.raises(ConfigError) as e:
        from_dict(policies(bad), "mesh.yaml")
    assert "mesh.yaml: security.authorization_policies[0].rules[0].to[0]" in str(e.value)
    assert "notPaths and not_paths are the same field" in str(e.value)


def test_errors_inside_istio_nesting_name_our_field_path():
    bad = {"rules": [{"to": [{"operation": {"notMethods": "GET"}}]}]}  # a string, not a list
    with pytest.raises(ConfigError) as e:
        from_dict(policies(bad), "mesh.yaml")
    assert "mesh.yaml: security.authorization_policies[0].rules[0].to[0].not_methods: expected a valid list" \
        in str(e.value)


def test_fields_istio_has_and_we_do_not_are_unknown_fields():
    bad = {"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}
    with pytest.raises(ConfigError) as e:
        from_dict(policies(bad), "mesh.yaml")
    assert "rules[0].from[0].requestPrincipals: unknown field" in str(e.value)


def test_source_beside_other_keys_is_not_unwrapped():
    bad = {"rules": [{"from": [{"source": {"principals": ["*"]}, "principals": ["*"]}]}]}
    with pytest.raises(ConfigError) as e:
        from_dict(policies(bad), "mesh.yaml")
    assert "rules[0].from[0].source: unknown field" in str(e.value)


def peer_auth(spec: dict):
    return from_dict({"security": {"peer_authentication": spec}}, "mesh.yaml").security.peer_authentication


def test_an_istio_peer_authentication_spec_reads_as_ours():
    pa = peer_auth(yaml.safe_load("""
mtls:
  mode: STRICT
portLevelMtls:
  8080:
    mode: DISABLE
  9090:
    mode: UNSET
"""))
    assert pa.mode == "STRICT" and pa.port_modes == {8080: "DISABLE"}  # UNSET inherits the workload's mode
    assert pa == peer_auth({"mode": "STRICT", "port_modes": {8080: "DISABLE"}})
    assert peer_auth({"mtls": {}}).mode == "PERMISSIVE"  # Istio's default when unset
    assert peer_auth({"mtls": {"mode": "UNSET"}}).mode == "PERMISSIVE"


@pytest.mark.parametrize("spec, fragment", [
    ({"mtls": {"mode": "STRICT"}, "mode": "DISABLE"}, "mtls.mode and mode are the same setting"),
    ({"portLevelMtls": {8080: {"mode": "STRICT"}}, "port_modes": {}}, "portLevelMtls and port_modes"),
    ({"mtls": {"mode": "LAX"}}, "security.peer_authentication.mode: expected 'STRICT', 'PERMISSIVE' or 'DISABLE'"),
    ({"portLevelMtls": {8080: "STRICT"}}, "portLevelMtls.8080: expected {mode: STRICT|PERMISSIVE|DISABLE|UNSET}"),
    ({"mtls": {"mode": "STRICT", "other": 1}}, "mtls: expected {mode:"),
    ({"portLevelMtls": ["8080"]}, "portLevelMtls: expected a mapping of port to {mode: ...}"),
])
def test_bad_istio_peer_authentication_is_a_clear_error(spec, fragment):
    with pytest.raises(ConfigError) as e:
        peer_auth(spec)
    assert "mesh.yaml: security.peer_authentication" in str(e.value) and fragment in str(e.value)
