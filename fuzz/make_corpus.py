#!/usr/bin/env python3
"""Write the committed seed corpus (fuzz/corpus/<harness>/) and the fixtures the policy and
signature harnesses verify against (fuzz/keys/).

The keys are made once (an Ed25519 OpenPGP key with gpg, a P-256 cosign key) and kept:
run again, this script rewrites the corpus from the keys it finds, byte for byte the same;
``--new-keys`` makes new ones (and so new signatures). Seeds are small on purpose: the
whole corpus stays well under 200 KB.

    .venv/bin/python fuzz/make_corpus.py
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
KEYS = FUZZ / "keys"
CORPUS = FUZZ / "corpus"

IDENTITY = "docker.io/library/busybox:latest"
SIMPLE_TYPE = "atomic container signature"
COSIGN_TYPE = "cosign container image signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def digest(data: bytes | str) -> str:
    return "sha256:" + hashlib.sha256(data.encode() if isinstance(data, str) else data
                                      ).hexdigest()


D1, D2, D3, D4 = (digest(s) for s in ("config", "layer one", "layer two", "layer three"))


def dumps(obj: object) -> bytes:
    return json.dumps(obj, indent=2).encode() + b"\n"


# -- keys and signatures -----------------------------------------------------------------


def fixture_manifest() -> bytes:
    return dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1,
                   "size": 100},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": D2, "size": 1000}],
    })


def payload(kind: str, reference: str = IDENTITY, manifest: bytes | None = None,
            optional: object = None) -> bytes:
    doc = {"critical": {"identity": {"docker-reference": reference},
                        "image": {"docker-manifest-digest": digest(manifest or
                                                                   fixture_manifest())},
                        "type": kind},
           "optional": optional}
    return json.dumps(doc).encode()


def make_keys() -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    KEYS.mkdir(exist_ok=True)
    (KEYS / "manifest.json").write_bytes(fixture_manifest())
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "GNUPGHOME": home}

        def gpg(*args: str, data: bytes | None = None) -> bytes:
            return subprocess.run(["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback",
                                   "--passphrase", "", *args], input=data, env=env,
                                  check=True, capture_output=True).stdout

        gpg("--quick-gen-key", "fuzz <fuzz@example.invalid>", "ed25519", "sign", "never")
        (KEYS / "gpg-public.asc").write_bytes(gpg("--armor", "--export"))
        signed = gpg("--sign", "--local-user", "fuzz@example.invalid",
                     data=payload(SIMPLE_TYPE, optional={"creator": "fuzz"}))
        (KEYS / "simple-signature.gpg").write_bytes(signed)
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
    key = ec.generate_private_key(ec.SECP256R1())
    (KEYS / "cosign-public.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    body = payload(COSIGN_TYPE)
    sig = base64.b64encode(key.sign(body, ec.ECDSA(hashes.SHA256()))).decode()
    (KEYS / "sigstore-signature.json").write_bytes(
        dumps({"payload": body.decode(), "signature": sig}))


# -- per harness -------------------------------------------------------------------------


def reference() -> dict[str, bytes]:
    refs = [
        "alpine", "alpine:3.20", "library/alpine", "docker.io/library/alpine:latest",
        "index.docker.io/library/busybox:1.36", "ubuntu@" + D1, "quay.io/fedora/fedora:40",
        "ghcr.io/owner/repo/sub:v1.2.3", "registry.example.com:5000/ns/app:tag@" + D2,
        "localhost/app", "localhost:5000/a_b/c__d/e--f:x", "[::1]:5000/repo:tag",
        "[fe80::1%25eth0]:5000/repo", "127.0.0.1:5000/test", "example.com/a/b@sha512:" + "f" * 128,
        "Foo/bar", "UPPER/case", "a//b", "repo:", "repo@", "repo@sha256:abc", "a:b:c",
        "https://docker.io/library/alpine", "registry:99999/x", "a" * 256, "x" * 64 + "1",
        "0" * 64, "host:80/" + "/".join(["n"] * 60), "a.b/c:" + "t" * 129, "a/b:\u00e9",
        "docker.io/alpine", "sha256:" + "0" * 64, "repo:tag@sha256:" + "0" * 64,
    ]
    return {f"ref-{i:02d}": r.encode() for i, r in enumerate(refs)}


def _descriptor(media_type: str, d: str, size: int, **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": d, "size": size, **extra}


def manifest() -> dict[str, bytes]:
    oci = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": _descriptor("application/vnd.oci.image.config.v1+json", D1, 1469),
        "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar+gzip", D2, 3623807),
                   _descriptor("application/vnd.oci.image.layer.v1.tar+zstd", D3, 10),
                   _descriptor("application/vnd.oci.image.layer.v1.tar", D4, 20)],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    docker = {
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": _descriptor("application/vnd.docker.container.image.v1+json", D1, 1472),
        "layers": [_descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", D2, 3),
                   _descriptor("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                               D3, 4, urls=["https://example.com/layer"])],
    }
    index = {
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            _descriptor(OCI_MANIFEST, D1, 1, platform={"os": "linux", "architecture": "amd64"}),
            _descriptor(OCI_MANIFEST, D2, 2, platform={"os": "linux", "architecture": "arm64",
                                                       "variant": "v8"}),
            _descriptor(OCI_MANIFEST, D3, 3, platform={"os": "linux", "architecture": "arm",
                                                       "variant": "v7"}),
            _descriptor(OCI_MANIFEST, D4, 4, platform={"os": "unknown",
                                                       "architecture": "unknown"},
                        annotations={"vnd.docker.reference.type": "attestation-manifest"}),
        ],
    }
    docker_list = {**index, "mediaType": DOCKER_LIST,
                   "manifests": [{**m, "mediaType": DOCKER_MANIFEST}
                                 for m in index["manifests"][:2]]}  # type: ignore[index]
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [D2, D3, D4]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "ADD file"}],
    }
    encrypted = {**oci, "layers": [
        _descriptor("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", D2, 5,
                    annotations={"org.opencontainers.image.enc.keys.jwe": "e30=",
                                 "org.opencontainers.image.enc.pubopts": "e30="})]}
    attachment = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": _descriptor("application/vnd.oci.image.config.v1+json", D1, 233),
        "layers": [_descriptor("application/vnd.dev.cosign.simplesigning.v1+json", D2, 242,
                               annotations={"dev.cosignproject.cosign/signature": "MEUCIQ=="})],
    }
    schema1 = {"schemaVersion": 1, "name": "library/alpine", "tag": "latest",
               "fsLayers": [{"blobSum": D2}], "signatures": []}
    return {
        "oci-manifest.json": dumps(oci),
        "docker-manifest.json": dumps(docker),
        "oci-index.json": dumps(index),
        "docker-list.json": dumps(docker_list),
        "config.json": dumps(config),
        "manifest-and-config.json": dumps({**oci, **{"rootfs": config["rootfs"]}}),
        "encrypted-manifest.json": dumps(encrypted),
        "sigstore-attachment.json": dumps(attachment),
        "schema1.json": dumps(schema1),
        "no-media-type.json": dumps({"schemaVersion": 2, "manifests": []}),
        "nested.json": b"[" * 50 + b"]" * 50,
        "platform.txt": b"linux/arm64/v8",
    }


def www_authenticate() -> dict[str, bytes]:
    headers = {
        "dockerhub": 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                     'scope="repository:library/alpine:pull"',
        "ghcr": 'Bearer realm="https://ghcr.io/token",service="ghcr.io",'
                'scope="repository:owner/image:pull"',
        "quay": 'Bearer realm="https://quay.io/v2/auth",service="quay.io"',
        "distribution-error": 'Bearer realm="https://r.example/token",service="r.example",'
                              'scope="repository:a/b:pull,push",error="insufficient_scope"',
        "basic": 'Basic realm="Registry Realm"',
        "ecr": 'Basic realm="https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",'
               'service="ecr.amazonaws.com"',
        "several": 'Negotiate, Basic realm="x", Bearer realm=https://t.example/token, '
                   'service=unquoted',
        "token68": "Negotiate YIIB3gYGKwYBBQUCoII=, NTLM",
        "escapes": r'Bearer realm="https://a.example/t?x=\"1\"",service="s\\v", scope=""',
        "spaces": 'Bearer  realm = "https://a.example/t" ,, service = "b"',
        "unterminated": 'Bearer realm="https://a.example/t, service="b',
        "garbage": '"quoted, first" Bearer realm="x" =oops ,=, Basic',
        "case": 'BEARER REALM="https://A.example/T",Service="S"',
    }
    return {name: value.encode() for name, value in headers.items()}


def policy() -> dict[str, bytes]:
    gpg_b64 = base64.b64encode((KEYS / "gpg-public.asc").read_bytes()).decode()
    pem_b64 = base64.b64encode((KEYS / "cosign-public.pem").read_bytes()).decode()
    signed_by = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "fuzz.gpg"}
    sigstore = {"type": "sigstoreSigned", "keyPath": "/etc/keys/fuzz.pem"}
    identities = [
        {"type": "matchExact"}, {"type": "matchRepoDigestOrExact"},
        {"type": "matchRepository"},
        {"type": "exactReference", "dockerReference": IDENTITY},
        {"type": "exactRepository", "dockerRepository": "docker.io/library/busybox"},
        {"type": "remapIdentity", "prefix": "docker.io/library", "signedPrefix": "quay.io/lib"},
        {"type": "remapIdentity", "prefix": "docker.io", "signedPrefix": "docker.io"},
    ]
    docs: dict[str, object] = {
        "insecure": {"default": [{"type": "insecureAcceptAnything"}]},
        "reject": {"default": [{"type": "reject"}], "transports": {"docker-daemon": {
            "": [{"type": "insecureAcceptAnything"}]}}},
        "containers-default": {
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {"docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}}},
        "signed-by": {"default": [{"type": "reject"}], "transports": {"docker": {
            "docker.io/library/busybox": [signed_by],
            "quay.io": [{"type": "insecureAcceptAnything"}],
            "*.example": [{"type": "reject"}],
            "registry.example:5000/ns/repo:v1": [sigstore],
            "[::1]:5000/x": [{"type": "signedBaseLayer", "baseLayerIdentity": {
                "type": "exactRepository", "dockerRepository": "quay.io/x"}}],
        }}},
        "key-data": {"default": [
            {"type": "signedBy", "keyType": "GPGKeys", "keyData": gpg_b64},
            {"type": "sigstoreSigned", "keyDatas": [pem_b64], "signedIdentity": {
                "type": "matchRepository"}}]},
        "key-paths": {"default": [
            {"type": "signedBy", "keyType": "GPGKeys", "keyPaths": ["fuzz.gpg", "b/fuzz.gpg"]},
            {"type": "sigstoreSigned", "keyPaths": ["fuzz.pem"]}]},
        "missing-key": {"default": [{"type": "signedBy", "keyType": "GPGKeys",
                                     "keyPath": "/nonexistent/key.gpg"}]},
        "keyless": {"default": [{"type": "sigstoreSigned", "fulcio": {
            "caPath": "/ca.pem", "oidcIssuer": "https://issuer", "subjectEmail": "a@b"},
            "rekorPublicKeyPath": "/rekor.pem"}]},
        "bad-type": {"default": [{"type": "signedBy", "keyType": "X509Certificates",
                                  "keyPath": "fuzz.gpg"}]},
        "duplicate-key": None,
    }
    for i, identity in enumerate(identities):
        docs[f"identity-{i}"] = {"default": [
            {**signed_by, "signedIdentity": identity},
            {**sigstore, "signedIdentity": identity}]}
    out = {f"{name}.json": dumps(doc) for name, doc in docs.items() if doc is not None}
    out["duplicate-key.json"] = b'{"default": [], "default": [{"type": "reject"}]}'
    out["nan.json"] = b'{"default": [{"type": "reject", "x": NaN}]}'
    return out


def registries_d() -> dict[str, bytes]:
    files = {
        "default": "default-docker:\n  lookaside: file:///var/lib/containers/sigstore\n",
        "scopes": (
            "docker:\n"
            "  registry.example.com:\n"
            "    lookaside: https://sigs.example.com/sigstore\n"
            "    lookaside-staging: file:///tmp/staging\n"
            "  registry.example.com:5000/ns/repo:\n"
            "    use-sigstore-attachments: true\n"
            "  quay.io/fuzz/app:\n"
            "    sigstore: http://quay.example/sigs\n"
            "    sigstore-staging: file:///tmp/s\n"
            "  '*.example.com':\n"
            "    use-sigstore-attachments: yes\n"
            "  localhost:\n"
            "default-docker:\n"
            "  use-sigstore-attachments: false\n"),
        "merge": (
            "base: &base\n"
            "  lookaside: https://l.example/%20space?x=1#frag\n"
            "docker:\n"
            "  docker.io:\n"
            "    <<: *base\n"
            "    use-sigstore-attachments: On\n"
            "  docker.io/library/busybox:\n"
            "    <<: [*base, {sigstore: file:///x}]\n"),
        "bad-bool": "default-docker:\n  use-sigstore-attachments: maybe\n",
        "duplicate": "docker:\n  a.example: {}\n  a.example: {}\n",
        "not-a-mapping": "- docker\n- default-docker\n",
        "quoted": 'docker:\n  "a.b.example.com":\n    lookaside: "\\u00e9\\t/x"\n'
                  "    use-sigstore-attachments: 'true'\n",
        "two-documents": "default-docker: {lookaside: file:///a}\n---\ndocker: 1\n",
        "flow": "{docker: {registry.example.com:5000: {lookaside: 'https://[::1]:8/s'}}}\n",
        "empty": "",
        "null": "~\n",
        "merge-aliases": "l0: &l0 {lookaside: x, sigstore: y}\n"
                         "l1: &l1 {<<: [*l0, *l0, *l0, *l0]}\n"
                         "l2: &l2 {<<: [*l1, *l1, *l1, *l1], lookaside: z}\n"
                         "docker: {a.example: {<<: [*l2, *l2]}, b.example: *l1}\n",
    }
    return {f"{name}.yaml": text.encode() for name, text in files.items()}


def unlade_toml() -> dict[str, bytes]:
    full = '''root = "/var/lib/unlade"
snapshotter = "auto"
policy = "kbs:///default/security-policy/test"
registries_d = "file:///etc/containers/registries.d"
authfile = "~/auth.json"
registries_conf = "registries.conf"
max_concurrent_downloads = 3
unpack_workers = 4
insecure_policy = false
kbs_address = "127.0.0.1:50000"
require_encrypted = ["registry.example/confidential", "*.secure.example"]
plain_http_registries = ["127.0.0.1:5000", "registry.local"]
cert_dir = "/etc/unlade/certs.d"

[proxy]
https_proxy = "http://proxy.example:3128"
http_proxy = "http://proxy.example:3128"
no_proxy = "localhost,127.0.0.1,.internal"
'''
    files = {
        "full": full,
        "minimal": 'snapshotter = "native"\n',
        "aliases": 'sigstore_config = "kbs:///a/b/c"\nregistries_d = "/x"\n',
        "encrypted-all": "require_encrypted = true\nkbs_address = 'unix:///run/cdh.sock'\n",
        "bad-types": "max_concurrent_downloads = 0\nunpack_workers = true\n",
        "unknown": "[extra]\nkey = 1\n",
        "inline": 'proxy = { no_proxy = "x", other = 1 }\nroot = "~user/store"\n',
        "file-uri": 'policy = "file://localhost/etc/policy%20x.json"\n'
                    'authfile = "file:///a?b"\n',
        "arrays": "plain_http_registries = [[1], 'a b', 'h/p']\n",
        "limits": '[limits]\nlayer_size = "64 GiB"\nlayer_entries = 5_000_000\n'
                  'path_length = "4k"\nxattr_size = 65536\nmanifest_size = "4MiB"\n'
                  'config_size = "1.5 MiB"\nlayers = 0\n',
        "limits-bad": "limits = 3\n[limits]\nunknown = 1\n",
    }
    return {f"{name}.toml": text.encode() for name, text in files.items()}


def registries_conf() -> dict[str, bytes]:
    v2 = '''unqualified-search-registries = ["registry.fedoraproject.org", "docker.io"]
short-name-mode = "enforcing"
credential-helpers = ["containers-auth.json", "secretservice"]

[[registry]]
prefix = "docker.io"
location = "docker.io"
blocked = true

[[registry.mirror]]
location = "mirror.gcr.io"
pull-from-mirror = "digest-only"

[[registry.mirror]]
location = "localhost:5000/hub"
insecure = true

[[registry]]
prefix = "quay.io/fuzz"
location = "internal.example/quay-fuzz"
mirror-by-digest-only = true

[[registry.mirror]]
location = "[::1]:5000/m"

[[registry]]
prefix = "*.example.com"
insecure = true

[[registry]]
location = "registry.example.com:5000"

[aliases]
"busybox" = "docker.io/library/busybox"
"fuzz" = ""
'''
    files = {
        "v2": v2,
        "v1": '''[registries.search]
registries = ["docker.io", "quay.io"]

[registries.insecure]
registries = ["localhost:5000"]

[registries.block]
registries = ["evil.example"]
''',
        "mixed": '[registries.search]\nregistries = []\n[[registry]]\nlocation = "a.example"\n',
        "bad-mirror": '[[registry]]\nprefix = "a.example"\nlocation = "b.example"\n'
                      '[[registry.mirror]]\npull-from-mirror = "sometimes"\n',
        "case": '[[REGISTRY]]\nPrefix = "A.example/x"\nLOCATION = "b.example/y"\n'
                'Insecure = true\n',
        "wildcard-bad": '[[registry]]\nprefix = "*.example.com/x"\n',
        "scheme": '[[registry]]\nlocation = "https://a.example"\n',
        "rewrite-invalid": '[[registry]]\nprefix = "docker.io/library"\n'
                           'location = "UPPER.example/Bad__"\n',
        "empty": "",
    }
    return {f"{name}.conf": text.encode() for name, text in files.items()}


def keyprovider() -> dict[str, bytes]:
    docs = {
        "cmd": {"key-providers": {"attestation-agent": {"cmd": {
            "path": "/usr/bin/ctr-enc-provider", "args": ["--mode", "unwrap"]}}}},
        "grpc": {"key-providers": {"aa": {"grpc": "127.0.0.1:50000"},
                                   "aa-tls": {"grpc": "unix:///run/aa.sock", "grpc-tls": {
                                       "root-ca-file": "/ca.pem", "server-name": "aa"}}}},
        "insecure": {"key-providers": {"x": {"grpc": "h:1", "grpc-tls": {
            "insecure-skip-verify": True}}}},
        "neither": {"key-providers": {"x": {}}},
        "unknown-key": {"key-providers": {"x": {"cmd": {"path": "p"}, "extra": 1}}},
        "empty": {},
    }
    out = {f"{name}.json": dumps(doc) for name, doc in docs.items()}
    out["not-json.json"] = b"key-providers: {}\n"
    return out


def signature() -> dict[str, bytes]:
    simple = (KEYS / "simple-signature.gpg").read_bytes()
    sigstore = json.loads((KEYS / "sigstore-signature.json").read_bytes())
    blob = b"\x00sigstore-json\n" + json.dumps({
        "mimeType": "application/vnd.dev.cosign.simplesigning.v1+json",
        "payload": base64.b64encode(sigstore["payload"].encode()).decode(),
        "annotations": {"dev.cosignproject.cosign/signature": sigstore["signature"]},
    }).encode()
    listing = json.dumps({"signatures": [
        {"schemaVersion": 2, "type": "atomic", "name": "sha256:x@1",
         "content": base64.b64encode(simple).decode()},
        {"schemaVersion": 2, "type": "other", "content": "AA=="}, None]}).encode()
    armored = b"-----BEGIN PGP MESSAGE-----\n\n" + base64.encodebytes(simple) + \
        b"=abcd\n-----END PGP MESSAGE-----\n"
    # target byte: 0 payload, 1 verify_gpg, 2 blob, 3 list, 4 key material, 5 cosign sig
    seeds = {
        "payload-simple": b"\x00" + payload(SIMPLE_TYPE, optional={"creator": "x",
                                                                   "timestamp": 1.0}),
        "payload-cosign": b"\x00" + payload(COSIGN_TYPE),
        "payload-duplicate": b'\x00{"critical": {}, "critical": {}}',
        "gpg-binary": b"\x01" + simple,
        "gpg-armored": b"\x01" + armored,
        "gpg-compressed-nested": b"\x01" + bytes([0xC8, 3, 0, 0xC8, 0]),
        "blob-simple-signing": b"\x02\x00simple-signing\n" + simple,
        "blob-openpgp": b"\x02" + simple,
        "blob-sigstore-json": b"\x02" + blob,
        "signature-list": b"\x03" + listing,
        "key-gpg": b"\x04" + (KEYS / "gpg-public.asc").read_bytes(),
        "key-pem": b"\x04" + (KEYS / "cosign-public.pem").read_bytes(),
        "cosign-signature": b"\x05" + sigstore["signature"].encode(),
    }
    return seeds


# -- tar streams -------------------------------------------------------------------------


def tar(members: list[tuple[str, bytes, dict[str, object]]],
        fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data, attrs in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            for key, value in attrs.items():
                setattr(info, key, value)
            info.size = len(data) if info.type in (tarfile.REGTYPE, tarfile.CONTTYPE) else 0
            tf.addfile(info, io.BytesIO(data) if info.size else None)
        end = tf.offset + 2 * tarfile.BLOCKSIZE
    return buf.getvalue()[:end]


def F(name: str, data: bytes = b"", **attrs: object) -> tuple[str, bytes, dict]:
    return name, data, {"mode": 0o644, **attrs}


def Dir(name: str, **attrs: object) -> tuple[str, bytes, dict]:
    return name, b"", {"type": tarfile.DIRTYPE, "mode": 0o755, **attrs}


def Sym(name: str, target: str) -> tuple[str, bytes, dict]:
    return name, b"", {"type": tarfile.SYMTYPE, "linkname": target, "mode": 0o777}


def Hard(name: str, target: str) -> tuple[str, bytes, dict]:
    return name, b"", {"type": tarfile.LNKTYPE, "linkname": target, "mode": 0o644}


def Dev(name: str, kind: bytes, major: int = 1, minor: int = 3) -> tuple[str, bytes, dict]:
    return name, b"", {"type": kind, "devmajor": major, "devminor": minor, "mode": 0o666}


def tars() -> dict[str, bytes]:
    """Layers in every format, and the classic breakout attempts (names relative to a root
    that has box/outside/secret two levels up; see fuzz_layer.py)."""
    long = "d" * 60 + "/" + "e" * 60 + "/" + "f" * 80
    return {
        "plain": tar([Dir("etc/"), F("etc/hostname", b"fuzz\n"), F("bin/sh", b"#!", mode=0o755),
                      Sym("bin/ash", "sh"), Hard("bin/link", "bin/sh"),
                      Dev("dev/null", tarfile.CHRTYPE), Dev("dev/sda", tarfile.BLKTYPE, 8, 0),
                      ("run/fifo", b"", {"type": tarfile.FIFOTYPE})]),
        "gnu-long": tar([F(long), Sym("l" * 120, long), Hard("h" * 110, long)],
                        tarfile.GNU_FORMAT),
        "ustar": tar([Dir("usr/"), F("usr/" + "p" * 90 + "/file")], tarfile.USTAR_FORMAT),
        "pax-xattrs": tar([F("x", pax_headers={"SCHILY.xattr.user.a": "1",
                                               "SCHILY.xattr.trusted.overlay.opaque": "y",
                                               "SCHILY.xattr.security.capability": "\x01",
                                               "mtime": "1600000000.123456789",
                                               "atime": "-1.5"})]),
        "pax-path": tar([F("short", pax_headers={"path": "../../outside/pax", "uid": "1",
                                                 "gid": "2", "comment": "x"})]),
        "whiteouts": tar([Dir("dir/"), F("dir/.wh.file"), F("dir/.wh..wh..opq"), F(".wh.esc"),
                          F(".wh..wh..opq"), F("a/b/.wh.c"), F(".wh.."), F("dir/.wh.")]),
        "dotdot": tar([F("../../outside/dotdot"), F("/abs-file"), F("./../x/../../y"),
                       Dir("../"), F("a/../../../../z")]),
        "symlink-escape": tar([Sym("link", "../outside"), F("link/created"),
                               Sym("abs", "/"), F("abs/outside/through-abs"),
                               Sym("up", "../../.."), F("up/tmp/breakout")]),
        "symlink-chain": tar([Sym("a", "b"), Sym("b", "c"), Sym("c", "../../.."), F("a/x"),
                              Sym("loop", "loop"), F("loop/y")]),
        "existing-symlinks": tar([F("esc/secret", b"overwrite\n"), F("abs/new"),
                                  Dir("esc/"), F("abs-secret", b"replaced\n"),
                                  Hard("h", "esc/secret"), Hard("h2", "abs-secret"),
                                  Dev("up/dev", tarfile.CHRTYPE)]),
        "hardlinks": tar([Hard("l1", "../outside/secret"), Hard("l2", "/etc/passwd"),
                          Sym("s", "../outside"), Hard("l3", "s/secret"), Hard("l4", "s"),
                          Hard("l5", ""), Hard("l6", "missing")]),
        "replace": tar([F("dir", b"file over dir"), Dir("file/"), Sym("dir", "file"),
                        Dir("dir/"), F("dir/sub/deep")]),
        "modes": tar([F("suid", mode=0o4755, uid=1000, gid=1000),
                      Dir("sticky/", mode=0o1777), Dir("closed/", mode=0),
                      F("closed/inner", mode=0), F("big-ids", uid=1 << 30, gid=65534)]),
        "device-large": tar([Dev("d", tarfile.CHRTYPE, 4095, (1 << 20) - 1)],
                            tarfile.GNU_FORMAT),
        "truncated": tar([F("a", b"x" * 700), F("b")])[:900],
        "no-end-marker": tar([F("a")])[:1024],
        "single-zero-block": tar([F("a")])[:1024] + b"\0" * 512,
        "empty": b"",
    }


def layer() -> dict[str, bytes]:
    out = {}
    for name, data in tars().items():
        out[f"flat-{name}"] = b"\x00" + data
    for name in ("whiteouts", "existing-symlinks", "replace", "symlink-escape", "pax-xattrs"):
        out[f"overlay-{name}"] = b"\x01" + tars()[name]
    rng = random.Random(9)
    for mode in (2, 3, 4, 5):
        for i in range(4):
            out[f"generated-{mode}-{i}"] = bytes([mode]) + rng.randbytes(60 + 40 * i)
    return out


def tarstream() -> dict[str, bytes]:
    out = dict(tars())
    bad = bytearray(tars()["plain"][:512])
    bad[148:156] = b"0000000\0"
    out["bad-checksum"] = bytes(bad)
    pax = tars()["pax-path"]
    out["pax-bad-length"] = pax.replace(b"path=", b"pat\n=", 1)
    return out


HARNESSES = {
    "reference": reference, "manifest": manifest, "www_authenticate": www_authenticate,
    "policy": policy, "registries_d": registries_d, "unlade_toml": unlade_toml,
    "registries_conf": registries_conf, "keyprovider": keyprovider, "signature": signature,
    "tarstream": tarstream, "layer": layer,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-keys", action="store_true", help="make new fixture keys")
    parser.add_argument("--out", type=Path, default=CORPUS,
                        help=f"where to write the corpus (default {CORPUS})")
    args = parser.parse_args()
    if args.new_keys or not (KEYS / "sigstore-signature.json").exists():
        make_keys()
    total = 0
    for name, make in HARNESSES.items():
        directory = args.out / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for file, data in make().items():
            (directory / file).write_bytes(data)
            total += len(data)
    print(f"corpus: {total} bytes in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
