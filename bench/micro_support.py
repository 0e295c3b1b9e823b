"""What the micro tools share: a recording fake transport and an in-process ``App``.

Where this sits: imported by ``bench/micro_express.py`` and ``bench/micro_h2.py`` (run as
scripts from the repository root, so ``bench/`` is on ``sys.path``). Neither is a test
fixture: they exist to time the proxy's own Python with no socket in the loop.
"""

from __future__ import annotations

from meshproxy.app import App
from meshproxy.config.load import from_dict
from meshproxy.config.snapshot import Snapshot


class FakeTransport:
    """Records writes; everything else a transport does is a no-op. ``real`` answers
    ``get_extra_info`` and is put back when the tool ends."""

    def __init__(self, real):
        self.real = real
        self.out: list[bytes] = []

    def write(self, data):
        self.out.append(bytes(data))

    def writelines(self, parts):
        self.out.append(b"".join(parts))

    def take(self) -> bytes:
        """Everything written since the last ``take``, as one bytes object."""
        data = b"".join(self.out)
        self.out.clear()
        return data

    def get_write_buffer_size(self):
        return 0

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def is_closing(self):
        return False

    def get_extra_info(self, name, default=None):
        return self.real.get_extra_info(name, default)

    def close(self):
        raise AssertionError("the proxy closed a connection in the micro benchmark")

    abort = close


async def start_app(up_port: int, cluster_protocol: str, source: str) -> tuple[App, int]:
    """A started ``App``: explicit listener ``protocol: http`` on a free loopback port → route →
    cluster ``app`` (``cluster_protocol``) → ``127.0.0.1:up_port``. Returns it and the port."""
    cfg = {
        "inbound": {"enabled": False}, "outbound": {"enabled": False},
        "admin": {"port": 0}, "health": {"address": "127.0.0.1", "port": 0},
        "prometheus": {"address": "127.0.0.1", "port": 0}, "log": {"level": "warning"},
        "listeners": [{"name": "bench", "address": "127.0.0.1", "port": 0, "protocol": "http",
                       "upstream": f"127.0.0.1:{up_port}"}],
        "clusters": [{"name": "app", "endpoints": [f"127.0.0.1:{up_port}"], "protocol": cluster_protocol}],
        "routes": [{"name": "all", "cluster": "app"}],
    }
    app = App(Snapshot(from_dict(cfg, source)))
    await app.start()
    return app, app.listeners[0].bound[0].port


def swap_transports(*conns) -> None:
    """Give each connection a ``FakeTransport`` in place of its real one."""
    for c in conns:
        c.transport = FakeTransport(c.transport)


def restore_transports(*conns) -> None:
    for c in conns:
        if isinstance(c.transport, FakeTransport):
            c.transport = c.transport.real


def install_uvloop() -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
