"""The modules setup.py compiles with mypyc (``COMPILED``) must type-check: mypyc
refuses to build otherwise, and a wrong annotation it builds anyway becomes a
TypeError at run time. This runs mypy the way the build does."""

import ast
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _setup_constants() -> dict:
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("COMPILED", "MYPY_ARGS"):
                out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def test_compiled_modules_exist_and_are_on_the_request_path():
    consts = _setup_constants()
    assert consts["MYPY_ARGS"] == ["--follow-imports=silent"]
    assert "meshproxy/http/exchange.py" in consts["COMPILED"]
    for path in consts["COMPILED"]:
        assert os.path.isfile(os.path.join(REPO, path)), path


def test_compiled_modules_type_check():
    consts = _setup_constants()
    r = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", *consts["MYPY_ARGS"], *consts["COMPILED"]],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout
