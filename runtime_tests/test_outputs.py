"""Outputs are written where they were checked, or not at all (docs/model_files.md, "Where
outputs go"): a directory on an output's path swapped between the check and the write, a
target created, replaced or turned into a link meanwhile, an output that is a symbolic link,
and an output in /dev, /proc or /sys are refused with one clear error, writing nothing.

The swaps happen deterministically between the check and the write: through
snnc.files.paths (every layout, every place of the swapped file in a write), and through
each command (compile, quantize, search) with the swap done inside the model loader, which
runs after the check and before any write. Nothing here writes under /dev, /proc or /sys:
those rules are tested by path on check_paths, which writes nothing.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import snnc
from snnc.cli import main
from snnc.demo import conv_snn, export
from snnc.errors import BadInputError
from snnc.files import loader, outputs, paths

from snapshots import snapshot

INPUT = b"the input model: never to be written over"


@pytest.fixture
def d(tmp_path):
    """A case directory holding the input in/model.pt."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "model.pt").write_bytes(INPUT)
    return tmp_path


def _relink(link: Path, target: Path) -> None:
    """`link` (a directory or a link) becomes a link to `target`; a directory is kept aside."""
    if link.is_symlink():
        link.unlink()
    else:
        link.rename(link.with_name(link.name + ".checked"))
    link.symlink_to(target)


# ------------------------------------------------------------------------------------------
# Layouts: each builds what the check sees and returns (the output, the swap to do after the
# check). Directory swaps send the write to the input's directory under the input's name.

def parent_swapped(d):
    (d / "out").mkdir()
    return d / "out" / "model.pt", lambda: _relink(d / "out", d / "in")


def grandparent_swapped(d):
    (d / "g" / "in").mkdir(parents=True)
    return d / "g" / "in" / "model.pt", lambda: _relink(d / "g", d)


def linked_directory_repointed(d):
    (d / "real").mkdir()
    (d / "link").symlink_to(d / "real")
    return d / "link" / "model.pt", lambda: _relink(d / "link", d / "in")


def parent_replaced_by_another_directory(d):
    (d / "out").mkdir()

    def swap():
        (d / "out").rename(d / "out.checked")
        (d / "out").mkdir()
    return d / "out" / "model.pt", swap


def _target(d, swap):
    (d / "out").mkdir(exist_ok=True)
    out = d / "out" / "new.onnx"
    return out, lambda: swap(out)


def target_link_to_input(d):
    return _target(d, lambda out: out.symlink_to(d / "in" / "model.pt"))


def target_link_to_directory(d):
    return _target(d, lambda out: out.symlink_to(d / "in"))


def target_link_to_device(d):
    return _target(d, lambda out: out.symlink_to("/dev/null"))


def target_link_like_dev_stdout(d):
    """/dev/stdout -> /proc/self/fd/1 -> a file stdout was redirected to, all in d."""
    (d / "fake" / "dev").mkdir(parents=True)
    (d / "fake" / "proc" / "self" / "fd").mkdir(parents=True)
    (d / "captured.txt").write_text("stdout, redirected\n")
    (d / "fake" / "proc" / "self" / "fd" / "1").symlink_to(d / "captured.txt")
    (d / "fake" / "dev" / "stdout").symlink_to("../proc/self/fd/1")
    return _target(d, lambda out: out.symlink_to(d / "fake" / "dev" / "stdout"))


def target_hard_link_to_input(d):
    return _target(d, lambda out: os.link(d / "in" / "model.pt", out))


def target_created(d):
    return _target(d, lambda out: out.write_bytes(b"another program's file"))


def target_replaced(d):
    (d / "out").mkdir()
    (d / "out" / "new.onnx").write_bytes(b"the old output, checked")

    def swap(out):
        (d / "theirs").write_bytes(b"another program's file")
        os.replace(d / "theirs", out)
    return _target(d, swap)


