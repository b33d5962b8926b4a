"""`snnc.loader`, the name docs/model_files.md gives users: model files are read by
snnc.files.loader; this module keeps the public names at their documented address."""

from snnc.files.loader import (build_from_checkpoint, checkpoint_bytes, load_checkpoint,
                               load_program, make_checkpoint)
from snnc.files.tensors import fingerprint

__all__ = ["build_from_checkpoint", "checkpoint_bytes", "fingerprint", "load_checkpoint",
           "load_program", "make_checkpoint"]
