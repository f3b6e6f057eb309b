"""``gcnet info``: parameters and multiply-adds of the variants, training vs deploy form."""

from __future__ import annotations

import argparse
import json

from gcnet.cli.args import parse_size, positive_int
from gcnet.errors import ConfigError
from gcnet.models.complexity import model_info
from gcnet.models.gcnet import list_models


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="params and MACs per variant (training vs reparameterized form)",
        description="Report parameters and multiply-adds (MACs; the paper's 'GFLOPs' column) of GCNet "
                    "variants in training form and in deploy form (GCBlocks reparameterized, BN folded, "
                    "auxiliary head dropped) at any input size. Counting runs on PyTorch's meta device: "
                    "instant, no memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("models", nargs="*", default=list_models(), metavar="MODEL",
                   help=f"variants to report ({', '.join(list_models())})")
    p.add_argument("--size", type=parse_size, default="1024x2048", metavar="HxW",  # argparse parses a str default
                   help="input size")
    p.add_argument("--num-classes", type=positive_int, default=19, help="number of classes")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    unknown = [m for m in args.models if m.lower() not in list_models()]
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(list_models())}")
    rows = [model_info(m.lower(), args.size, args.num_classes) for m in args.models]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    h, w = args.size
    print(f"input {h}x{w}, batch 1, {args.num_classes} classes")
    print(f"{'model':<9} {'train params':>13} {'train GMACs':>12} {'deploy params':>14} {'deploy GMACs':>13}")
    for r in rows:
        print(f"{r['model']:<9} {r['train']['params'] / 1e6:>12.2f}M {r['train']['macs'] / 1e9:>12.1f} "
              f"{r['deploy']['params'] / 1e6:>13.2f}M {r['deploy']['macs'] / 1e9:>13.1f}")
    return 0