def target_became_fifo(d):
    return _target(d, os.mkfifo)


LAYOUTS = [parent_swapped, grandparent_swapped, linked_directory_repointed,
           parent_replaced_by_another_directory, target_link_to_input, target_link_to_directory,
           target_link_to_device, target_link_like_dev_stdout, target_hard_link_to_input,
           target_created, target_replaced, target_became_fifo]


@pytest.mark.parametrize("place", ["alone", "first", "last", "written later"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda f: f.__name__)
def test_a_swap_between_check_and_write_is_refused(d, layout, place):
    """check_paths, the swap, write_all_atomic: what every command does. The swapped output
    is written alone, first or last of three, or is not written at all (a later step's
    output, like compile's --report): each time nothing is written."""
    out, swap = layout(d)
    (d / "other").mkdir(exist_ok=True)
    a, b = str(d / "other" / "a.onnx"), str(d / "other" / "b.ort")
    order = {"alone": [str(out)], "first": [str(out), a, b], "last": [a, b, str(out)],
             "written later": [a, b]}[place]
    with outputs.pinned_outputs():
        paths.check_paths([("MODEL", str(d / "in" / "model.pt"))],
                          [("-o", str(out)), ("--pack", a), ("--ort", b)])
        swap()
        before = snapshot(d)
        with pytest.raises(BadInputError) as error:
            outputs.write_all_atomic([(p, b"new output " + p.encode()) for p in order])
    message = str(error.value)
    assert str(out) in message and "Nothing was written" in message, message
    assert snapshot(d) == before
    assert (d / "in" / "model.pt").read_bytes() == INPUT


@pytest.mark.parametrize("layout", ["dump directory swapped", "dump parent swapped",
                                    "dump directory appeared as a link",
                                    "dump file appeared as a link"])
def test_a_swapped_dump_directory_is_refused(d, layout):
    """--dump-ir: the directory (existing or to be made) and its parent stay the checked
    ones, and its files are not links, as pipeline._dump makes it and writes into it."""
    (d / "p").mkdir()
    dump = d / "p" / "dump"
    if layout in ("dump directory swapped", "dump file appeared as a link"):
        dump.mkdir()
    swap = {"dump directory swapped": lambda: _relink(dump, d / "in"),
            "dump parent swapped": lambda: _relink(d / "p", d / "in"),
            "dump directory appeared as a link": lambda: dump.symlink_to(d / "in"),
            "dump file appeared as a link":
                lambda: (dump / "00-frontend.ir").symlink_to(d / "in" / "model.pt")}[layout]
    with outputs.pinned_outputs():
        paths.check_paths([("MODEL", str(d / "in" / "model.pt"))],
                          [("-o", str(d / "out.onnx"))], dump_dir=str(dump))
        swap()
        before = snapshot(d)
        with pytest.raises(BadInputError, match="--dump-ir"):
            outputs.make_directory("--dump-ir", str(dump))
            outputs.write_atomic(str(dump / "00-frontend.ir"), b"IR")
    assert snapshot(d) == before


def test_rewrites_follow_snnc_s_own_file_and_linked_directories_work(d):
    """A command's own earlier write is what it finds next time (search rewrites its state
    after every unit of work), through a directory reached by a link; another program's
    file put there between two writes is refused."""
    (d / "real").mkdir()
    (d / "link").symlink_to(d / "real")
    state = str(d / "link" / "s.state")
    with outputs.pinned_outputs():
        paths.check_paths([("MODEL", str(d / "in" / "model.pt"))], [("--state", state)])
        for step in range(3):
            outputs.write_atomic(state, b"state %d" % step)
        assert (d / "real" / "s.state").read_bytes() == b"state 2"
        (d / "x").write_bytes(b"another program's file")
        os.replace(d / "x", d / "real" / "s.state")
        with pytest.raises(BadInputError, match="replaced while snnc was working"):
            outputs.write_atomic(state, b"state 3")
    assert (d / "real" / "s.state").read_bytes() == b"another program's file"
    assert not [n for n in os.listdir(d / "real") if n.startswith(".snnc-")]


# ------------------------------------------------------------------------------------------
# Outputs that are links, and places snnc never writes (by path: check_paths writes nothing)

@pytest.mark.parametrize("kind", ["file", "relative", "dangling", "like /dev/stdout",
                                  "device"])
def test_an_output_that_is_a_link_is_refused_at_check_and_at_write(d, kind):
    (d / "elsewhere").mkdir()
    (d / "elsewhere" / "real.onnx").write_bytes(b"kept")
    (d / "fake" / "proc" / "self" / "fd").mkdir(parents=True)
    (d / "fake" / "proc" / "self" / "fd" / "1").symlink_to(d / "elsewhere" / "real.onnx")
    target = {"file": d / "elsewhere" / "real.onnx", "relative": Path("elsewhere/real.onnx"),
              "dangling": d / "nowhere.onnx",
              "like /dev/stdout": d / "fake" / "proc" / "self" / "fd" / "1",
              "device": Path("/dev/null")}[kind]
    link = d / "out.onnx"
    link.symlink_to(target)
    before = snapshot(d)
    with pytest.raises(BadInputError, match="is a symbolic link to"):
        paths.check_paths([("MODEL", str(d / "in" / "model.pt"))], [("-o", str(link))])
    with pytest.raises(BadInputError, match="is a symbolic link to"):
        outputs.write_atomic(str(link), b"new output")  # a write nobody checked
    assert snapshot(d) == before


SYSTEM = ["/dev/snnc-test.onnx", "/dev/stdout", "/dev/shm/snnc-test.onnx",
          "/proc/self/snnc-test.onnx", "/sys/snnc-test.onnx", "/sys/kernel/snnc-test.onnx"]


@pytest.mark.parametrize("path", SYSTEM)
@pytest.mark.parametrize("role", ["-o", "--dump-ir"])
def test_outputs_in_dev_proc_sys_are_refused(d, path, role):
    """By path (check_paths writes nothing): /dev (with /dev/stdout and /dev/shm), /proc and
    /sys, given directly or through a link in an ordinary directory."""
    (d / "via").symlink_to(os.path.dirname(path))
    linked = str(d / "via" / os.path.basename(path))
    for given in (path, linked):
        if role == "-o":
            outs, dump = [("-o", given)], None
        else:
            outs, dump = [("-o", str(d / "out.onnx"))], given + ".d"
        with pytest.raises(BadInputError, match="snnc never writes into /dev, /proc or /sys"):
            paths.check_paths([("MODEL", str(d / "in" / "model.pt"))], outs, dump_dir=dump)


@pytest.mark.parametrize("directory", ["/proc/self", "/sys/kernel", "/dev/pts"])
def test_kernel_file_systems_are_refused_wherever_mounted(d, directory, monkeypatch):
    """With the /dev, /proc, /sys rule off, the file system type still refuses them (a bind
    mount of /proc elsewhere is still procfs); an ordinary directory passes."""
    if not os.path.isdir(directory):
        pytest.skip(f"{directory} is not mounted here")
    monkeypatch.setattr(outputs, "SYSTEM_DIRS", ())
    with pytest.raises(BadInputError, match="file system, a kernel interface"):
        paths.check_paths([], [("-o", os.path.join(directory, "snnc-test.onnx"))])
    paths.check_paths([], [("-o", str(d / "out.onnx"))])


# ------------------------------------------------------------------------------------------
# Every command, the swap done inside its model loader (after the check, before any write)

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    model = conv_snn()
    torch.save(loader.make_checkpoint("snnc.demo:conv_snn", {}, model, [2, 2, 12, 12]),
               root / "float.pt")
    snnc.quantize(model, {"conv1": {"scheme": "uniform", "bits": 4}, "*": "float"})
    torch.export.save(export(model, torch.zeros(1, 2, 12, 12)), str(root / "model.pt"))
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.random((8, 2, 12, 12), dtype=np.float32),
             y=np.arange(8) % 5)
    (root / "config.json").write_text(json.dumps({"conv1": {"scheme": "uniform", "bits": 4}}))
    return root


