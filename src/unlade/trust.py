"""Deciding, on every pull, whether the image may be pulled at all: the signature policy
(:mod:`unlade.policy`) applied to the manifest just fetched, before any config or layer is
fetched, with signatures gathered where containers/image finds them
(:mod:`unlade.sigsources`).

The policy is evaluated even when the image is already in the store (image-rs skips it on
a cache hit): a policy tightened since the last pull must hold for the next one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PolicyError
from .policy import Policy, Verdict, find_policy
from .resources import ResourceProvider, local_path, read_resource

if TYPE_CHECKING:
    from .reference import Reference
    from .registry import RegistryClient

NO_POLICY_NOTE = ("no signature policy (--policy, $UNLADE_POLICY, "
                  "~/.config/containers/policy.json, /etc/containers/policy.json): "
                  "accepting any image")


class _Signatures:
    """The signatures of one image, fetched at the first question (every source once, as
    containers/image does: a lookaside may hold sigstore signatures too) and then kept."""

    def __init__(self, client: RegistryClient, registries_d: Any, ref: Reference,
                 digest: str) -> None:
        self._client = client
        self._registries_d = registries_d
        self._ref = ref
        self._digest = digest
        self._all: Any = None

    def _fetch(self) -> Any:
        from .sigsources import fetch_signatures

        if self._all is None:
            self._all = fetch_signatures(self._client, self._ref, self._digest,
                                         self._registries_d.config_for(self._ref))
        return self._all

    def simple_signatures(self) -> Sequence[bytes]:
        return list(self._fetch().simple)

    def sigstore_signatures(self) -> Sequence[Any]:
        return list(self._fetch().sigstore)


@dataclass
class Trust:
    """The policy and signature configuration a client pulls under.

    ``policy`` is a resource URI -- a path, ``file:///...`` or ``kbs:///repo/type/tag``,
    the last read through ``resources`` (the Confidential Data Hub) -- or a loaded
    :class:`Policy`; key paths inside it may be such URIs too. None looks in the usual places
    (:func:`unlade.policy.find_policy`) and, finding nothing, accepts any image, as the
    containers tools do without a policy file. ``insecure_accept_anything`` skips the
    policy altogether (skopeo's ``--insecure-policy``). ``registries_d`` is the
    registries.d directory that says where signatures are (default: the usual places).
    """

    policy: str | os.PathLike[str] | Policy | None = None
    registries_d: str | os.PathLike[str] | None = None
    insecure_accept_anything: bool = False
    resources: ResourceProvider | None = None  # serves kbs:/// URIs
    note: str | None = field(default=None, init=False)
    _loaded: Policy | None = field(default=None, init=False, repr=False)
    _searched: bool = field(default=False, init=False, repr=False)

    def load(self) -> Policy | None:
        """The policy in force (loaded once), or None to accept anything."""
        if self.insecure_accept_anything:
            return None
        if isinstance(self.policy, Policy):
            return self.policy
        if not self._searched:
            self._searched = True
            uri = os.fspath(self.policy) if self.policy is not None else None
            if uri is None or local_path(uri, error=PolicyError) is not None:
                found = find_policy(local_path(uri, error=PolicyError) if uri else None)
                uri = os.fspath(found) if found is not None else None
            if uri is None:
                self.note = NO_POLICY_NOTE
            else:
                self._loaded = self._read_policy(uri)
        return self._loaded

    def _read(self, uri: str) -> bytes:
        return read_resource(uri, kbs=self.resources, error=PolicyError)

    def _read_policy(self, uri: str) -> Policy:
        local = local_path(uri, error=PolicyError)
        if local is not None:
            try:
                data = local.read_bytes()
            except OSError as err:
                raise PolicyError(f"cannot read policy {local}: {err.strerror or err}") \
                    from None
            return Policy.from_bytes(data, str(local), local.parent, read=self._read)
        return Policy.from_bytes(self._read(uri), uri, Path.cwd(), read=self._read)

    def _registries(self) -> Any:
        from .sigsources import RegistriesD

        if self.registries_d is None:
            return RegistriesD.load(None)
        uri = os.fspath(self.registries_d)
        local = local_path(uri, error=PolicyError)
        if local is not None and (local.is_dir() or not local.exists()):
            return RegistriesD.load(local)
        return RegistriesD.from_yaml(self._read(uri), uri)  # one YAML file

    def verdict(self, client: RegistryClient, ref: Reference, manifest: bytes,
                digest: str) -> Verdict | None:
        """The policy's verdict on the image ``ref`` whose top-level manifest is
        ``manifest`` (``digest``); None when no policy applies."""
        policy = self.load()
        if policy is None:
            return None
        source = _Signatures(client, _Lazy(self._registries), ref, digest)
        return policy.evaluate(ref, manifest, source)

    def check(self, client: RegistryClient, ref: Reference, manifest: bytes,
              digest: str) -> Verdict | None:
        """As :meth:`verdict`, raising :class:`~unlade.errors.PolicyRejected` if the
        image is refused."""
        verdict = self.verdict(client, ref, manifest, digest)
        if verdict is not None:
            verdict.raise_if_rejected()
        return verdict


class _Lazy:
    """registries.d, read only if a requirement needs signatures."""

    def __init__(self, load: Any) -> None:
        self._load = load
        self._value: Any = None

    def config_for(self, ref: Reference) -> Any:
        if self._value is None:
            self._value = self._load()
        return self._value.config_for(ref)
