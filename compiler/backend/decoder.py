"""The C99 reference decoder of .snnpack packs (compiler/backend/c/): `snnc decoder -o DIR`
writes its three files, for an app that reads packs without Python (docs/deployment.md)."""

from __future__ import annotations

from importlib import resources

SOURCES = ("snnpack.h", "snnpack.c", "snnpack_decode.c")
BUILD = "cc -std=c99 -O2 -o snnpack_decode snnpack_decode.c snnpack.c"


def source(name: str) -> bytes:
    """The bytes of one of SOURCES, as installed with snnc."""
    return resources.files("snnc.backend").joinpath("c", name).read_bytes()