def run_with_swap(monkeypatch, function: str, swap, args: list[str]):
    """Run the CLI with `swap()` done when it calls snnc.files.loader.<function>."""
    original = getattr(loader, function)

    def swapped(*a, **k):
        swap()
        return original(*a, **k)
    monkeypatch.setattr(loader, function, swapped)
    return CliRunner().invoke(main, args)


def check_refused(result, d: Path, before: dict, *phrases: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stderr, result.exception)
    assert result.stderr.count("snnc: error:") == 1 and "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase.lower() in result.stderr.lower(), result.stderr
    assert snapshot(d) == before, "something was written"


def _dir_swap(d, name):
    return lambda: _relink(d / name, d / "in")


def _link_to_input(path):
    return lambda: path.symlink_to(path.parents[1] / "in" / "model.pt")


COMPILE = {  # role: (extra args, the swap, the path in the message)
    "-o": ([], "dir o", "o/model.onnx"),
    "--pack": (["--pack", "{d}/p/model.snnpack"], "dir p", "p/model.snnpack"),
    ".ort": (["--ort"], "link o/model.ort", "o/model.ort"),
    "operator config": (["--ort"], "link o/model.required_operators.config",
                        "o/model.required_operators.config"),
    "--report": (["--report", "{d}/r/report.json"], "dir r", "r/report.json"),
    "report figure": (["--report", "{d}/r/report.json"], "link r/report.png", "r/report.png"),
    "--dump-ir": (["--dump-ir", "{d}/ir/dump"], "dir ir", "ir/dump"),
}


