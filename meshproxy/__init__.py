"""meshproxy: a transparent L4/L7 sidecar proxy for a small, readable service-mesh data plane."""

__version__ = "0.1.0"
