"""The files a command reads and writes: checked before any work, written only where they
were checked, and told apart by content.

`check_paths` refuses, before anything is read or written: an empty path; an input that is
missing, a directory or a special file (FIFO, device, socket: never opened, so a FIFO cannot
block); an output in a missing directory, in /dev, /proc or /sys or on a kernel file system,
an output that is a symbolic link, or an existing output that is not a regular file; and any
output that resolves (symlinks, hard links, `..`) to an input or to another output.
Inside `pinned_outputs` it also records where each output is, and the writers of
snnc.files.outputs write there or nowhere (docs/model_files.md, "Where outputs go").

`sniff` names what a file is from its first bytes (and, for zips, its member names), so that
each kind of wrong file gets its own message (`wrong_kind`).
"""

from __future__ import annotations

import codecs
import os
import re
import stat
import zipfile
from typing import Iterable

from snnc.errors import BadInputError
from snnc.files.outputs import check_place, link_error, pin_checked, special_kind

# --dump-ir writes files named like this into its directory (snnc.pipeline).
DUMP_NAME = re.compile(r"\d\d-[A-Za-z_]+\.(ir|txt)")


def check_paths(inputs: Iterable[tuple[str, str | None]],
                outputs: Iterable[tuple[str, str | None]],
                dump_dir: str | None = None) -> None:
    """`inputs` and `outputs` are (what, path) pairs, e.g. ("MODEL", "m.pt"); None paths are
    options not given. Raises BadInputError naming the first problem."""
    inputs = [(what, path) for what, path in inputs if path is not None]
    outputs = [(what, path) for what, path in outputs if path is not None]
    for what, path in inputs:
        _check_input(what, path)
    seen: dict[str, str] = {}

    def check(what: str, path: str) -> None:
        _check_output(what, path)
        key = os.path.realpath(path)
        if key in seen:
            raise BadInputError(f"{what} {path} and {seen[key]} are the same file; give each "
                                "output its own name")
        seen[key] = f"{what} {path}"
        for in_what, in_path in inputs:
            if _same_file(path, in_path):
                raise BadInputError(f"{what} {path} is the input {in_what} {in_path}: snnc "
                                    "never writes over its input. Choose another output name.")

    for what, path in outputs:
        path = _path(what, path)
        pin_checked(what, path, lambda: check(what, path))
    if dump_dir is not None:
        dump_dir = _path("--dump-ir", dump_dir)
        pin_checked("--dump-ir", dump_dir, lambda: _check_dump_dir(dump_dir, inputs + outputs),
                     is_dir=True)


def check_input(what: str, path: str) -> None:
    """One input file: present, a regular file (not opened)."""
    _check_input(what, path)


