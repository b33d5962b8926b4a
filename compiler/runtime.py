"""`snnc.runtime`, the name docs/deployment.md gives users: a compiled model and its pack
are loaded by snnc.backend.runtime; this module keeps load_session at its documented address."""

from snnc.backend.runtime import load_session

__all__ = ["load_session"]
