"""Test harness for unlade: local registries, OCI image builders, tree snapshots, umoci.

Modules:

* :mod:`harness.registry` -- run ``docker-registry`` (plain / TLS / htpasswd / token auth).
* :mod:`harness.images` -- build OCI image layouts from tar entries and push them.
* :mod:`harness.tree` -- snapshot and compare unpacked root filesystems.
* :mod:`harness.umoci` -- reference unpacking with ``umoci``.
* :mod:`harness.tools` -- skip-or-fail helpers for missing external tools.
* :mod:`harness.faultproxy` -- a misbehaving proxy in front of a registry (counts requests).
* :mod:`harness.storecheck` -- inspect a store from outside; run ``unlade`` in the background.
* :mod:`harness.protocols` -- call signatures of the factory fixtures (type hints).

Import as ``from harness import images`` (``tests/`` is on ``sys.path`` via rootdir conftest).
"""
