"""The ``unlade`` command: argument parsing, progress bars and one-line errors.

Everything it does goes through :class:`unlade.Client`. Exit codes: 0 ok, 1 failure,
2 usage error, 130 interrupted. Heavy modules are imported only once a command runs so
that ``unlade --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


class _Bars:
    """One rich progress bar per layer (bytes, rate), drawn on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[state]}"),
            console=Console(stderr=True),
            transient=True,
        )
        self._tasks: dict[int, Any] = {}

    def __enter__(self) -> _Bars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def layer_start(self, index: int, digest: str, size: int, cached: bool) -> None:
        self._tasks[index] = self._progress.add_task(
            f"layer {index + 1} {digest[7:19]}", total=size,
            completed=size if cached else 0, state="cached" if cached else "",
        )

    def layer_bytes(self, index: int, nbytes: int) -> None:
        self._progress.advance(self._tasks[index], nbytes)

    def layer_done(self, index: int) -> None:
        task = self._tasks[index]
        self._progress.update(task, state="done")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unlade",
        description="Pull, verify and unpack OCI and Docker container images, no daemon.",
    )
    parser.add_argument("--version", action="version", version=f"unlade {__version__}")
    parser.add_argument(
        "--config", metavar="FILE",
        help="settings file, unlade.toml (default: $UNLADE_CONFIG, "
             "~/.config/unlade/unlade.toml, /etc/unlade/unlade.toml); flags override it",
    )
    parser.add_argument(
        "--root", metavar="STORE",
        help="content store directory (default: $UNLADE_ROOT, /var/lib/unlade as root, "
             "else $XDG_DATA_HOME/unlade)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    pull = sub.add_parser("pull", help="pull an image into the store, optionally unpack it",
                          description="Pull REF into the content store, verifying every "
                          "digest; with --rootfs also unpack it into DIR.")
    pull.add_argument("ref", metavar="REF", help="image reference, e.g. alpine:3.20 or "
                      "127.0.0.1:5000/app@sha256:...")
    pull.add_argument("--rootfs", metavar="DIR",
                      help="unpack into DIR (must be absent or empty; appears only complete)")
    pull.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                      help="platform to pick from a multi-platform image (default: this host)")
    pull.add_argument("--json", action="store_true",
                      help="print one JSON document describing the result; no progress bars")
    _connection_options(pull)
    pull.add_argument("--insecure-policy", action="store_true", default=None,
                      help="accept the image whatever the signature policy says")
    pull.add_argument("--decryption-key", metavar="FILE[:PASSWORD]", action="append",
                      help="a key for ocicrypt-encrypted layers (JWE private key, PKCS7 "
                           "key or certificate, OpenPGP secret key), or provider:NAME"
                           "[:PARAMS] for a key provider of $OCICRYPT_KEYPROVIDER_CONFIG; "
                           "repeatable")
    pull.add_argument("--require-encrypted", action="store_true", default=None,
                      help="refuse the image unless every layer is encrypted (default: "
                           "the config file's require_encrypted scopes)")
    pull.add_argument("--registries-conf", metavar="FILE", default=None,
                      help="containers-registries.conf(5) for mirrors and blocked registries "
                           "(default: $CONTAINERS_REGISTRIES_CONF, "
                           "~/.config/containers/registries.conf, "
                           "/etc/containers/registries.conf)")
    pull.add_argument("--limit", metavar="NAME=VALUE", action="append",
                      help="raise or lower one limit against hostile images: layer_size, "
                           "layer_entries, path_length, xattr_size, manifest_size, "
                           "config_size, layers (sizes take KiB/MiB/GiB); repeatable")
    pull.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary")
    kinds = ("overlayfs", "native", "auto")
    pull.add_argument("--snapshotter", choices=kinds, default=None,
                      help="without --rootfs: unpack into snapshots of this kind (default: "
                           "overlayfs where the kernel allows it, else native)")
    pull.add_argument("--no-unpack", action="store_true",
                      help="only download and verify the blobs")
    pull.add_argument("--unpack-workers", metavar="N", type=int,
                      help="layers unpacked into snapshots at once (default: CPU count)")

    verify = sub.add_parser("verify", help="run the signature policy on an image, and "
                            "print the verdict per requirement",
                            description="Fetch REF's manifest and signatures and judge them "
                            "by the signature policy; nothing is stored. Exit 0 if the image "
                            "would be accepted, 1 if not.")
    verify.add_argument("ref", metavar="REF")
    verify.add_argument("--json", action="store_true", help="the verdict as one JSON document")
    _connection_options(verify)

    for name, text in (("mount", "mount a stored image read-write at DIR (overlay)"),
                       ("bundle", "make an OCI runtime bundle: DIR/rootfs + DIR/config.json")):
        p = sub.add_parser(name, help=text)
        p.add_argument("ref", metavar="REF")
        p.add_argument("dir", metavar="DIR")
        p.add_argument("--snapshotter", choices=kinds,
                       help="default: the one the image was pulled with")
    unmount = sub.add_parser("unmount", help="unmount what `mount` or `bundle` mounted")
    unmount.add_argument("dir", metavar="DIR")
    unmount.add_argument("--snapshotter", choices=kinds, help=argparse.SUPPRESS)
    images = sub.add_parser("images", help="list the images in the store")
    images.add_argument("--json", action="store_true", help="one JSON document")
    inspect = sub.add_parser("inspect", help="manifest, config and layers of a stored image")
    inspect.add_argument("ref", metavar="REF", help="a ref as pulled, or a manifest digest")
    inspect.add_argument("--json", action="store_true", help="the whole document as JSON")
    rm = sub.add_parser("rm", help="drop a ref (content goes at the next prune)")
    rm.add_argument("refs", metavar="REF", nargs="+")
    prune = sub.add_parser("prune", help="remove images without refs, and blobs and "
                           "snapshots nothing uses")
    prune.add_argument("--json", action="store_true", help="one JSON document")
    check = sub.add_parser("check", help="re-hash every blob and check every record")
    check.add_argument("--json", action="store_true", help="one JSON document")

    bench = sub.add_parser("bench", add_help=False, help="benchmark against containerd "
                           "(build-image, run, compare; see `unlade bench --help`)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)  # parsed by unlade.bench.cli
    return parser


def _connection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plain-http", action="store_true",
                   help="talk HTTP, not HTTPS, to the registry")
    p.add_argument("--cert-dir", metavar="DIR",
                   help="extra CA certificates (*.crt) and client certificates "
                        "(*.cert/*.key) for TLS")
    p.add_argument("--creds", metavar="USER[:PASSWORD]",
                   help="registry credentials (overrides auth files)")
    p.add_argument("--authfile", metavar="FILE",
                   help="read credentials only from this auth.json / config.json "
                        "(default: $REGISTRY_AUTH_FILE, containers auth.json, docker config)")
    p.add_argument("--policy", metavar="FILE",
                   help="signature policy, containers-policy.json(5) (default: "
                        "$UNLADE_POLICY, ~/.config/containers/policy.json, "
                        "/etc/containers/policy.json; none: accept any image)")
    p.add_argument("--registries-d", metavar="DIR",
                   help="where signatures are, containers-registries.d(5) (default: "
                        "~/.config/containers/registries.d, /etc/containers/registries.d)")
    p.add_argument("--retries", metavar="N", type=int, default=None,
                   help="tries per registry request, and broken blob streams in a row "
                        "(default 5, or [network] retries)")
    p.add_argument("--timeout", metavar="SECONDS", type=float, default=None,
                   help="the longest wait for response headers or for the next bytes "
                        "(default 60, or [network] read_timeout/header_timeout)")


