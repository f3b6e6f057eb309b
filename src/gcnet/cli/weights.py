"""``gcnet weights``: list, download and verify named pretrained weights."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
examples:
  gcnet weights                                  # names, dataset, mIoU, eval size, cached or not (= weights list)
  gcnet weights download gcnet-s_cityscapes      # once; then the name works offline
  gcnet weights verify                           # every cached file: SHA-256 and keys/shapes
  gcnet predict street.jpg --checkpoint gcnet-s_cityscapes

Every command that takes a checkpoint (eval, predict, export, bench, train's init.load_from) takes a
name, a path or a URL. Cache: $GCNET_HOME/weights (default ~/.cache/gcnet/weights). GCNET_OFFLINE=1
never touches the network. Google Drive downloads need gdown: pip install 'gcnet[gdrive]'.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="list, download and verify named pretrained weights",
                       description="Named pretrained weights: their metadata, the download cache, verification.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="list as JSON (all metadata)")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    ls = actions.add_parser("list", help="list the named weights (the default action)")
    ls.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="list as JSON (all metadata)")
    d = actions.add_parser("download", help="download named weights into the cache (checked before kept)")
    d.add_argument("names", nargs="+", metavar="NAME")
    d.add_argument("--force", action="store_true", help="download again even if cached")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    v = actions.add_parser("verify", help="check cached weights: SHA-256 (where published), keys and shapes")
    v.add_argument("names", nargs="*", metavar="NAME", help="default: every cached one")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "download":
        return _download(args.names, args.force, not args.no_progress)
    if args.action == "verify":
        return _verify(args.names)
    return _list(args.json)


def _list(as_json: bool) -> int:
    from gcnet.weights import REGISTRY, weights_dir

    entries = [REGISTRY[n] for n in sorted(REGISTRY)]
    if as_json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    print(f"{'name':<22}{'model':<9}{'dataset':<12}{'classes':>8}{'mIoU':>7}  {'eval size':<11}{'cached':<8}")
    for e in entries:
        miou = f"{e.miou:.1f}" if e.miou is not None else "-"
        cached = f"{e.path.stat().st_size / 2**20:.0f} MiB" if e.is_cached() else "no"
        print(f"{e.name:<22}{e.variant:<9}{e.dataset:<12}{e.num_classes:>8}{miou:>7}  "
              f"{e.eval_size[0]}x{e.eval_size[1]:<6}{cached:<8}")
    print(f"cache: {weights_dir()}  (mIoU as reported by the source; `gcnet weights --json` for all metadata)")
    return 0


def _download(names: list[str], force: bool, progress: bool) -> int:
    from gcnet.checkpoint import fetch_weights
    from gcnet.weights import get_weights

    entries = [get_weights(n) for n in names]  # unknown names fail before anything is downloaded
    for e in entries:
        cached = e.is_cached() and not force
        path = fetch_weights(e, force=force, progress=progress)  # a cached file is checked against its name
        print(f"{e.name}: already cached at {path}" if cached else f"{e.name}: {path}")
    return 0


def _verify(names: list[str]) -> int:
    from gcnet.checkpoint import verify_weights
    from gcnet.errors import CheckpointError
    from gcnet.weights import REGISTRY, get_weights

    entries = [get_weights(n) for n in names] if names else [e for e in REGISTRY.values() if e.is_cached()]
    if not entries:
        print("no named weights are cached (gcnet weights download NAME)")
        return 0
    failed = 0
    for e in entries:
        try:
            digest = verify_weights(e)
        except CheckpointError as exc:
            failed += 1
            fix = "" if "gcnet weights download" in str(exc) else (
                f"; download it again: gcnet weights download {e.name} --force")
            print(f"{e.name}: FAILED: {exc}{fix}", file=sys.stderr)
            continue
        known = "matches the published hash" if e.sha256 else "no published hash to compare with"
        print(f"{e.name}: OK (keys and shapes match {e.variant}, {e.num_classes} classes); sha256 {digest} ({known})")
    return 1 if failed else 0
