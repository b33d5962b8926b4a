"""Where outputs may go, and writing them there and nowhere else.

Rules for every output of every command (docs/model_files.md, "Where outputs go"):

- never in /dev, /proc or /sys (SYSTEM_DIRS), nor through a link resolving there, nor on a
  kernel file system mounted elsewhere (KERNEL_FILESYSTEMS): `check_place`;
- never a path whose last component is a symbolic link, which the rename would replace:
  `link_error` (check_paths) and `_Target.check` (every write);
- written where it was checked: inside `pinned_outputs()` (every snnc command, snnc.compile
  and compile_file), snnc.files.paths.check_paths records through `pin_checked` each
  output's directory and the file there as (device, inode), and every write checks them
  again. It opens the directory, compares it with the record, writes the temporary file
  through that handle and, right before renaming, compares the directory, the target and
  every other output the command checked once more. A directory on the path moved or
  re-linked, or a target that appeared, was replaced or became a link, is refused and
  nothing of the write lands; the rename goes through the handle, so it cannot land
  anywhere but in the directory that was checked.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import errno
import os
import secrets
import stat

from snnc.errors import BadInputError


def special_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"


# ------------------------------------------------------------------------------------------
# Where outputs may go

# snnc never writes under these, nor through a link that resolves there: devices (and
# /dev/stdout, a link to a process's descriptor), /dev/shm (the shared memory of running
# programs), the kernel's process and settings files.
SYSTEM_DIRS = ("/dev", "/proc", "/sys")
# File systems that are kernel interfaces, refused wherever they are mounted.
KERNEL_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "debugfs", "tracefs", "securityfs", "cgroup",
    "cgroup2", "configfs", "efivarfs", "pstore", "bpf", "mqueue", "binfmt_misc", "fusectl"})


def check_place(what: str, path: str, directory: str, device: int) -> None:
    """Refuses a directory in SYSTEM_DIRS (after links) or on a KERNEL_FILESYSTEMS mount;
    `device` is the directory's st_dev."""
    real = os.path.realpath(directory)
    for root in SYSTEM_DIRS:
        if real == root or real.startswith(root + os.sep):
            where = (f"it is in {root}" if os.path.abspath(directory) == real else
                     f"its directory {directory} resolves to {real}, in {root}")
            raise BadInputError(f"cannot write {what} {path}: {where}. snnc never writes into "
                                "/dev, /proc or /sys (devices, /dev/stdout, /dev/shm, kernel "
                                "files); give a path in an ordinary directory")
    kind = _filesystem(device)
    if kind in KERNEL_FILESYSTEMS:
        raise BadInputError(f"cannot write {what} {path}: its directory {directory} is on a "
                            f"{kind} file system, a kernel interface; snnc never writes there. "
                            "Give a path in an ordinary directory")


def _filesystem(device: int) -> str | None:
    """The type of the file system mounted from `device` (Linux's /proc/self/mountinfo:
    `id parent major:minor root mountpoint options ... - type source ...`), None if unknown."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[2] == wanted and "-" in fields[6:]:
                    after = fields.index("-", 6) + 1
                    return fields[after] if after < len(fields) else None
    except OSError:
        return None
    return None


def link_error(what: str, path: str) -> BadInputError:
    """`path` is a symbolic link: the rename that writes an output would replace the link."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    real = os.path.realpath(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    kind = (", which does not exist" if mode is None else "" if stat.S_ISREG(mode) else
            f", a {special_kind(mode)}")
    then = (f"give the file's own path ({real})" if mode is not None and stat.S_ISREG(mode)
            else "give the path of a regular file")
    return BadInputError(f"{what} {path} is a symbolic link to {target}{kind}: snnc writes an "
                         "output by renaming a finished file onto its path, which would replace "
                         f"the link itself, not write to {real}. Remove the link or {then}")


# ------------------------------------------------------------------------------------------
# Outputs stay where they were checked