def _bench_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``bench`` if that is the command (argparse's REMAINDER cannot
    pass ``--help`` and other options through), else None."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--root":
            i += 2
            continue
        if arg.startswith("--root="):
            i += 1
            continue
        return argv[i + 1 :] if arg == "bench" else None
    return None


def _settings(args: argparse.Namespace) -> Any:
    """unlade.toml (if any) with this command's flags on top."""
    from .config import load_config

    overrides = {"root": args.root}
    for key in ("policy", "registries_d", "authfile", "snapshotter", "unpack_workers",
                "cert_dir", "insecure_policy", "require_encrypted", "registries_conf"):
        overrides[key] = getattr(args, key, None)
    overrides["limits"] = getattr(args, "limit", None)
    overrides["retries"] = getattr(args, "retries", None)
    timeout = getattr(args, "timeout", None)
    overrides["read_timeout"] = overrides["header_timeout"] = timeout
    return load_config(args.config).merged(overrides)


def _registry_client(args: argparse.Namespace, **extra: Any) -> Any:
    """A Client for pull and verify: connection and trust settings from flags and file."""
    from .client import Client
    from .reference import parse_reference

    cfg = _settings(args)
    registry = parse_reference(args.ref).registry
    return Client(
        cfg.root, plain_http=args.plain_http or cfg.plain_http_for(registry),
        cert_dir=cfg.cert_dir, creds=args.creds, authfile=cfg.authfile,
        snapshotter=cfg.snapshotter or "auto", unpack_workers=cfg.unpack_workers,
        max_concurrent_downloads=cfg.max_concurrent_downloads,
        policy=cfg.policy, registries_d=cfg.registries_d,
        insecure_policy=bool(cfg.insecure_policy), resources=cfg.resource_provider(),
        require_encrypted=cfg.require_encrypted, limits=cfg.limits,
        registries_conf=cfg.registries_conf, connection=cfg.registry_options(), **extra,
    )


