"""Stage 0: what to compile for. Presets are data (`targets/*.json`); this module reads them.

A preset file holds the TVM target dict (with its host), the C++ compiler that links the final
library (a cross compiler for other architectures) and a one-line description. Adding a target
means adding a file. Some presets are filled in at run time (`"detect"`): `host` names this
machine's CPU explicitly (LLVM's `mcpu=native` silently falls back to `generic` in the TVM wheel), and
the family names `cuda`, `rocm`, `x86` and `arm` pick the preset for the device present here, or the
preset named by their `"default"` when there is none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TvmoptError, first_line

log = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent
# Installed wheels carry the presets inside the package; a source checkout has them at the top.
_BUILTIN_DIRS = (_PACKAGE_DIR / "presets", _PACKAGE_DIR.parent / "targets")
_FAMILIES = ("x86", "arm", "cuda", "rocm")
_PRESET_FIELDS = {"description", "family", "target", "cc", "detect", "default", "env"}
_DETECTORS = ("host", *_FAMILIES)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    family: str
    target: dict
    cc: str = "g++"
    env: dict = field(default_factory=dict)
    source: str = ""

    def tvm_target(self):
        import tvm

        _check_llvm_cpu(self)
        try:
            return tvm.target.Target(self.target)
        except Exception as e:  # TVM validates attributes in C++ and raises assorted types
            raise TvmoptError(
                f"target {self.name!r} is not a valid TVM target ({first_line(e)}); "
                f"fix {self.source or 'the target JSON'}"
            ) from None

    @property
    def key(self) -> str:
        return target_key(self.target)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "family": self.family,
            "target": self.target,
            "cc": self.cc,
            "env": self.env,
            "key": self.key,
        }


def _check_llvm_cpu(preset: Preset) -> None:
    """LLVM replaces an mcpu it does not know by `generic` with only a log line: code without the
    CPU's vector units, under a key naming that CPU."""
    target = preset.target
    for t in (target, target.get("host") if isinstance(target.get("host"), dict) else None):
        if not t or t.get("kind") != "llvm" or not isinstance(t.get("mcpu"), str):
            continue
        from tvm.target import codegen

        triple = str(t.get("mtriple") or codegen.llvm_get_system_triple())
        if not codegen.llvm_is_valid_cpu(t["mcpu"], triple):
            raise TvmoptError(
                f"target {preset.name!r}: LLVM does not know the CPU {t['mcpu']!r} for {triple}; "
                f"fix {preset.source or 'the target JSON'} (`llc -mtriple={triple} -mcpu=help` "
                "lists the names)")


def target_key(target: dict) -> str:
    """A readable name for a target, e.g. cuda/sm_90a or llvm/x86_64/znver4."""
    kind = target.get("kind", "?")
    if kind == "llvm":
        arch = str(target.get("mtriple", "unknown")).split("-")[0]
        return f"llvm/{arch}/{target.get('mcpu', 'generic')}"
    if kind == "cuda":
        return f"cuda/{target.get('arch', 'unknown')}"
    if kind == "rocm":
        return f"rocm/{target.get('mcpu', 'unknown')}"
    return str(kind)


def preset_dirs() -> list[Path]:
    """Where presets are looked up: $TVMOPT_TARGETS_PATH (colon-separated) first, then built-ins."""
    extra = [Path(p) for p in os.environ.get("TVMOPT_TARGETS_PATH", "").split(os.pathsep) if p]
    return [d for d in (*extra, *_BUILTIN_DIRS) if d.is_dir()]


def _preset_files(*, builtin_only: bool = False) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for d in (_BUILTIN_DIRS if builtin_only else preset_dirs()):
        for f in sorted(d.glob("*.json")) if d.is_dir() else ():
            files.setdefault(f.stem, f)
    return files


def _is_builtin(path: Path) -> bool:
    return path.parent in _BUILTIN_DIRS


