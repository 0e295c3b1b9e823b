#!/bin/sh
# Init-container entrypoint: install (or remove) meshproxy's traffic interception rules.
#
#   meshproxy-init.sh [FLAGS...]           -> meshproxy iptables apply [FLAGS...]
#   meshproxy-init.sh cleanup [FLAGS...]   -> meshproxy iptables cleanup [FLAGS...]
#
# Flags and MESHPROXY_* environment variables are documented in iptables/README.md.
# Needs NET_ADMIN and NET_RAW. MESHPROXY_BIN overrides the meshproxy executable.
set -eu

bin="${MESHPROXY_BIN:-meshproxy}"

if [ "${1:-}" = "cleanup" ]; then
    shift
    exec "$bin" iptables cleanup "$@"
fi
exec "$bin" iptables apply "$@"
