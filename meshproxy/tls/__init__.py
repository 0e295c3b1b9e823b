"""Workload identity and mTLS between sidecars (SPIFFE X509-SVIDs).

Where this sits: beside the data flow, used by ``net/mesh.py`` (inbound
termination, outbound dialing to peer sidecars) and by the ``meshproxy ca``
command. The API, module by module:

- ``identity``: ``SpiffeId.parse(text)``, ``spiffe_id_of(cert)``, ``id_matches(pattern, spiffe_id)``;
- ``certs``: ``load_material(cfg) -> Material`` (validated, immutable), ``TlsMaterialError``;
- ``context``: ``server_context(material, alpn)``, ``client_context(material, alpn)``,
  ``peer_spiffe_id(ssl_object)``, ``verify_peer(ssl_object, patterns)``, ``PeerIdentityError``,
  ``ALPN_H2``, ``ALPN_TCP``;
- ``rotation``: ``CertWatcher(cfg, on_change, on_error)``, ``expiry_timestamp(material)``;
- ``ca`` / ``cli``: the small CA behind ``meshproxy ca init | issue``.

Nothing here touches sockets; contexts are handed to the code that does.
"""