def _pull(args: argparse.Namespace) -> int:
    client = _registry_client(args, decryption_keys=args.decryption_key)
    show_bars = not (args.json or args.quiet) and sys.stderr.isatty()
    options = {"rootfs": args.rootfs, "platform": args.platform,
               "unpack": not args.no_unpack}
    if show_bars:
        with _Bars() as bars:
            result = client.pull(args.ref, progress=bars, **options)
    else:
        result = client.pull(args.ref, **options)
    if client.trust.note and not args.quiet:
        print(f"unlade: note: {client.trust.note}", file=sys.stderr)
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        total = sum(layer.size for layer in result.layers)
        where = f" into {result.rootfs}" if result.rootfs else ""
        print(
            f"pulled {result.reference} ({result.manifest_digest[:19]}, {result.platform}): "
            f"{len(result.layers)} layer{'s' if len(result.layers) != 1 else ''}, "
            f"{_size(total)}, {_size(result.bytes_fetched)} "
            f"fetched in {result.seconds:.2f} s{where}"
        )
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    client = _registry_client(args)
    verdict = client.verify(args.ref)
    if verdict is None:
        doc: dict[str, Any] = {"image": args.ref, "scope": None, "accepted": True,
                               "requirements": [], "note": client.trust.note}
    else:
        doc = verdict.to_json()
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        if verdict is None:
            print(f"{args.ref}: accepted ({client.trust.note})")
        else:
            print(f"{doc['image']}: {'accepted' if doc['accepted'] else 'REJECTED'} "
                  f"(policy scope {doc['scope']!r})")
            for req in doc["requirements"]:
                print(f"  {'ok  ' if req['ok'] else 'FAIL'}  {req['requirement']}: "
                      f"{req['reason']}")
    return EXIT_OK if doc["accepted"] else EXIT_FAIL


def _client(args: argparse.Namespace) -> Any:
    from .client import Client

    cfg = _settings(args)
    return Client(cfg.root, limits=cfg.limits)


