#!/usr/bin/env bash
# Build the compiled meshproxy (setup.py: MESHPROXY_MYPYC=1) into build/compiled/ and print that
# directory; put it first on PYTHONPATH to run it. The editable install in .venv stays the
# interpreted sources. Used by tests/run (the suite's second pass) and bench/run.py.
#   bash tests/compiled.sh [--if-stale]   (--if-stale: keep a build newer than every source file)
set -euo pipefail
cd "$(dirname "$0")/.."
out="$PWD/build/compiled"
if [ "${1:-}" = "--if-stale" ] && [ -f "$out/.built" ] \
   && [ -z "$(find meshproxy setup.py -newer "$out/.built" \( -name '*.py' -o -name '*.c' \) -print -quit)" ]; then
  echo "$out"; exit 0
fi
rm -rf "$out"; mkdir -p "$out"
tar -C . --exclude='__pycache__' --exclude='*.so' -cf - meshproxy setup.py pyproject.toml | tar -C "$out" -xf -
log="$out/build.log"
py="$PWD/.venv/bin/python"
if ! (cd "$out" && MESHPROXY_MYPYC=1 "$py" setup.py build_ext --inplace >"$log" 2>&1); then
  cat "$log" >&2; echo "tests/compiled.sh: the mypyc build failed (log above)" >&2; exit 1
fi
touch "$out/.built"
echo "$out"