def _check_trusted(path: Path, *, sticky_dir_ok: bool = False) -> None:
    """A preset is code (its `cc` runs): one from outside tvmopt must be a file, in a directory,
    that only this user (or root) can write. A file named by its path may sit in a sticky
    directory such as /tmp, where others cannot replace it; a TVMOPT_TARGETS_PATH directory
    may not, since others could add presets to it."""
    for where in (path.parent, path):
        try:
            st = where.stat()
        except OSError as e:
            raise TvmoptError(f"target preset {path}: cannot be read ({e.strerror})") from None
        shared = st.st_mode & 0o022 and not (sticky_dir_ok and where == path.parent
                                             and st.st_mode & stat.S_ISVTX)
        if st.st_uid not in (os.getuid(), 0) or shared:
            who = ("owned by another user" if st.st_uid not in (os.getuid(), 0)
                   else "writable by other users")
            what = "the file" if where == path else f"its directory {where}"
            raise TvmoptError(
                f"target preset {path}: {what} is {who}, and a preset's compiler runs as you: "
                f"refused; keep presets in a directory only you can write (chmod go-w {where}, "
                "owned by you)")


def available() -> list[str]:
    return sorted(_preset_files())


def _read_preset(name: str, path: Path) -> Preset:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TvmoptError(f"target preset {path}: unreadable JSON ({e}); fix the file") from None
    if not isinstance(data, dict):
        raise TvmoptError(f"target preset {path}: must be a JSON object")
    unknown = set(data) - _PRESET_FIELDS
    if unknown:
        raise TvmoptError(
            f"target preset {path}: unknown field(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(_PRESET_FIELDS))}"
        )
    if not isinstance(data.get("description"), str):
        raise TvmoptError(f"target preset {path}: field 'description' must be a string")
    detect = data.get("detect")
    if detect is not None and detect not in _DETECTORS:
        raise TvmoptError(f"target preset {path}: 'detect' must be one of {', '.join(_DETECTORS)}")
    if detect in _FAMILIES:
        return _detect_family(name, path, detect, data.get("default"))
    if detect == "host":
        target = detect_host_target()
        family = _family_of(target)
    elif data.get("family") not in _FAMILIES:
        raise TvmoptError(
            f"target preset {path}: 'family' must be one of {', '.join(_FAMILIES)}"
        )
    elif isinstance(data.get("target"), dict) and "kind" in data["target"]:
        target, family = data["target"], data["family"]
    else:
        raise TvmoptError(
            f"target preset {path}: field 'target' must be a TVM target object with a 'kind'"
        )
    if not isinstance(data.get("cc", ""), str) or not isinstance(data.get("env", {}), dict):
        raise TvmoptError(f"target preset {path}: 'cc' must be a string and 'env' an object")
    return Preset(
        name=name,
        description=data["description"],
        family=family,
        target=target,
        cc=data.get("cc", "g++"),
        env=data.get("env", {}),
        source=str(path),
    )


def _family_of(target: dict) -> str:
    if target["kind"] in ("cuda", "rocm"):
        return target["kind"]
    return "arm" if str(target.get("mtriple", "")).startswith("aarch64") else "x86"


def _detect_family(alias: str, path: Path, family: str, default) -> Preset:
    """The preset of `family` matching this machine's device, else the preset named by `default`."""
    if not isinstance(default, str) or not default:
        raise TvmoptError(f"target preset {path}: a family preset needs a 'default' preset name")
    found = _local_device_preset(family)
    if found is not None:
        log.info("target %s: using %s (%s found on this machine)", alias, found.name, found.key)
        return found
    if default == alias or default == "host" or default in _FAMILIES:
        raise TvmoptError(f"target preset {path}: 'default' must name a concrete preset, such as "
                          f"{family}-...")
    preset = resolve(default)
    log.info("target %s: no %s device here, using the default %s", alias, family, preset.name)
    return preset


def _local_device_preset(family: str) -> Preset | None:
    if family in ("x86", "arm"):
        host = detect_host_target()
        return resolve("host") if _family_of(host) == family else None
    arch = local_cuda_arch() if family == "cuda" else local_rocm_arch()
    if arch is None:
        return None
    attr = "arch" if family == "cuda" else "mcpu"
    matches = []
    # A family name never resolves to a preset from TVMOPT_TARGETS_PATH: those are used by name.
    for name, path in _preset_files(builtin_only=True).items():
        try:
            data = json.loads(path.read_text())
            device_arch = str(data["target"][attr]) if data.get("family") == family else ""
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a broken preset file is reported when it is asked for by name
        # sm_90a is sm_90 plus arch-specific instructions: it is the preset for an sm_90 GPU.
        if device_arch == arch or (family == "cuda" and device_arch == arch + "a"):
            matches.append((device_arch != arch, name, path))  # an exact arch first
    if matches:
        _, name, path = min(matches)
        return _read_preset(name, path)
    # No preset for this GPU's arch (older or newer than all of them): TVM fills in the rest.
    host = {"kind": "llvm", "mtriple": detect_host_target()["mtriple"]}
    return Preset(f"{family}-{arch}", f"this machine's {arch}", family,
                  {"kind": family, attr: arch, "host": host}, source="detected")


