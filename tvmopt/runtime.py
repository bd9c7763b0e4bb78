"""Stage 6: load a tvmopt artifact and run it with numpy arrays, by ONNX input/output names."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import manifest as artifact_manifest
from .errors import TvmoptError, first_line, onnxruntime_cause
from .formatting import byte_size
from .formatting import shape as _shape
from .frontend import TensorSpec
from .targets import host_arch

log = logging.getLogger(__name__)


def numpy_dtype(name: str) -> np.dtype:
    """NumPy's dtype for a tensor dtype name; bfloat16 is ml_dtypes' (a dependency of TVM)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def as_bfloat16(arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """.npz files store bfloat16 arrays as raw 2-byte values (dtype V2): read them back as such."""
    if spec.dtype == "bfloat16" and arr.dtype == np.dtype("V2"):
        return arr.view(numpy_dtype("bfloat16"))
    return arr


def device_for(manifest: dict, path: Path):
    """The TVM device to run on, or a clear error when this machine cannot run the artifact."""
    import tvm

    key = manifest.get("target_key", "?")
    if manifest["elf_machine"] != host_arch():
        raise TvmoptError(
            f"{path}: built for {key} ({manifest['elf_machine']}), this machine is "
            f"{host_arch()}; run it on a matching machine (or with examples/cpp_deploy under "
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
    vm: object  # the Relax VM, inputs set with set_input for timed runs
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
        result = self.vm["main"](*args)
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
        self.vm.set_input("main", *args)
        for _ in range(warmup):
            self.vm.invoke_stateful("main")
        timer = self.vm.time_evaluator("invoke_stateful", self.device, number=number,
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
        arr = as_bfloat16(np.asarray(given[spec.name]), spec)
        if tuple(arr.shape) != tuple(spec.shape):
            raise TvmoptError(f"input {spec.name!r} has shape {_shape(arr.shape)}, the model was "
                              f"built for {_shape(spec.shape)}; rebuild with --input-shape "
                              f"{spec.name}={_shape(arr.shape)} or reshape the data")
        if arr.dtype != numpy_dtype(spec.dtype):
            cast = ("arr.astype(ml_dtypes.bfloat16)" if spec.dtype == "bfloat16"
                    else f"arr.astype('{spec.dtype}')")
            raise TvmoptError(f"input {spec.name!r} has dtype {arr.dtype}, the model expects "
                              f"{spec.dtype}; convert it (e.g. {cast})")
        return np.ascontiguousarray(arr)


def flatten_outputs(result):
    import tvm

    if isinstance(result, tvm.runtime.Tensor):
        return [result]
    out = []
    for item in result:
        out += flatten_outputs(item)
    return out


def _fmt(spec: TensorSpec) -> str:
    return f"{_shape(spec.shape)} {spec.dtype}"


def load(path: str | Path, *, sha256: str | None = None) -> Model:
    """Load a library built by `tvmopt build`; checks it is one and that it can run here.

    Loading a library runs its code: load only artifacts you built, or pin the sha256 of the file
    you trust (`sha256`). The file is read once, into a private copy, and every check (the pin,
    the digest recorded at build time, the manifest) is made on the bytes that are then loaded:
    swapping the file at `path` meanwhile changes nothing."""
    from tvm import relax

    path = Path(path)
    with private_copy(path) as (copy, actual_sha256):
        manifest = artifact_manifest.read(copy, shown_as=path)
        if sha256 is not None:  # the file the user trusts: its own digest adds nothing
            if actual_sha256 != sha256.strip().lower():
                raise TvmoptError(f"{path}: sha256 is {actual_sha256}, not the pinned {sha256}; it "
                                  "is not the file you trust: do not load it")
        else:
            artifact_manifest.verify(copy, shown_as=path)
        device = device_for(manifest, path)
        try:
            import tvm

            lib = tvm.runtime.load_module(str(copy))
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


@contextlib.contextmanager
def private_copy(path: Path):
    """(copy, sha256): the file's bytes, read once through one open descriptor into a directory
    only this process can write. dlopen of the copy loads exactly the bytes that were checked (and
    a library rebuilt at the same path is loaded anew: dlopen would hand back the old mapping)."""
    # O_NONBLOCK: a pipe named like a library is refused, not waited on.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        artifact_manifest.check_regular(path)  # names what is wrong with the path
        raise TvmoptError(f"{path}: cannot be read ({e.strerror})") from None
    src = os.fdopen(fd, "rb")
    tmp = Path(tempfile.mkdtemp(prefix="tvmopt-load-"))
    try:  # the mapping outlives the file: the copy can go once it is loaded
        artifact_manifest.check_regular(path, os.fstat(fd))
        copy = tmp / (path.stem + ".so")
        h = hashlib.sha256()
        with open(copy, "xb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                dst.write(chunk)
        yield copy, h.hexdigest()
    finally:
        src.close()
        shutil.rmtree(tmp, ignore_errors=True)


def random_inputs(specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic test inputs: floats in [0, 1), integers in [0, 8), booleans."""
    _check_fits_in_memory(specs)
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        dtype = numpy_dtype(spec.dtype)
        if dtype.kind == "f" or spec.dtype == "bfloat16":
            out[spec.name] = rng.random(spec.shape, dtype=np.float32).astype(dtype)
        elif dtype.kind in "iu":
            out[spec.name] = rng.integers(0, 8, size=spec.shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = rng.random(spec.shape) < 0.5
        else:
            raise TvmoptError(f"input {spec.name!r}: cannot make random data of dtype {dtype}")
    return out


def _check_fits_in_memory(specs: list[TensorSpec]) -> None:
    """Refuse inputs bigger than the free memory before allocating them: past the free memory
    the kernel's OOM killer ends the process without a word."""
    import psutil

    sizes = {s.name: math.prod(s.shape) * numpy_dtype(s.dtype).itemsize for s in specs}
    free = psutil.virtual_memory().available
    if sum(sizes.values()) > free:
        spec = max(specs, key=lambda s: sizes[s.name])
        raise TvmoptError(f"input {spec.name!r} ({_fmt(spec)}) alone needs "
                          f"{byte_size(sizes[spec.name])}, and this machine has {byte_size(free)} "
                          f"free; rebuild with a smaller --input-shape {spec.name}=...")


def onnxruntime_outputs(model: str | Path | bytes,
                        inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference: ONNX Runtime on the CPU (a model file, or a serialized model), same inputs,
    outputs by name."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise TvmoptError("--check needs ONNX Runtime: pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                       providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        # ONNX Runtime's Python API takes bfloat16 only as an OrtValue of raw 16-bit words.
        feeds = {name: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                     arr.view(np.uint16), onnx.TensorProto.BFLOAT16)
                 if arr.dtype == numpy_dtype("bfloat16") else arr
                 for name, arr in inputs.items()}
        outputs = session.run(names, feeds)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        what = "the model" if isinstance(model, bytes) else model
        raise TvmoptError(f"--check: ONNX Runtime {ort.__version__} cannot run {what} "
                          f"({onnxruntime_cause(e)}); the build itself succeeded: drop --check, or "
                          "check against a newer onnxruntime") from None
    return dict(zip(names, outputs))


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
        if np.any(np.isnan(a) != np.isnan(b)) or np.any(np.isinf(a) != np.isinf(b)):
            out.append(Mismatch(name, math.inf, math.inf))  # NaN or inf where the other is not
            continue
        finite = np.isfinite(b)
        diff = float(np.max(np.abs(a[finite] - b[finite]))) if finite.any() else 0.0
        scale = float(np.max(np.abs(b[finite]))) if finite.any() else 0.0
        out.append(Mismatch(name, diff, diff / scale if scale > 0 else diff))
    return out
