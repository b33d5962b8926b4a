"""The samples on ARM64: ONNX Runtime's aarch64 wheel under qemu-user against x86-64.

    python runtime_tests/arm64_check.py [--dir /tmp/snnc-arm64] [--samples 16]

Not in the default suite (docs/testing.md): it installs Debian's qemu-user-static and
debootstrap (root, apt), unpacks a minimal arm64 Debian (python3.11, libstdc++) without
running anything in it (`debootstrap --foreign`, then the downloaded packages extracted),
and lets the host's pip unpack the pinned aarch64 wheels of onnxruntime and numpy
(.ci/constraints.txt) into it. ONNX Runtime reads /proc/cpuinfo at start and crashes on
the host's x86 one, so each run sees an ARM one, bind-mounted in a private mount namespace
(`unshare -m`, root).

Each sample's quantized model is compiled on the host (.onnx and .ort, integer kernels),
run by the host's ONNX Runtime on the first test samples, then by the aarch64 one under
qemu on three CPUs: cortex-a53 (ARMv8.0, no dot product), neoverse-n1 (UDOT/SDOT) and max
(with i8mm). It prints a table and exits 1 unless every output is bit-identical.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CPUS = {"cortex-a53": "no dot product", "neoverse-n1": "dot product", "max": "i8mm"}
CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd03
CPU revision\t: 4

"""
RUNNER = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
np.save(sys.argv[3], session.run(None, {session.get_inputs()[0].name: x})[0])
"""


def _pinned(name: str) -> str:
    for line in open(os.path.join(ROOT, ".ci", "constraints.txt")):
        if line.split("#")[0].strip().startswith(f"{name}=="):
            return line.split("#")[0].strip()
    raise SystemExit(f"{name} is not pinned in .ci/constraints.txt")


def setup(root: str) -> str:
    """The sysroot with python3.11, onnxruntime and numpy for aarch64 (cached in root)."""
    sysroot = os.path.join(root, "sysroot")
    if os.path.exists(os.path.join(sysroot, "opt", "py", "onnxruntime")):
        return sysroot
    if not shutil.which("qemu-aarch64-static") or not shutil.which("debootstrap"):
        subprocess.run(["apt-get", "install", "-y", "-q", "qemu-user-static", "debootstrap"],
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
                    "--include=python3.11,libstdc++6", "bookworm", sysroot,
                    "http://deb.debian.org/debian"], check=True, stdout=subprocess.DEVNULL)
    archives = os.path.join(sysroot, "var", "cache", "apt", "archives")
    for deb in sorted(os.listdir(archives)):
        if deb.endswith(".deb"):
            subprocess.run(["dpkg-deb", "-x", os.path.join(archives, deb), sysroot], check=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", "--platform", "manylinux_2_28_aarch64",
                           "--only-binary=:all:", "--python-version", "3.11", "--implementation",
                           "cp", "--target", os.path.join(sysroot, "opt", "py"),
                           _pinned("onnxruntime"), _pinned("numpy")], capture_output=True,
                          text=True)  # (pip also judges the host's packages: not ours)
    if done.returncode:
        raise SystemExit(f"pip could not unpack the aarch64 wheels:\n{done.stderr[-2000:]}")
    return sysroot


def run_arm(sysroot: str, cpu: str, model: str, x_path: str, out: str, cpuinfo: str) -> None:
    script = os.path.join(os.path.dirname(out), "runner.py")
    with open(script, "w") as f:
        f.write(RUNNER)
    inner = (f"mount --bind {cpuinfo} /proc/cpuinfo && PYTHONPATH=/opt/py "
             f"qemu-aarch64-static -cpu {cpu} -L {sysroot} {sysroot}/usr/bin/python3.11 "
             f"{script} {model} {x_path} {out}")
    subprocess.run(["unshare", "-m", "bash", "-c", inner], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "snnc-arm64"))
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    sysroot = setup(args.dir)
    cpuinfo = os.path.join(args.dir, "cpuinfo")
    with open(cpuinfo, "w") as f:
        f.write(CPUINFO)
    import onnxruntime as ort
    print("| sample | file | CPU | outputs | identical to x86-64 |\n| --- | --- | --- | --- | --- |")
    ok = True
    for sample in ("digits", "digits_events"):
        work = os.path.join(args.dir, sample)
        os.makedirs(work, exist_ok=True)
        model = os.path.join(work, "model.onnx")
        subprocess.run([sys.executable, "-m", "snnc", "compile",
                        os.path.join(ROOT, "samples", sample, "quantized.pt"), "-o", model,
                        "--ort", "-q"], check=True)
        x = np.load(os.path.join(ROOT, "samples", sample, "test.npz"))["x"][:args.samples]
        host = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        if isinstance(host.get_inputs()[0].shape[0], int):  # [T, N, ...]
            x = np.ascontiguousarray(np.moveaxis(x, 0, 1))
        x_path = os.path.join(work, "x.npy")
        np.save(x_path, x)
        want = host.run(None, {host.get_inputs()[0].name: x})[0]
        for path in (model, model[:-5] + ".ort"):
            for cpu, what in CPUS.items():
                out = os.path.join(work, f"{os.path.basename(path)}.{cpu}.npy")
                run_arm(sysroot, cpu, path, x_path, out, cpuinfo)
                got = np.load(out)
                same = got.shape == want.shape and np.array_equal(got, want)
                ok &= same
                print(f"| {sample} | {os.path.basename(path)} | {cpu} ({what}) | "
                      f"{list(got.shape)} | {'yes' if same else 'NO'} |", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