def local_cuda_arch() -> str | None:
    """`sm_XY` of GPU 0, or None without a GPU (or without the CUDA driver)."""
    import tvm

    dev = tvm.cuda(0)
    if not dev.exist:
        return None
    return "sm_" + dev.compute_version.replace(".", "")


def local_rocm_arch() -> str | None:
    """gfx name of the first AMD GPU from the kernel driver's topology (the TVM wheel has no ROCm runtime)."""
    for props in sorted(Path("/sys/class/kfd/kfd/topology/nodes").glob("*/properties")):
        for line in props.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "gfx_target_version" and value.strip() not in ("", "0"):
                version = int(value)
                major, minor, step = version // 10000, version // 100 % 100, version % 100
                return f"gfx{major}{minor}{step:x}"
    return None


def host_arch() -> str:
    """This machine's architecture as ELF and LLVM triples name it: x86_64, aarch64."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def host_cpu_name() -> str:
    """The CPU's model name as the vendor reports it (for provenance and reports)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def detect_host_target() -> dict:
    """This machine's CPU as an explicit LLVM target (never `native`)."""
    from tvm.target import codegen

    arch = host_arch()
    target = {"kind": "llvm", "mtriple": f"{arch}-linux-gnu", "mcpu": codegen.llvm_get_system_cpu()}
    if arch == "aarch64":
        target["mattr"] = ["+neon"]
    return target


def resolve(spec: str) -> Preset:
    """A preset name, a path to a preset file, or an inline TVM target JSON object."""
    spec = spec.strip()
    if spec.startswith("{"):
        try:
            target = json.loads(spec)
        except json.JSONDecodeError as e:
            raise TvmoptError(f"--target: invalid JSON ({e}); pass a preset name or a target "
                              'object such as {"kind": "llvm", "mcpu": "skylake-avx512"}') from None
        if not isinstance(target, dict) or "kind" not in target:
            raise TvmoptError('--target JSON must be an object with a "kind"')
        family = _family_of(target)
        # Linked by the compiler of the code's architecture: a cross compiler for another one.
        cross = (family == "arm" and host_arch() != "aarch64")
        preset = Preset("custom", "target given as JSON", family, target,
                        cc="aarch64-linux-gnu-g++" if cross else "g++", source="--target")
        preset.tvm_target()  # validate now, with a clear error
        return preset
    if spec.endswith(".json") and Path(spec).is_file():
        _check_trusted(Path(spec).absolute(), sticky_dir_ok=True)
        return _read_preset(Path(spec).stem, Path(spec))
    # Family names pick this machine's device among the built-in presets only.
    files = _preset_files(builtin_only=spec in _FAMILIES)
    if spec not in files:
        raise TvmoptError(
            f"unknown target {spec!r}; known presets: {', '.join(sorted(_preset_files()))} "
            "(or pass a TVM target JSON object)"
        )
    if not _is_builtin(files[spec]):  # presets are code: their `cc` runs
        _check_trusted(files[spec])
        if spec in _preset_files(builtin_only=True):
            log.warning("target %s: using %s from TVMOPT_TARGETS_PATH instead of the built-in "
                        "preset", spec, files[spec])
        else:
            log.info("target %s: preset %s from TVMOPT_TARGETS_PATH", spec, files[spec])
    return _read_preset(spec, files[spec])


def load_all() -> list[Preset]:
    return [resolve(name) for name in available()]


def listing() -> list[dict]:
    """Every preset as name/family/target/description, without running device detection."""
    rows = []
    for name, path in sorted(_preset_files().items()):
        try:
            data = json.loads(path.read_text())
            if data.get("detect") in _FAMILIES:
                family, key = data["detect"], f"detected, else {data.get('default')}"
            elif data.get("detect") == "host":
                target = detect_host_target()
                family, key = _family_of(target), target_key(target)
            else:
                family, key = data["family"], target_key(data["target"])
            description = data["description"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            family, key, description = "?", "?", f"unreadable preset {path} ({first_line(e)})"
        rows.append({"name": name, "family": family, "target": key,
                     "description": description, "file": str(path)})
    return rows