def _swap(d: Path, how: str):
    kind, name = how.split(" ", 1)
    return _dir_swap(d, name) if kind == "dir" else _link_to_input(d / name)


@pytest.mark.parametrize("role", sorted(COMPILE))
def test_compile_writes_every_output_where_it_was_checked(d, models, role, monkeypatch):
    extra, how, shown = COMPILE[role]
    for name in ("o", "p", "r", "ir"):
        (d / name).mkdir()
    model = d / "in" / "model.pt"
    model.write_bytes((models / "model.pt").read_bytes())
    before_swap = None

    def swap():
        nonlocal before_swap
        _swap(d, how)()
        before_swap = snapshot(d)
    args = ["compile", str(model), "-o", str(d / "o" / "model.onnx"), "-q",
            *[a.replace("{d}", str(d)) for a in extra]]
    result = run_with_swap(monkeypatch, "load_program", swap, args)
    check_refused(result, d, before_swap, str(d / shown), "Nothing was written")


@pytest.mark.parametrize("how", ["dir o", "link o/model.ckpt"])
def test_quantize_writes_its_output_where_it_was_checked(d, models, how, monkeypatch):
    (d / "o").mkdir()
    before_swap = None

    def swap():
        nonlocal before_swap
        _swap(d, how)()
        before_swap = snapshot(d)
    args = ["quantize", str(models / "float.pt"), "--config", str(models / "config.json"),
            "-o", str(d / "o" / "model.ckpt")]
    result = run_with_swap(monkeypatch, "load_checkpoint", swap, args)
    check_refused(result, d, before_swap, str(d / "o" / "model.ckpt"), "Nothing was written")


SEARCH = {"-o": "dir o", "--quantized": "link q/model.pt", "--report": "dir r",
          "--report's JSON": "link r/pareto.json", "--state": "dir s"}