def _images(args: argparse.Namespace) -> int:
    import time

    rows = _client(args).images()
    if args.json:
        from dataclasses import asdict

        json.dump([asdict(r) for r in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    width = max([len(r.ref) for r in rows] + [3])
    print(f"{'REF':<{width}}  {'DIGEST':<19}  {'PLATFORM':<14}  {'SIZE':>10}  PULLED")
    for r in rows:
        pulled = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
        print(f"{r.ref:<{width}}  {r.manifest_digest[:19]}  {r.platform:<14}  "
              f"{_size(r.size):>10}  {pulled}")
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    doc = _client(args).inspect(args.ref)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    print(f"refs:     {', '.join(doc['refs'])}")
    print(f"manifest: {doc['manifest_digest']}")
    print(f"config:   {doc['config_digest']}")
    print(f"platform: {doc['platform']}   size: {_size(doc['size'])}")
    for i, layer in enumerate(doc["layers"], 1):
        print(f"layer {i}: {layer['digest']}\n  diffID  {layer['diff_id']}\n"
              f"  chainID {layer['chain_id']}")
    return EXIT_OK


def _rm(args: argparse.Namespace) -> int:
    client = _client(args)
    for ref in args.refs:
        client.remove(ref)
        print(f"removed {ref}")
    return EXIT_OK


def _prune(args: argparse.Namespace) -> int:
    result = _client(args).prune()
    if args.json:
        from dataclasses import asdict

        json.dump(asdict(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    print(f"pruned {result.images} images, {result.blobs} blobs ({_size(result.bytes)}), "
          f"{result.snapshots} snapshots ({_size(result.snapshot_bytes)})")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    result = _client(args).check()
    if args.json:
        from dataclasses import asdict

        json.dump({**asdict(result), "ok": result.ok}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK if result.ok else EXIT_FAIL
    for problem in result.problems:
        print(f"problem: {problem}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"checked {result.blobs} blobs, {result.images} images and {result.snapshots} "
          f"snapshots: {'ok' if result.ok else f'{len(result.problems)} problems'}")
    return EXIT_OK if result.ok else EXIT_FAIL


def _mount(args: argparse.Namespace) -> int:
    _client(args).mount(args.ref, args.dir, snapshotter=args.snapshotter)
    print(f"mounted {args.ref} at {args.dir}")
    return EXIT_OK


def _unmount(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    _client(args).unmount(target / "rootfs" if (target / "config.json").exists() else target,
                          snapshotter=args.snapshotter)
    print(f"unmounted {args.dir}")
    return EXIT_OK


def _bundle(args: argparse.Namespace) -> int:
    path = _client(args).bundle(args.ref, args.dir, snapshotter=args.snapshotter)
    print(f"bundle ready: {args.dir} ({path.name}, rootfs mounted)")
    return EXIT_OK


_COMMANDS = {"pull": _pull, "verify": _verify, "mount": _mount, "unmount": _unmount,
             "bundle": _bundle, "images": _images, "inspect": _inspect, "rm": _rm,
             "prune": _prune, "check": _check}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (see module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    bench_args = _bench_argv(argv)
    if bench_args is not None:
        from .bench.cli import main as bench_main

        return bench_main(bench_args)
    args = _parser().parse_args(argv)
    if args.root is None and os.environ.get("UNLADE_ROOT"):
        args.root = os.environ["UNLADE_ROOT"]
    from .errors import UnladeError

    try:
        return _COMMANDS[args.command](args)
    except UnladeError as err:
        print(f"unlade: error: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED if type(err).__name__ == "Interrupted" else EXIT_FAIL
    except KeyboardInterrupt:
        print("unlade: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:
        if err.errno == 28:
            print("unlade: error: no space left on device", file=sys.stderr)
        else:
            print(f"unlade: error: {err.strerror or err}: {err.filename or ''}".rstrip(": "),
                  file=sys.stderr)
        return EXIT_FAIL
    except Exception as err:  # a bug of ours: still one line, with a way to see more
        if os.environ.get("UNLADE_DEBUG"):
            raise
        print(f"unlade: internal error: {type(err).__name__}: {err} "
              "(run with UNLADE_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_FAIL
