"""The ONNX Runtime Mobile path: the ORT-format model (.ort) and the operator list a reduced
(minimal) ONNX Runtime build needs to run it (docs/mobile.md).

Both are made the way ONNX Runtime's own converter (onnxruntime.tools.
convert_onnx_models_to_ort, optimization style "Fixed") makes them: the graph is optimized
once, here, and saved; but without constant folding, which would store every quantized
layer's weights as float32 (to_ort). The ORT format
cannot hold int4 tensors (they convert but do not load), so the model must keep its
quantized weights in int8/int16 containers, and it must be self-contained: minimal builds
do not support external initializers.

ONNX Runtime writes one part of the ORT-format file, the kernel type string resolver, in the
iteration order of absl hash maps, which changes from process to process and even from one
map to the next within a process (absl salts its hashes with addresses), so the .ort bytes
differed between conversions. to_ort rewrites that part in sorted order (canonical_ort): the
same model always gives the same bytes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pathlib
import tempfile

import onnx

from snnc.errors import BadInputError, SnncError


def ort_paths(onnx_path: str) -> tuple[str, str]:
    """(model.ort, model.required_operators.config) next to model.onnx."""
    stem = os.path.splitext(onnx_path)[0]
    return stem + ".ort", stem + ".required_operators.config"


def check_convertible(model: onnx.ModelProto) -> None:
    """Refuse what the ORT format or a minimal build cannot carry."""
    for tensor in model.graph.initializer:
        if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            raise BadInputError(f"the ORT format cannot hold int4 tensors ({tensor.name}); "
                                "compile with --weight-container int8 for --ort")
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise BadInputError("minimal ONNX Runtime builds cannot load external weights; "
                                "--ort needs --weights embedded (the default)")


# What ONNX Runtime's converter disables for ARM targets (NCHWc is x86-only), plus constant
# folding: it would turn each layer's int8 weights and their Cast into a float32 constant in
# the file, four times the size. Kept, the Cast runs in the session (exact, like at load).
DISABLED_OPTIMIZERS = ["NchwcTransformer", "ConstantFolding"]


# The largest alignment anything in an ORT-format file needs: its widest scalar is 64-bit and
# its schema (onnxruntime/core/flatbuffers/schema/ort.fbs) has no force_align.
ORT_ALIGNMENT = 8


def _resolver_entries(session) -> list | None:
    """The kernel type string resolver of an fbs InferenceSession as sorted plain data:
    [(op id, [(kernel type string, [(arg type, index), ...]), ...]), ...], or None if absent.
    Both levels are maps (ONNX Runtime loads them into hash maps); the args keep their order."""
    resolver = session.KernelTypeStrResolver()
    if resolver is None:
        return None
    entries = []
    for i in range(resolver.OpKernelTypeStrArgsLength()):
        entry = resolver.OpKernelTypeStrArgs(i)
        strs = []
        for j in range(entry.KernelTypeStrArgsLength()):
            kts = entry.KernelTypeStrArgs(j)
            args = [(kts.Args(k).ArgType(), kts.Args(k).Index()) for k in range(kts.ArgsLength())]
            strs.append((kts.KernelTypeStr(), args))
        entries.append((entry.OpId(), sorted(strs, key=lambda item: item[0])))
    return sorted(entries, key=lambda item: item[0])


def canonical_ort(data: bytes) -> bytes:
    """The same ORT-format model with its kernel type string resolver written in sorted order.

    ONNX Runtime (InferenceSession::SaveToOrtFormat) builds the flatbuffer back to front: the
    version string, then the model, then the resolver, then the root InferenceSession table.
    The model is written deterministically; the resolver is written in the iteration order of
    two levels of absl hash maps (KernelTypeStrResolver::SaveToOrtFormat), which differs from
    one map to the next, so its tables and strings land in a different order on every
    conversion (the vectors that index them are sorted, so the content is the same).
    Flatbuffer offsets are relative and everything the model holds was built before the
    resolver, so the model and version string (the buffer's tail, from the model table or its
    vtable, whichever comes first) are kept byte for byte; the resolver and the root table are
    rebuilt in front of them in sorted order, with the tail at the same distance from the end
    of the buffer as before (flatbuffers align relative to the end), so every alignment is
    kept. Raises SnncError on a layout other than that."""
    import flatbuffers
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import \
        InferenceSession as SessionFbs

    session, model, tail, version_at, entries = _ort_layout(data)
    blob = data[tail:]
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Prep(1, len(blob))
    builder.Pad(len(blob))
    builder.Bytes[builder.Head():builder.Head() + len(blob)] = blob
    builder.Prep(ORT_ALIGNMENT, 0)

    def kept(position: int) -> int:  # builder offset (from the end) of an object in the tail
        return len(data) - position

    resolver = None if entries is None else _build_resolver(builder, entries)
    if version_at is not None:
        version = (kept(version_at) if version_at >= tail
                   else builder.CreateString(session.OrtVersion()))
    SessionFbs.InferenceSessionStart(builder)
    if resolver is not None:
        SessionFbs.InferenceSessionAddKernelTypeStrResolver(builder, resolver)
    SessionFbs.InferenceSessionAddModel(builder, kept(model))
    if version_at is not None:
        SessionFbs.InferenceSessionAddOrtVersion(builder, version)
    builder.Finish(SessionFbs.InferenceSessionEnd(builder), b"ORTM")
    out = bytes(builder.Output())

    # the same content: the tail unchanged and at the same distance from the end, the same
    # version string and resolver
    check = SessionFbs.InferenceSession.GetRootAs(out, 0)
    if (len(out) % ORT_ALIGNMENT or out[len(out) - len(blob):] != blob
            or len(out) - check.Model()._tab.Pos != kept(model)
            or check.OrtVersion() != session.OrtVersion()
            or _resolver_entries(check) != entries):
        raise _unexpected("the rewritten model does not read back the same")
    return out


def _unexpected(what: str) -> SnncError:
    return SnncError(f"cannot make the ORT-format model deterministic: {what} (this "
                     "onnxruntime writes a layout snnc does not know; docs/mobile.md)")


def _ort_layout(data: bytes):
    """(root session, model table position, start of the kept tail, version string position
    or None, sorted resolver entries or None) of an ORT-format buffer."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import \
        InferenceSession as SessionFbs

    if len(data) < 8 or data[4:8] != b"ORTM" or len(data) % 4:
        raise _unexpected("not an ORT-format buffer")
    session = SessionFbs.InferenceSession.GetRootAs(data, 0)
    table = session._tab
    vtable = table.Pos - int.from_bytes(data[table.Pos:table.Pos + 4], "little", signed=True)
    fields = (int.from_bytes(data[vtable:vtable + 2], "little") - 4) // 2
    present = {slot for slot in range(fields) if table.Offset(4 + 2 * slot)}
    # InferenceSession: ort_version (0), model (1), session_state (2, deprecated), resolver (3)
    if not present <= {0, 1, 3} or 1 not in present:
        raise _unexpected(f"InferenceSession fields {sorted(present)}")
    model = session.Model()._tab.Pos
    tail = min(model, model - int.from_bytes(data[model:model + 4], "little", signed=True))
    version_at = table.Indirect(table.Pos + table.Offset(4)) if 0 in present else None
    entries = _resolver_entries(session) if 3 in present else None
    return session, model, tail, version_at, entries