Identity = tuple  # (st_dev, st_ino)


@dataclasses.dataclass
class _Pin:
    what: str
    path: str
    directory: str  # where `path` is, as given
    directory_id: Identity
    target: Identity | None  # `path` when checked (or last written by snnc); None: absent
    is_dir: bool = False  # --dump-ir: `path` is a directory and links to it are followed


@dataclasses.dataclass
class _Scope:
    pins: dict = dataclasses.field(default_factory=dict)  # _key(path) -> _Pin
    written: list = dataclasses.field(default_factory=list)


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("snnc_outputs",
                                                                       default=None)


@contextlib.contextmanager
def pinned_outputs():
    """One command: the outputs check_paths checks inside are written only where they were
    checked. Nested uses share the outermost scope (compile_file inside `snnc compile`)."""
    if _SCOPE.get() is not None:
        yield
        return
    token = _SCOPE.set(_Scope())
    try:
        yield
    finally:
        _SCOPE.reset(token)


def _key(path: str) -> str:
    """An absolute spelling of `path` without `.`, repeated or trailing separators; `..` is
    kept (after a symlink it does not cancel the component before it)."""
    parts = os.path.join(os.getcwd(), path).split(os.sep)
    return os.sep + os.sep.join(p for p in parts if p not in ("", "."))


def _identity(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino)


def _split_dir(path: str) -> tuple[str, str]:
    """A directory path's parent and last name ("" for "/")."""
    parent, name = os.path.split(path.rstrip(os.sep) or os.sep)
    return parent or ".", name


def _take_pin(what: str, path: str, is_dir: bool = False) -> _Pin:
    directory, _ = _split_dir(path) if is_dir else (os.path.dirname(path) or ".", "")
    return _Pin(what, path, directory, _identity(os.stat(directory)),
                _target_now(path, follow=is_dir), is_dir)


def _target_now(path: str, follow: bool, dir_fd: int | None = None) -> Identity | None:
    try:
        return _identity(os.stat(path, dir_fd=dir_fd, follow_symlinks=follow))
    except FileNotFoundError:
        return None


def pin_checked(what: str, path: str, check, is_dir: bool = False) -> None:
    """Runs `check()` on an output and, inside pinned_outputs, records what it checked: the
    state before and after the check must agree (nothing moved while it ran), and a path
    checked earlier in the same command must not have changed since."""
    scope = _SCOPE.get()
    if scope is None:
        check()
        return
    try:
        before = _take_pin(what, path, is_dir)
    except OSError:
        before = None
    check()
    try:
        pin = _take_pin(what, path, is_dir)
    except OSError:
        pin = None
    if before is None or pin is None or _state(before) != _state(pin):
        raise BadInputError(f"{what} {path} changed while snnc was checking it (a directory on "
                            "its path, or the file, was moved or replaced); nothing was "
                            "written. Run snnc again once nothing else changes it")
    earlier = scope.pins.setdefault(_key(path), pin)
    if _state(earlier) != _state(pin):
        raise BadInputError(_changed(earlier, "it changed between two checks of the same "
                                              "command (a directory on its path, or the file, "
                                              "was moved or replaced); nothing was written"))


def _state(pin: _Pin) -> tuple:
    return pin.directory_id, pin.target


def _changed(pin: _Pin, how: str) -> str:
    return f"cannot write {pin.what} {pin.path}: {how}"


def _verify(pin: _Pin) -> None:
    """Raises BadInputError if the pinned output's directory or target changed."""
    try:
        directory_id = _identity(os.stat(pin.directory))
    except OSError:
        directory_id = None
    if directory_id != pin.directory_id:
        raise BadInputError(_moved(pin.what, pin.path, pin.directory))
    if not pin.is_dir:
        try:
            if stat.S_ISLNK(os.lstat(pin.path).st_mode):
                raise BadInputError(_became_link(pin.what, pin.path))
        except FileNotFoundError:
            pass
    _compare_target(pin, _target_now(pin.path, follow=pin.is_dir))


