"""Benchmark tooling for ``unlade bench``: real images to pull, a local registry to serve them.

Imported only by the ``bench`` command, so nothing here slows down ``unlade pull``.
"""
