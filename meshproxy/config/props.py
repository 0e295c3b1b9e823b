"""Derived values of config sections, shared by the validated models and their frozen copies.

Where this sits: the pydantic models in ``config/model.py`` and
``config/security.py`` inherit these mixins, and so do the plain records
``config/frozen.py`` builds for the running proxy, so ``listener.upstream_addr``
or ``node.workload`` mean the same on both. No pydantic here.
"""

from __future__ import annotations

from .values import parse_hostport, workload_from_pod


class NodeProps:
    __slots__ = ()

    @property
    def workload(self) -> str:
        return self.workload_name or (workload_from_pod(self.pod_name) if self.pod_name else "unknown")

    @property
    def service_name(self) -> str:
        """Istio's canonical service: set, else the ``app`` label, else the workload name."""
        return self.canonical_service or self.app or self.workload

    @property
    def revision(self) -> str:
        """Istio's canonical revision: set, else the ``version`` label, else ``latest``."""
        return self.canonical_revision or self.version or "latest"


class ExplicitListenerProps:
    __slots__ = ()

    @property
    def upstream_addr(self) -> tuple[str, int]:
        return parse_hostport(self.upstream)


class TlsProps:
    __slots__ = ()

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


PROPS: dict[str, type] = {"Node": NodeProps, "ExplicitListener": ExplicitListenerProps, "Tls": TlsProps}
"""Model class name → the mixin its frozen copy gets."""
