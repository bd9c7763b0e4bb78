"""Stage 6: load a tvmopt artifact and run it with numpy arrays, by ONNX input/output names."""

from __future__ import annotations

import json
import logging
import platform
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TvmoptError, first_line
from .frontend import TensorSpec

log = logging.getLogger(__name__)

MANIFEST_SECTION = ".tvmopt_manifest"
_ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 224: "amdgpu", 243: "riscv"}


def elf_sections(path: str | Path) -> tuple[str, dict[str, bytes]]:
    """(machine, {section name: contents}) of an ELF64 little-endian file; TvmoptError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise TvmoptError(f"{path}: no such file; pass a library built by `tvmopt build`")
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise TvmoptError(f"{path}: not a 64-bit ELF shared library; pass a library built by "
                          "`tvmopt build`")
    try:
        machine, = struct.unpack_from("<H", data, 18)
        shoff, = struct.unpack_from("<Q", data, 40)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)
        headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                   for i in range(shnum)]
        names_off, names_size = headers[shstrndx][4], headers[shstrndx][5]
        names = data[names_off:names_off + names_size]
        sections = {}
        for h in headers:
            name = names[h[0]:names.index(b"\0", h[0])].decode()
            sections[name] = data[h[4]:h[4] + h[5]] if h[1] != 8 else b""  # 8 = NOBITS
    except (struct.error, ValueError, IndexError):
        raise TvmoptError(f"{path}: a damaged ELF file; rebuild it with `tvmopt build`") from None
    return _ELF_MACHINES.get(machine, f"machine-{machine}"), sections


def read_manifest(path: str | Path) -> dict:
    """The manifest linked into a tvmopt artifact (works for any target's library)."""
    machine, sections = elf_sections(path)
    raw = sections.get(MANIFEST_SECTION)
    if raw is None:
        raise TvmoptError(f"{path}: not a tvmopt artifact (no manifest); build it with "
                          "`tvmopt build MODEL.onnx --target T -o OUT.so`")
    try:
        manifest = json.loads(raw.rstrip(b"\0").decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TvmoptError(f"{path}: the tvmopt manifest is damaged; rebuild the library") from None
    manifest["elf_machine"] = machine
    if manifest.get("family") == "rocm":
        manifest["amdgpu_code_objects"] = amdgpu_code_objects(path)
    return manifest


_EM_AMDGPU = 224
_AMDHSA_TARGET = re.compile(rb"amdgcn-amd-amdhsa-[a-z]*-(gfx[0-9a-f]+)")


def amdgpu_code_objects(path: str | Path) -> list[str]:
    """The gfx arch of every AMDGPU code object (an ELF inside the library's device blob).

    A ROCm artifact cannot be run without an AMD GPU; this is the check that it holds device code
    for the arch it claims.
    """
    data = Path(path).read_bytes()
    archs = []
    start = data.find(b"\x7fELF", 1)
    while start > 0:
        try:
            machine, = struct.unpack_from("<H", data, start + 18)
            shoff, = struct.unpack_from("<Q", data, start + 40)
            shentsize, shnum = struct.unpack_from("<HH", data, start + 58)
        except struct.error:
            break
        if machine == _EM_AMDGPU:
            end = start + shoff + shentsize * shnum
            # The code object's HSA metadata note names its target, e.g. amdgcn-amd-amdhsa--gfx90a.
            match = _AMDHSA_TARGET.search(data, start, end)
            archs.append(match.group(1).decode() if match else "unknown")
        start = data.find(b"\x7fELF", start + 4)
    return archs


def _host_machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def device_for(manifest: dict, path: Path):
    """The TVM device to run on, or a clear error when this machine cannot run the artifact."""
    import tvm

    key = manifest.get("target_key", "?")
    if manifest["elf_machine"] != _host_machine():
        raise TvmoptError(
            f"{path}: built for {key} ({manifest['elf_machine']}), this machine is "
            f"{_host_machine()}; run it on a matching machine (or with examples/cpp_deploy under "
            f"qemu-{manifest['elf_machine']})"
        )
    kind = manifest["target"]["kind"]
    if kind == "cuda":
        if not tvm.cuda(0).exist:
            raise TvmoptError(f"{path}: built for {key} and needs an NVIDIA GPU; none was found")
        return tvm.cuda(0)
    if kind == "rocm":
        if not tvm.rocm(0).exist:
            raise TvmoptError(f"{path}: built for {key} and needs an AMD GPU with ROCm; none was "
                              "found (the apache-tvm wheel has no ROCm runtime: use a TVM built "
                              "with USE_ROCM)")
        return tvm.rocm(0)
    return tvm.cpu(0)


@dataclass
class Model:
    """A loaded artifact: call it with numpy arrays by input name, get a dict by output name."""

    path: Path
    manifest: dict
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    _vm: object
    device: object
    _lib: object  # the loaded library, kept for fresh VMs and for its kernels

    def __call__(self, inputs: dict[str, np.ndarray] | None = None, /, **kwargs) -> dict[str, np.ndarray]:
        import tvm

        given = {**(inputs or {}), **kwargs}
        args = [tvm.runtime.tensor(self._validate(spec, given), self.device) for spec in self.inputs]
        extra = set(given) - {s.name for s in self.inputs}
        if extra:
            raise TvmoptError(f"unknown input(s) {', '.join(sorted(extra))}; the model's inputs are: "
                              + ", ".join(s.name for s in self.inputs))
        result = self._vm["main"](*args)
        flat = flatten_outputs(result)
        return {spec.name: t.numpy() for spec, t in zip(self.outputs, flat)}

    def time(self, inputs: dict[str, np.ndarray], *, number: int = 10, repeat: int = 30,
             warmup: int = 3) -> list[float]:
        """Seconds per inference, one figure per repeat (each the mean of `number` runs).

        Timed on the device by TVM's time evaluator, inputs already on the device: this is
        compute time, without host<->device copies or Python overhead.
        """
        import tvm

        args = [tvm.runtime.tensor(self._validate(spec, inputs), self.device) for spec in self.inputs]
        self._vm.set_input("main", *args)
        for _ in range(warmup):
            self._vm.invoke_stateful("main")
        timer = self._vm.time_evaluator("invoke_stateful", self.device, number=number,
                                        repeat=repeat)
        return [float(x) for x in timer("main").results]

    def fresh_vm(self):
        """A second VM on the same library (e.g. to instrument without touching this one)."""
        from tvm import relax

        return relax.VirtualMachine(self._lib, self.device)

    def kernel_library(self):
        """The module holding the compiled kernels, callable one by one by name."""
        for module in self._lib.imports:
            return module
        raise TvmoptError(f"{self.path}: holds no kernel library; rebuild it with `tvmopt build`")

    def _validate(self, spec: TensorSpec, given: dict) -> np.ndarray:
        if spec.name not in given:
            raise TvmoptError(f"missing input {spec.name!r} ({_fmt(spec)}); the model's inputs are: "
                              + ", ".join(s.name for s in self.inputs))
        arr = np.asarray(given[spec.name])
        if tuple(arr.shape) != tuple(spec.shape):
            raise TvmoptError(f"input {spec.name!r} has shape {_shape(arr.shape)}, the model was "
                              f"built for {_shape(spec.shape)}; rebuild with --input-shape "
                              f"{spec.name}={_shape(arr.shape)} or reshape the data")
        if arr.dtype != np.dtype(spec.dtype):
            raise TvmoptError(f"input {spec.name!r} has dtype {arr.dtype}, the model expects "
                              f"{spec.dtype}; convert it (e.g. arr.astype('{spec.dtype}'))")
        return np.ascontiguousarray(arr)


def flatten_outputs(result):
    import tvm

    if isinstance(result, tvm.runtime.Tensor):
        return [result]
    out = []
    for item in result:
        out += flatten_outputs(item)
    return out


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def _fmt(spec: TensorSpec) -> str:
    return f"{_shape(spec.shape)} {spec.dtype}"


def load(path: str | Path) -> Model:
    """Load a library built by `tvmopt build`; checks it is one and that it can run here."""
    import tvm
    from tvm import relax

    path = Path(path)
    manifest = read_manifest(path)
    device = device_for(manifest, path)
    try:
        lib = tvm.runtime.load_module(str(path.resolve()))
        vm = relax.VirtualMachine(lib, device)
    except Exception as e:  # noqa: BLE001 - the loader reports through assorted exceptions
        raise TvmoptError(f"{path}: cannot be loaded ({first_line(e)}); "
                          "rebuild it with this tvmopt version") from None
    return Model(
        path, manifest,
        [TensorSpec.from_dict(d) for d in manifest["inputs"]],
        [TensorSpec.from_dict(d) for d in manifest["outputs"]],
        vm, device, lib,
    )


def random_inputs(specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic test inputs: floats in [0, 1), integers in [0, 8), booleans."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            out[spec.name] = rng.random(spec.shape, dtype=np.float32).astype(dtype)
        elif dtype.kind in "iu":
            out[spec.name] = rng.integers(0, 8, size=spec.shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = rng.random(spec.shape) < 0.5
        else:
            raise TvmoptError(f"input {spec.name!r}: cannot make random data of dtype {dtype}")
    return out


def onnxruntime_outputs(model_path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference: ONNX Runtime on the CPU, same inputs, outputs by name."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise TvmoptError("--check needs ONNX Runtime: pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


@dataclass(frozen=True)
class Mismatch:
    output: str
    max_abs: float
    max_rel: float  # max |a - b| / max |b|: relative to the output's scale, robust to zeros


def compare(actual: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> list[Mismatch]:
    out = []
    for name, ref in reference.items():
        a = np.asarray(actual[name], dtype=np.float64)
        b = np.asarray(ref, dtype=np.float64)
        if a.shape != b.shape:
            raise TvmoptError(f"output {name!r}: shape {_shape(a.shape)} vs ONNX Runtime's "
                              f"{_shape(b.shape)}")
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        out.append(Mismatch(name, diff, diff / scale if scale > 0 else diff))
    return out
