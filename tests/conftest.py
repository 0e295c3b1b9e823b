"""Which build of meshproxy the suite runs on.

``tests/run`` runs the suite twice: on the sources (the editable install) and on
the compiled build (``tests/compiled.sh``, ``MESHPROXY_EXPECT_COMPILED=1``). This
check stops the second pass at once if it would silently test the sources again.
"""

import os

import pytest

COMPILED = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    import meshproxy

    compiled = meshproxy.build() == "compiled"
    if os.environ.get("MESHPROXY_EXPECT_COMPILED") == "1" and not compiled:
        raise pytest.UsageError(f"MESHPROXY_EXPECT_COMPILED=1 but meshproxy is imported from {meshproxy.__file__}"
                                " (the sources)")
    config.stash[COMPILED] = compiled
    config.addinivalue_line("markers", "sources_only(reason): the test needs the interpreted sources (it builds a "
                                       "stand-in that borrows a class's methods or skips its __init__, which "
                                       "mypyc-compiled classes refuse); skipped on the compiled build")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.stash[COMPILED]:
        return
    for item in items:
        mark = item.get_closest_marker("sources_only")
        if mark is not None:
            item.add_marker(pytest.mark.skip(reason="sources only: " + (mark.args[0] if mark.args else "")))


def pytest_report_header(config: pytest.Config) -> str:
    return "meshproxy build: " + ("compiled (mypyc)" if config.stash[COMPILED] else "interpreted sources")