def _build_resolver(builder, entries: list) -> int:
    """Write the resolver's tables in the sorted order of `entries`; its offset."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import ArgTypeAndIndex as ArgFbs
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import \
        KernelTypeStrArgsEntry as KtsFbs
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import \
        KernelTypeStrResolver as ResolverFbs
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import \
        OpIdKernelTypeStrArgsEntry as OpFbs

    strings: dict[bytes, int] = {}

    def string(text: bytes) -> int:
        if text not in strings:
            strings[text] = builder.CreateString(text)
        return strings[text]

    def tables(offsets: list[int]) -> int:
        builder.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            builder.PrependUOffsetTRelative(offset)
        return builder.EndVector()

    ops = []
    for op_id, strs in entries:
        kts_offsets = []
        for kernel_type_str, args in strs:
            arg_offsets = []
            for arg_type, index in args:
                ArgFbs.ArgTypeAndIndexStart(builder)
                ArgFbs.ArgTypeAndIndexAddIndex(builder, index)
                ArgFbs.ArgTypeAndIndexAddArgType(builder, arg_type)
                arg_offsets.append(ArgFbs.ArgTypeAndIndexEnd(builder))
            args_vector = tables(arg_offsets)
            name = string(kernel_type_str)
            KtsFbs.KernelTypeStrArgsEntryStart(builder)
            KtsFbs.KernelTypeStrArgsEntryAddArgs(builder, args_vector)
            KtsFbs.KernelTypeStrArgsEntryAddKernelTypeStr(builder, name)
            kts_offsets.append(KtsFbs.KernelTypeStrArgsEntryEnd(builder))
        kts_vector = tables(kts_offsets)
        name = string(op_id)
        OpFbs.OpIdKernelTypeStrArgsEntryStart(builder)
        OpFbs.OpIdKernelTypeStrArgsEntryAddKernelTypeStrArgs(builder, kts_vector)
        OpFbs.OpIdKernelTypeStrArgsEntryAddOpId(builder, name)
        ops.append(OpFbs.OpIdKernelTypeStrArgsEntryEnd(builder))
    ops_vector = tables(ops)
    ResolverFbs.KernelTypeStrResolverStart(builder)
    ResolverFbs.KernelTypeStrResolverAddOpKernelTypeStrArgs(builder, ops_vector)
    return ResolverFbs.KernelTypeStrResolverEnd(builder)


def to_ort(model_bytes: bytes) -> tuple[bytes, str]:
    """(ORT-format model bytes, required operators config text) for a self-contained ONNX
    model: optimized once with ONNX Runtime's optimizers (level "all", as the converter's
    Fixed style) and saved in ORT format; the config comes from the converter's own tool."""
    import onnxruntime as ort
    from onnxruntime.tools.convert_onnx_models_to_ort import create_config_from_models

    with tempfile.TemporaryDirectory(prefix="snnc-ort-") as tmp:
        source = pathlib.Path(tmp, "model.onnx")
        source.write_bytes(model_bytes)
        ort_file = pathlib.Path(tmp, "model.ort")
        config = pathlib.Path(tmp, "model.required_operators.config")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(ort_file)
        options.add_session_config_entry("session.save_model_format", "ORT")
        log = io.StringIO()
        previous = logging.root.manager.disable
        logging.disable(max(previous, logging.INFO))  # the config tool logs each file
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"],
                                     disabled_optimizers=DISABLED_OPTIMIZERS)
                if ort_file.is_file():
                    ort_file.write_bytes(canonical_ort(ort_file.read_bytes()))
                create_config_from_models([ort_file], config, enable_type_reduction=False)
        except Exception as error:
            raise SnncError(f"converting to the ORT format failed: {error}\n"
                            f"{log.getvalue()[-800:]}") from None
        finally:
            logging.disable(previous)
        if not ort_file.is_file() or not config.is_file():
            raise SnncError("ONNX Runtime wrote no ORT-format model:\n"
                            f"{log.getvalue()[-800:]}")
        lines = [line for line in config.read_text().splitlines()
                 if not line.startswith("# - ")]  # drop the temporary path it names
        return ort_file.read_bytes(), "\n".join(lines) + "\n"
