"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse


def parse_size(text: str) -> tuple[int, int]:
    """'1024x2048' (HxW) or '512' (square) -> (H, W)."""
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be HxW or N (positive integers), e.g. 1024x2048 or 512; got {text!r}")
    return parts[0], parts[1]