def _path(what: str, path) -> str:
    """A path given as str or os.PathLike; empty, non-text and NUL-containing ones refused."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise BadInputError(f"{what}: {type(path).__name__} is not a path") from None
    if not isinstance(path, str) or not path.strip():
        raise BadInputError(f"{what}: the path is empty; give a file name")
    if "\0" in path:
        raise BadInputError(f"{what}: the path {path!r} contains a NUL character")
    return path


def _check_input(what: str, path) -> None:
    path = _path(what, path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise BadInputError(f"{what} {path}: no such file") from None
    except (OSError, ValueError) as error:
        raise BadInputError(f"{what} {path}: cannot access it "
                            f"({getattr(error, 'strerror', None) or error})") from None
    if stat.S_ISDIR(mode):
        raise BadInputError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise BadInputError(f"{what} {path} is a {special_kind(mode)}, not a regular file; "
                            "snnc reads only regular files")
    if not os.access(path, os.R_OK):
        raise BadInputError(f"{what} {path}: permission denied")


def _check_output(what: str, path) -> None:
    path = _path(what, path)
    if os.path.isdir(path):
        raise BadInputError(f"{what} {path} is a directory; give a file name")
    if path.endswith(os.sep) or os.path.basename(path) in ("", ".", ".."):
        raise BadInputError(f"{what} {path} does not end in a file name; give one")
    directory = os.path.dirname(path) or "."  # not abspath: "missing/../x" must fail here
    if not os.path.isdir(directory):
        raise BadInputError(f"cannot write {what} {path}: directory {directory} does not exist")
    check_place(what, path, directory, os.stat(directory).st_dev)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot write {what} {path}: directory {directory} is not "
                            "writable")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:  # a name too long for the file system, say
        raise BadInputError(f"cannot write {what} {path}: {error.strerror or error}; give "
                            "another name") from None
    if stat.S_ISLNK(mode):
        raise link_error(what, path)
    if not stat.S_ISREG(mode):
        raise BadInputError(f"{what} {path} exists and is a {special_kind(mode)}; snnc "
                            "writes only regular files")


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _check_dump_dir(dump_dir: str, files: list[tuple[str, str]]) -> None:
    if os.path.exists(dump_dir) and not os.path.isdir(dump_dir):
        raise BadInputError(f"--dump-ir {dump_dir} exists and is not a directory")
    parent = os.path.dirname(dump_dir.rstrip(os.sep)) or "."
    if not os.path.isdir(dump_dir) and not os.path.isdir(parent):
        raise BadInputError(f"--dump-ir {dump_dir}: its parent directory {parent} does not "
                            "exist")
    for directory in (parent, dump_dir) if os.path.isdir(dump_dir) else (parent,):
        check_place("--dump-ir", dump_dir, directory, os.stat(directory).st_dev)
    try:
        names = sorted(os.listdir(dump_dir)) if os.path.isdir(dump_dir) else []
    except OSError as error:
        raise BadInputError(f"--dump-ir {dump_dir}: cannot list it "
                            f"({error.strerror or error})") from None
    for name in filter(DUMP_NAME.fullmatch, names):
        old = os.path.join(dump_dir, name)  # an earlier compile's dump, to be replaced
        try:
            mode = os.lstat(old).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            raise link_error("--dump-ir file", old)
        if not stat.S_ISREG(mode):
            raise BadInputError(f"--dump-ir file {old} exists and is a {special_kind(mode)}; "
                                "snnc writes only regular files")
    root = os.path.realpath(dump_dir)
    for what, path in files:
        real = os.path.realpath(path)
        if real == root:
            raise BadInputError(f"--dump-ir {dump_dir} is also {what} {path}; give each its "
                                "own name")
        if os.path.dirname(real) == root and DUMP_NAME.fullmatch(os.path.basename(real)):
            raise BadInputError(f"--dump-ir {dump_dir} would write over {what} {path}; dump "
                                "the IR into another directory")


# ------------------------------------------------------------------------------------------
# What a file is

KINDS = {
    "export": "a torch.export archive",
    "torch": "a torch.save file",
    "pickle": "a Python pickle",
    "npz": "a NumPy .npz archive",
    "zip": "a zip archive",
    "broken-zip": "a damaged zip archive (truncated, or not written completely)",
    "onnx": "an ONNX model",
    "ort": "an ORT-format model (ONNX Runtime Mobile)",
    "snnpack": "an snnc weight pack (.snnpack)",
    "nir": "a NIR graph (HDF5)",
    "empty": "an empty file",
    "text": "a text file",
    "binary": "an unrecognised binary file",
}


def sniff(path: str) -> str:
    """One of KINDS for a regular file (call check_input first)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "empty"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip, or an empty one
        return _zip_kind(path) if zipfile.is_zipfile(path) else "broken-zip"
    if head[:8] == b"SNNPACK\0":
        return "snnpack"
    if head[:8] == b"\x89HDF\r\n\x1a\n":  # HDF5: a NIR graph (snnc.nir.reader)
        return "nir"
    if head[4:8] == b"ORTM":
        return "ort"
    if head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if _is_onnx(path, head):
        return "onnx"
    if _is_text(head):
        return "text"
    return "binary"


def _zip_kind(path: str) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "binary"
    if any(n.endswith("/archive_format") for n in names) and any("/models/" in n for n in names):
        return "export"
    if any(n.endswith("data.pkl") for n in names):
        return "torch"
    if all(n.endswith(".npy") for n in names):  # np.savez() of no arrays is an empty zip
        return "npz"
    return "zip"


def _is_onnx(path: str, head: bytes) -> bool:
    """An ONNX ModelProto starts with field 1 (ir_version, a varint): tag 0x08. Confirm by
    parsing, which is cheap next to the error it avoids."""
    if head[0] != 0x08 or os.path.getsize(path) > 2 ** 31:
        return False
    try:
        try:
            import onnx
            model = onnx.load(path, load_external_data=False)
        except ImportError:  # the runtime alone (numpy, onnxruntime): snnc's own reader
            from snnc.files import onnx_lite
            model = onnx_lite.load(path)
    except Exception:
        return False
    return model.ir_version > 0 and len(model.opset_import) > 0


def _is_text(head: bytes) -> bool:
    """UTF-8 (a character cut at the end of the sample is fine), UTF-16 with a BOM, or a
    single-byte encoding: no NUL bytes and almost only printable characters."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return True
    if b"\0" in head:
        return False
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=False)
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    printable = sum(c.isprintable() or c in "\n\r\t\f\v\x1b" for c in text)
    return printable >= 0.95 * len(text)


def wrong_kind(what: str, path: str, kind: str, expected: str,
               doc: str = "docs/model_files.md") -> BadInputError:
    """The error for `path` of `kind` given where `expected` was wanted; with a hint for the
    usual mix-ups."""
    hints = {
        "onnx": " It looks like a compiled model: snnc compile takes the PyTorch model it was "
                "compiled from.",
        "ort": " It looks like a compiled model: snnc compile takes the PyTorch model it was "
               "compiled from.",
        "npz": " It looks like a data file (snnc verify --data, snnc quantize --calibration).",
        "snnpack": " It looks like a weight pack (snnc verify --pack, snnc inspect).",
        "zip": " It is neither a torch.export archive nor an .npz of arrays.",
        "text": " Is this the right path?",
        "empty": " Was it written completely?",
        "broken-zip": " Write it again (torch.export.save, numpy.savez).",
    }
    return BadInputError(f"{what} {path} is {KINDS[kind]}, not {expected}."
                         + hints.get(kind, "") + f" See {doc}.")
