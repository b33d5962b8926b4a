"""The few error types snnc raises. Every user-facing failure is one of these.

The CLI prints `str(error)` as one paragraph and exits non-zero; a raw traceback from torch
or onnx reaching the user is a bug in snnc.
"""


def first_line(error: BaseException) -> str:
    """The first line of an underlying library's error (at most 300 characters), for messages
    that name what went wrong without its traceback."""
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


class SnncError(Exception):
    """Base of every error snnc reports to a user."""


class BadInputError(SnncError):
    """The user's file, option or model is wrong (missing, not a model, unsafe to load...)."""


class UsageError(SnncError):
    """Options that cannot go together (the command line's own mistake): exit status 2, as
    click gives a malformed option, checked before any file is read."""


class UnsupportedOpError(SnncError):
    """The model uses operations snnc cannot compile; lists every one with its source line."""

    def __init__(self, items: list[tuple[str, str]]):
        self.items = items
        lines = [f"  - {op}   at {where}" for op, where in items]
        super().__init__(
            f"the model uses {len(items)} operation(s) snnc cannot compile:\n"
            + "\n".join(lines)
            + "\nRewrite these parts of the model with supported layers (docs/ops.md lists"
            " them), or open an issue with the model attached."
        )


class VerificationError(SnncError):
    """The IR broke an invariant. Names the stage (frontend or pass) that broke it."""


class PassError(SnncError):
    """A pass could not do its job on this graph (for example, an unsupported combination)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's stop, `kill`), which the CLI handles as Ctrl-C: temporary
    files are removed and a search keeps its state; the exit code is 143 instead of 130."""


def interrupt_code(error: BaseException) -> int:
    """The exit code of an interrupted command: 143 after SIGTERM, 130 after Ctrl-C."""
    return 143 if isinstance(error, Terminated) else 130
