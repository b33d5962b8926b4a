"""Zip files torch reads for snnc (torch.export archives, torch.save files), checked and
rebuilt before torch sees them.

torch.export.load trusts its input (its documentation: never load an untrusted file): it
unpickles parts of the archive, evaluates and exec's text from models/*.json, loads
AOTInductor shared libraries it finds and unpacks them to disk. torch.load's weights-only
unpickler builds only tensors and containers, but of any depth and size. So, unless the
user trusts the file, snnc reads it with Python's zipfile and accepts it only if:

- its members are exactly what torch writes, each once (letter case included), in one
  top folder; for an archive: models/<name>.json, data/weights/weight_<i> and their
  config, data/constants/tensor_<i> and their config, data/sample_inputs/<name>.pt, the
  version files; for a torch.save file: data.pkl, data/<i> and the version files. torch
  names the folder after the file it writes ('my-model.v2' for my-model.v2.pt, 'archive'
  for a file object), so it may have any name but a path trick: '', '.', '..' or one
  holding a backslash;
- it unpacks within snnc.files.limits (in all, and relative to its own size), and no
  member beyond MEMBER_RATIO_FLOOR unpacks more than limits.max_ratio() times its packed
  size (torch writes its members uncompressed);
- each weight and constant record is a plain tensor (no pickled tensor subclasses, custom or
  opaque objects) whose declared elements fit in its record's bytes, and some weight or
  constant uses it; each data/<i> of a torch.save file is a storage its pickle names, and
  every storage it names is there;
- every models/*.json passes program_json.check, and every pickle pickle_scan.check.

It then hands torch a new zip holding exactly the members it checked, in a folder named
ROOT, the sample inputs inside an archive rebuilt the same way (`check_export`,
`check_torch_save` return its bytes): torch's zip reader and Python's need not agree on
which bytes a damaged or crafted file holds, so torch never reads the original.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile

from snnc.errors import BadInputError
from snnc.files import limits, pickle_scan, program_json

MEMBER_RATIO_FLOOR = 16 << 20  # a member that unpacks to more obeys limits.max_ratio()
ROOT = "archive"  # the folder of the copy torch reads (torch.save's for a file object)
_ID = r"[A-Za-z_][A-Za-z0-9_]*"
# a member's name after its top folder
_EXPORT_MEMBER = re.compile(
    rf"archive_format|archive_version|byteorder|\.data/version"
    rf"|\.data/serialization_id|models/(?P<model>{_ID})\.json"
    rf"|data/weights/(?:weight_\d+|{_ID}_weights_config\.json)"
    rf"|data/constants/(?:tensor_\d+|{_ID}_constants_config\.json)"
    rf"|data/sample_inputs/{_ID}\.pt")
_SAVE_MEMBER = re.compile(
    r"data\.pkl|data/(?P<record>\d+)|version|byteorder|\.format_version"
    r"|\.storage_alignment|\.data/serialization_id|\.data/version")
_RECORD = {"weights": re.compile(r"weight_\d+"), "constants": re.compile(r"tensor_\d+")}
# torch._export.serde.schema.ScalarType -> bytes per element (unknown codes refused)
_ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 9: 4, 10: 8, 11: 16, 12: 1,
             13: 2, 14: 1, 15: 2, 16: 2, 17: 2, 18: 2, 19: 2}


def check_export(path: str) -> bytes:
    """The bytes of a clean copy of a torch.export archive that passes every check."""
    referenced: set[str] = set()
    nested: dict[str, bytes] = {}  # the sample inputs, rebuilt
    with _open(path) as archive:
        members = _members(path, archive, _EXPORT_MEMBER, "torch.export.save",
                           os.path.getsize(path))
        _require(path, members)
        for name in members:
            where = f"{path}: {name}"
            if name.endswith("_weights_config.json") or name.endswith("_constants_config.json"):
                kind = "weights" if name.endswith("_weights_config.json") else "constants"
                referenced |= _check_records(where, name, _json(archive, name, where), kind,
                                             members)
            elif "/models/" in name:
                program_json.check(_json(archive, name, where), where)
            elif "/data/sample_inputs/" in name:
                nested[name] = check_torch_save_bytes(archive.read(name), where)
        unused = [n for n in members if re.search(r"/(weight|tensor)_\d+$", n)
                  and n not in referenced]
        if unused:
            raise BadInputError(f"{path} holds the record {unused[0]}, which no weight or "
                                "constant uses; torch.export.save writes no such record")
        return _rebuild(archive, members, nested)


def check_torch_save(path: str, any_global: bool = False) -> bytes:
    """The bytes of a clean copy of a torch.save zip file that passes every check
    (`any_global`: the user trusts its pickle to name any global, pickle_scan)."""
    with _open(path) as archive:
        members = _members(path, archive, _SAVE_MEMBER, "torch.save", os.path.getsize(path))
        _check_save_pickle(path, archive, members, any_global)
        return _rebuild(archive, members)


def check_torch_save_bytes(data: bytes, where: str) -> bytes:
    """The bytes of a clean copy of a torch.save file held inside an archive (its sample
    inputs)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as error:
        raise BadInputError(f"{where} is not a torch.save file ({error})") from None
    with archive:
        members = _members(where, archive, _SAVE_MEMBER, "torch.save", len(data))
        _check_save_pickle(where, archive, members)
        return _rebuild(archive, members)