def _compare_target(pin: _Pin, now: Identity | None) -> None:
    if now is None or now == pin.target:
        return  # gone is fine: nothing there to protect
    if pin.target is None:
        raise BadInputError(_changed(pin, "it appeared while snnc was working (there was "
                                          "nothing there when snnc checked its outputs), and "
                                          "snnc does not replace what it did not check"))
    raise BadInputError(_changed(pin, "it was replaced while snnc was working and is no "
                                      "longer the file snnc checked"))


def _moved(what: str, path: str, directory: str) -> str:
    try:
        now = f"; it now resolves to {os.path.realpath(directory)}"
    except (OSError, ValueError):
        now = ""
    return (f"cannot write {what} {path}: its directory {directory} is no longer the one snnc "
            "checked before it started (a directory on the path was moved, replaced or "
            f"re-linked while snnc was working{now})")


def _became_link(what: str, path: str) -> str:
    try:
        target = f" to {os.readlink(path)}"
    except OSError:
        target = ""
    return (f"cannot write {what} {path}: it became a symbolic link{target} while snnc was "
            "working; snnc never renames a file over a link")


# ------------------------------------------------------------------------------------------
# Writing

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Target:
    """One file of a write: its directory opened once, its temporary file made in there."""

    def __init__(self, path: str, scope: _Scope | None):
        self.path = path
        self.directory, self.name = os.path.dirname(path) or ".", os.path.basename(path)
        if self.name in ("", ".", ".."):
            raise BadInputError(f"cannot write {path}: it does not end in a file name")
        self.pin = scope.pins.get(_key(path)) if scope is not None else None
        if self.pin is not None and self.pin.is_dir:
            self.pin = None
        self.expected, self.what = self._directory_record(scope)
        self.fd = os.open(self.directory, _DIRECTORY)
        self.tmp: str | None = None
        self.identity: Identity | None = None
        self.mode: int | None = None  # the permissions of the file it replaces

    def _directory_record(self, scope: _Scope | None) -> tuple[Identity | None, str]:
        """What this file's directory must be, and the file's name in messages."""
        if self.pin is not None:
            return self.pin.directory_id, self.pin.what
        holder = scope.pins.get(_key(self.directory)) if scope is not None else None
        if holder is not None and holder.is_dir:  # a file in the --dump-ir directory
            return holder.target, f"{holder.what} file"
        return None, "output"

    def check(self) -> None:
        """The directory is the one checked and still the one the path names; the target is
        not a link nor a special file, and (when pinned) is what was checked or gone."""
        opened = os.fstat(self.fd)
        try:
            named = _identity(os.stat(self.directory))
        except OSError:
            named = None
        if named != _identity(opened) or self.expected not in (None, named):
            raise BadInputError(_moved(self.what, self.path, self.directory))
        check_place(self.what, self.path, self.directory, opened.st_dev)
        try:
            st = os.stat(self.name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise BadInputError(_became_link(self.what, self.path) if self.pin is not None
                                else str(link_error(self.what, self.path)))
        if not stat.S_ISREG(st.st_mode):
            raise BadInputError(f"cannot write {self.what} {self.path}: it is a "
                                f"{special_kind(st.st_mode)}; snnc writes only regular files")
        self.mode = st.st_mode & 0o777  # a replaced file keeps its permissions (not set-id)
        if self.pin is not None:
            _compare_target(self.pin, _identity(st))

    def write(self, data: bytes) -> None:
        for _ in range(100):
            name = f".snnc-{secrets.token_hex(6)}.tmp"
            try:  # the mode 0o666 less the umask, as for any file a program creates
                fd = os.open(name, _NEW_FILE, 0o666, dir_fd=self.fd)
            except FileExistsError:
                continue
            break
        else:
            raise OSError(errno.EEXIST, "no free temporary file name")
        self.tmp = name
        if self.mode is not None:
            os.fchmod(fd, self.mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            self.identity = _identity(os.fstat(f.fileno()))

    def rename(self) -> None:
        os.replace(self.tmp, self.name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        self.tmp = None
        if self.pin is not None:
            self.pin.target = self.identity  # snnc's own file is the one to find next time

    def close(self) -> None:
        try:
            if self.tmp is not None:
                os.unlink(self.tmp, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)


def write_all_atomic(files: list[tuple[str, bytes]]) -> None:
    """Write several files so that either all are replaced or none is: each goes to a
    temporary file in its directory first, and the renames happen only once every write
    succeeded and every output still is where it was checked (pinned_outputs). A write that
    fails (a full disk, a file size limit) or is refused is a BadInputError; nothing is left
    behind."""
    scope = _SCOPE.get()
    targets: list[_Target] = []
    renamed, path = 0, ""
    try:
        for path, data in files:
            targets.append(_Target(path, scope))
            targets[-1].check()
            targets[-1].write(data)
        for target in targets:  # again, right before the renames
            target.check()
        mine = {id(t.pin) for t in targets}
        for pin in list(scope.pins.values()) if scope is not None else []:
            if id(pin) not in mine:
                _verify(pin)
        for target in targets:
            path = target.path
            target.rename()
            renamed += 1
            if scope is not None:
                scope.written.append(path)
    except BadInputError as error:
        raise BadInputError(f"{error}. {_not_written([p for p, _ in files], scope)}") from None
    except OSError as error:
        written = f"; {renamed} of {len(files)} outputs were replaced" if renamed else \
            "; nothing was written"
        raise BadInputError(f"cannot write {path}: {error.strerror or error}{written}") \
            from None
    finally:
        for target in targets:
            target.close()


def _not_written(names: list[str], scope: _Scope | None) -> str:
    """The end of a refused write's message: what was not written, and what was before."""
    earlier = scope.written if scope is not None else []
    if not earlier:
        return "Nothing was written; check the paths and run snnc again"
    return (f"Not written: {', '.join(names)} (snnc had written "
            f"{', '.join(dict.fromkeys(earlier))} before); check the paths and run snnc again")


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    write_all_atomic([(path, data)])


def make_directory(what: str, path: str) -> None:
    """Create the directory `path` (--dump-ir) if it is missing, in the parent check_paths
    checked; inside pinned_outputs, files written into it go there and nowhere else."""
    scope = _SCOPE.get()
    pin = scope.pins.get(_key(path)) if scope is not None else None
    parent, name = _split_dir(path)
    try:
        fd = os.open(parent, _DIRECTORY)
    except OSError as error:
        raise BadInputError(f"cannot create {what} {path}: {parent}: "
                            f"{error.strerror or error}") from None
    try:
        opened = os.fstat(fd)
        if pin is not None and (pin.directory_id != _identity(opened) or
                                _target_now(parent, follow=True) != _identity(opened)):
            raise BadInputError(_moved(what, path, parent))
        check_place(what, path, parent, opened.st_dev)
        created = False
        if name not in ("", ".", ".."):
            try:
                os.mkdir(name, 0o777, dir_fd=fd)
                created = True
            except FileExistsError:
                pass
        st = os.stat(name or ".", dir_fd=fd)
        if not stat.S_ISDIR(st.st_mode):
            raise BadInputError(f"{what} {path} exists and is not a directory")
        check_place(what, path, path, st.st_dev)
        if pin is not None:
            if not created:
                _compare_target(pin, _identity(st))
            pin.target = _identity(st)
    except BadInputError as error:
        raise BadInputError(f"{error}. {_not_written([path], scope)}") from None
    except OSError as error:
        raise BadInputError(f"cannot create {what} {path}: {error.strerror or error}") \
            from None
    finally:
        os.close(fd)