@pytest.mark.parametrize("role", sorted(SEARCH))
def test_search_writes_every_output_where_it_was_checked(d, models, role, monkeypatch):
    """The state file is written after the first unit of work, and every write checks all
    the outputs: the swap of any of them stops the search there."""
    for name in ("o", "q", "r", "s"):
        (d / name).mkdir()
    before_swap = None

    def swap():
        nonlocal before_swap
        _swap(d, SEARCH[role])()
        before_swap = snapshot(d)
    data = str(models / "data.npz")
    args = ["search", str(models / "float.pt"), "--train", data, "--val", data, "--method",
            "sensitivity", "--max-bits", "8", "--finetune-epochs", "0", "-q",
            "-o", str(d / "o" / "model.json"), "--quantized", str(d / "q" / "model.pt"),
            "--report", str(d / "r" / "pareto.png"), "--state", str(d / "s" / "run.state")]
    result = run_with_swap(monkeypatch, "build_from_checkpoint", swap, args)
    check_refused(result, d, before_swap, "Nothing was written")


# ------------------------------------------------- hostile review: signals, permissions, names

SIGTERM_CHILD = """
import os, signal, sys
from snnc.cli import main
calls, at = [0], int(sys.argv[1])
fsync = os.fsync
def stop_here(fd):  # a SIGTERM arriving while the n-th temporary file is being synced
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGTERM)
    fsync(fd)
os.fsync = stop_here
main(sys.argv[2:], prog_name="snnc")
"""


@pytest.mark.parametrize("command, at", [("compile --pack", 2), ("quantize", 1)])
def test_sigterm_during_a_write_leaves_nothing_behind(d, models, command, at):
    """SIGTERM (a scheduler's stop, kill) ends a command as Ctrl-C does: temporary files
    removed, existing outputs untouched, exit code 143 (Python's default ran no cleanup)."""
    import subprocess
    import sys

    out = d / "o"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"the previous output")
    if command == "quantize":
        args = ["quantize", str(models / "float.pt"), "--config", str(models / "config.json"),
                "-o", str(out / "model.onnx")]
    else:
        args = ["compile", str(models / "model.pt"), "-o", str(out / "model.onnx")]
        if "--pack" in command:
            args += ["--weights", "external", "--pack", str(out / "model.snnpack")]
    before = snapshot(d)
    run = subprocess.run([sys.executable, "-c", SIGTERM_CHILD, str(at), *args],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 143, (run.returncode, run.stderr)
    assert run.stderr.count("snnc: error: interrupted") == 1 and "Traceback" not in run.stderr
    assert snapshot(d) == before, "a temporary file or an output was left"


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o755, 0o444, 0o4755])
def test_a_replaced_output_keeps_its_permissions(tmp_path, mode):
    """Overwriting a file keeps its permission bits (not set-user-ID: snnc's file is not the
    program that was there); a new file gets the umask's."""
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    os.chmod(path, mode)
    outputs.write_atomic(str(path), b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == mode & 0o777
    umask = os.umask(0o022)
    os.umask(umask)
    outputs.write_atomic(str(tmp_path / "fresh.bin"), b"new")
    assert stat.S_IMODE((tmp_path / "fresh.bin").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("role", ["-o", "--pack", "--report", "derived .ort config"])
def test_names_too_long_for_the_file_system_are_refused(d, models, role):
    """A name beyond the file system's limit (255 bytes on most) is a clear refusal, also
    when snnc derives it from a legal one (-o's stem + .required_operators.config)."""
    long = "x" * 300
    args = ["compile", str(models / "model.pt"), "-o", str(d / "model.onnx")]
    if role == "-o":
        args[-1] = str(d / f"{long}.onnx")
    elif role == "--pack":
        args += ["--weights", "external", "--pack", str(d / f"{long}.snnpack")]
    elif role == "--report":
        args += ["--report", str(d / f"{long}.json")]
    else:
        args[-1] = str(d / ("x" * 245 + ".onnx"))
        args += ["--ort"]
    before = snapshot(d)
    result = CliRunner().invoke(main, args)
    check_refused(result, d, before, "name too long")