def _open(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise BadInputError(f"{path}: cannot read the zip archive ({error})") from None


def _members(path: str, archive: zipfile.ZipFile, pattern: re.Pattern, writer: str,
             packed: int) -> dict[str, int]:
    """{member: uncompressed size}, in archive order, every name one `writer` writes, the
    whole within snnc.files.limits for a zip of `packed` bytes."""
    limits.check_unpacked(path, sum(i.file_size for i in archive.infolist()), packed,
                          f"{writer} writes its members uncompressed")
    members: dict[str, int] = {}
    seen, roots, ratio = set(), set(), limits.max_ratio()
    for info in archive.infolist():
        root, slash, rest = info.filename.partition("/")
        if not slash or pattern.fullmatch(rest) is None:
            raise BadInputError(
                f"{path} holds {info.filename[:120]!r}, which {writer} does not write "
                "(native libraries, pickled objects and files outside the archive's folder "
                f"are refused: loading them could run code); write the file again with {writer}")
        if root in ("", ".", "..") or "\\" in root:
            raise BadInputError(
                f"{path} holds {info.filename[:120]!r}, a path outside the archive's folder "
                "(an absolute path, '.', '..' or a backslash), which could land anywhere once "
                f"unpacked. {writer} names the folder after the file it writes: write it "
                "again to a file whose name before the extension is not '.' or '..'")
        if info.filename.casefold() in seen:
            raise BadInputError(f"{path} holds {info.filename!r} twice (letter case aside); "
                                f"write the file again with {writer}")
        seen.add(info.filename.casefold())
        roots.add(root)
        members[info.filename] = info.file_size
        if info.file_size > MEMBER_RATIO_FLOOR and \
                info.file_size > ratio * max(info.compress_size, 1):
            raise BadInputError(f"{path}: {info.filename} unpacks {info.file_size:,} bytes from "
                                f"{info.compress_size:,}, more than {ratio:g} times (torch "
                                "writes its files uncompressed); refused as a zip bomb. If the "
                                "file is genuine, raise the limit with SNNC_MAX_RATIO")
    if len(roots) != 1:
        raise BadInputError(f"{path} has {len(roots)} top-level folders "
                            f"({', '.join(sorted(repr(r[:40]) for r in roots)[:3])}"
                            f"{', ...' if len(roots) > 3 else ''}); a file {writer} writes "
                            "has one")
    return members


def _require(path: str, members: dict[str, int]) -> None:
    """Every model of an archive comes with its sample inputs and weight/constant configs."""
    root = next(iter(members)).split("/", 1)[0]
    models = [m.group("model") for m in (_EXPORT_MEMBER.fullmatch(n.split("/", 1)[1])
                                         for n in members) if m.group("model")]
    needed = [f"{root}/archive_format"] + [
        f"{root}/{part.format(model)}" for model in models
        for part in ("data/sample_inputs/{}.pt", "data/weights/{}_weights_config.json",
                     "data/constants/{}_constants_config.json")]
    missing = [n for n in needed if n not in members] or ([] if models else
                                                          [f"{root}/models/<name>.json"])
    if missing:
        raise BadInputError(f"{path} is an incomplete torch.export archive: {missing[0]} is "
                            "missing; write it again with torch.export.save")


def _check_save_pickle(where: str, archive: zipfile.ZipFile, members: dict[str, int],
                       any_global: bool = False) -> None:
    pickles = [n for n in members if n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise BadInputError(f"{where} holds {len(pickles)} data.pkl; a torch.save file holds one")
    if members[pickles[0]] > pickle_scan.MAX_BYTES:
        raise BadInputError(f"{where}: its pickle is {members[pickles[0]] / 2**20:.0f} MiB; a "
                            f"model file's is far smaller (limit {pickle_scan.MAX_BYTES >> 20} "
                            "MiB)")
    named = pickle_scan.check(archive.read(pickles[0]), where, any_global)
    stored = {m.group("record"): n for n in members
              if (m := _SAVE_MEMBER.fullmatch(n.split("/", 1)[1])) and m.group("record")}
    unused = sorted(set(stored) - named, key=int)
    if unused:
        raise BadInputError(f"{where} holds {len(unused):,} record(s) its pickle never uses "
                            f"(first {stored[unused[0]]!r}); torch.save writes a record only "
                            "for a storage its pickle names: the file was altered")
    missing = sorted(named - set(stored))
    if missing:
        raise BadInputError(f"{where}: its pickle uses the record data/{missing[0][:20]}, "
                            "which the file lacks; the file is truncated or damaged")


def _json(archive: zipfile.ZipFile, name: str, where: str):
    if archive.getinfo(name).file_size > 64 << 20:
        raise BadInputError(f"{where} is over 64 MiB of JSON; torch.export.save writes far "
                            "less for any network snnc compiles")
    try:
        return json.loads(archive.read(name))
    except (ValueError, RecursionError) as error:
        raise BadInputError(f"{where} is not valid JSON ({str(error)[:120]})") from None


def _check_records(where: str, name: str, config, kind: str,
                   members: dict[str, int]) -> set[str]:
    """Every entry a plain tensor record whose declared elements fit in its member; the
    members the config refers to."""
    referenced = set()
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise BadInputError(f"{where} has no 'config' mapping")
    folder = name.rsplit("/", 1)[0]
    for fqn, entry in entries.items():
        here = f"{where}: {str(fqn)[:80]!r}"
        record = entry.get("path_name") if isinstance(entry, dict) else None
        if not isinstance(record, str) or not _RECORD[kind].fullmatch(record) \
                or entry.get("use_pickle") is not False:
            raise BadInputError(f"{here} is not stored as a plain tensor record (pickled "
                                "tensor subclasses and objects are refused: they could run "
                                "code)")
        member = f"{folder}/{record}"
        referenced.add(member)
        if member not in members:
            raise BadInputError(f"{here}: its record {record} is missing from the archive")
        need = _extent(entry.get("tensor_meta"), here)
        if need > members[member]:
            raise BadInputError(f"{here} declares {need:,} bytes but its record holds "
                                f"{members[member]:,}; the archive is damaged")
    return referenced


def _extent(meta, where: str) -> int:
    """Bytes a tensor record must hold: its elements, and the farthest one its strides
    reach (a zero stride cannot make 20 bytes into a 10 GB tensor)."""
    def ints(values):
        if not isinstance(values, list) or not all(
                isinstance(v, dict) and type(v.get("as_int")) is int
                and 0 <= v["as_int"] < 1 << 62 for v in values):
            raise BadInputError(f"{where} has symbolic or malformed sizes in its record")
        return [v["as_int"] for v in values]

    if not isinstance(meta, dict) or type(meta.get("dtype")) is not int \
            or meta["dtype"] not in _ITEMSIZE:
        raise BadInputError(f"{where} has no tensor metadata of a known dtype")
    if meta.get("device") != {"type": "cpu", "index": None} or meta.get("layout") != 7:
        raise BadInputError(f"{where} is not a dense CPU tensor (device "
                            f"{str(meta.get('device'))[:40]}, layout {str(meta.get('layout'))[:10]})")
    sizes, strides = ints(meta.get("sizes")), ints(meta.get("strides"))
    offset, = ints([meta.get("storage_offset")])
    if len(sizes) != len(strides) or len(sizes) > 16:
        raise BadInputError(f"{where} has {len(sizes)} sizes and {len(strides)} strides")
    if 0 in sizes:
        return 0
    numel = 1
    for size in sizes:
        numel *= size
    reach = offset + 1 + sum((s - 1) * t for s, t in zip(sizes, strides))
    return max(numel, reach) * _ITEMSIZE[meta["dtype"]]


def _rebuild(archive: zipfile.ZipFile, members: dict[str, int],
             replaced: dict[str, bytes] | None = None) -> bytes:
    """A new zip of exactly these members, in the folder ROOT, stored uncompressed, as
    Python's zipfile read them (or as `replaced` gives them)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as out:
        for name in members:
            copy = f"{ROOT}/{name.split('/', 1)[1]}"
            if replaced and name in replaced:
                out.writestr(copy, replaced[name])
                continue
            with archive.open(name) as source, out.open(copy, "w", force_zip64=True) as target:
                while chunk := source.read(1 << 24):
                    target.write(chunk)
    return buffer.getvalue()
