"""Measuring candidates: builds in persistent worker processes, runs on the local device or on RPC
servers registered with a tracker."""

from __future__ import annotations

import json
import socket
import struct

from ..errors import TvmoptError
from ..processes import bind_tvm_workers
from ..targets import host_cpu_name
from .options import TuneOptions


def local_device_name(target) -> str:
    import tvm

    kind = target.kind.name
    if kind in ("cuda", "rocm"):
        dev = tvm.device(kind, 0)
        if not dev.exist:
            raise TvmoptError(f"tuning for {kind} measures on the device, and this machine has "
                              f"no {kind} GPU; run it there or use --rpc-tracker/--rpc-key")
        return dev.device_name
    return host_cpu_name()


def check_tracker(address: str, key: str, timeout_s: float = 5.0) -> dict:
    """Fail fast (well under 10 s) with a clear message when the tracker or its servers are missing."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TvmoptError(f"--rpc-tracker {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    start = (f"start it with `python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {port}` or "
             "fix --rpc-tracker")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    except OSError as e:
        raise TvmoptError(f"RPC tracker {address} is unreachable ({e.strerror or e}); "
                          f"{start}") from None
    try:
        with sock:
            summary = _tracker_summary(sock)
    except TimeoutError:
        raise TvmoptError(f"RPC tracker {address} accepted the connection but did not answer "
                          f"within {timeout_s:.0f} s (is it a TVM RPC tracker?); {start}") from None
    except (OSError, ValueError, RecursionError) as e:
        reason = (e.strerror if isinstance(e, OSError) else None) or str(e)
        raise TvmoptError(f"RPC tracker {address}: the server there is not a TVM RPC tracker "
                          f"({reason}); {start}") from None
    if _key_missing(summary, key):
        known = ", ".join(sorted(summary.get("queue_info", {}))) or "none"
        raise TvmoptError(f"no RPC server is registered under key {key!r} at {address} (keys: "
                          f"{known}); start one with `python -m tvm.exec.rpc_server --tracker "
                          f"{address} --key {key}`")
    return summary


def _tracker_summary(sock: socket.socket) -> dict:
    """The tracker's summary, as `tvm.rpc.connect_tracker(...).summary()` asks for it, but on a
    socket with a timeout and refusing what a tracker would not send (TVM's client waits forever
    on a silent server and raises a bare RuntimeError on another one)."""
    from tvm.rpc import base

    sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
    if struct.unpack("<i", _receive(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
        raise ValueError("it answered with something else")
    request = json.dumps([base.TrackerCode.SUMMARY]).encode()
    sock.sendall(struct.pack("<i", len(request)) + request)
    size = struct.unpack("<i", _receive(sock, 4))[0]
    if not 0 < size <= 1 << 24:
        raise ValueError(f"it announced a reply of {size} bytes")
    reply = json.loads(_receive(sock, size))
    if not (isinstance(reply, list) and len(reply) == 2 and reply[0] == base.TrackerCode.SUCCESS
            and isinstance(reply[1], dict) and isinstance(reply[1].get("queue_info", {}), dict)):
        raise ValueError("its summary is not a tracker's")
    return reply[1]


def _receive(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ValueError("it closed the connection")
        data += chunk
    return data


def _key_missing(summary: dict, key: str) -> bool:
    queue = summary.get("queue_info", {}).get(key)
    return not queue or int(queue.get("free", 0)) + int(queue.get("pending", 0)) == 0


def _evaluator_config(target):
    from tvm.s_tir import meta_schedule as ms

    # Enough repetitions for a stable median on short kernels, without MetaSchedule's 100 ms floor
    # per candidate that dominates CPU tuning time.
    return ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=10 if target.kind.name ==
                                     "llvm" else 20, enable_cpu_cache_flush=False)


class PersistentBuilder:
    """MetaSchedule's LocalBuilder, but its worker processes live across rounds.

    LocalBuilder starts a fresh process pool for every batch (against a slow leak in its
    workers), and each worker then imports TVM: measured here, 16 s per batch on 2 cores against
    0.2 s of actual compiling per candidate. This pool is reused and only recycled every
    `recycle_every` batches, which bounds the leak.
    """

    def __init__(self, max_workers: int, timeout_sec: float = 60.0, recycle_every: int = 25):
        self.max_workers = max_workers
        self.timeout_sec = timeout_sec
        self.recycle_every = recycle_every
        self._pool = None
        self._batches = 0

    def start(self) -> None:
        """Start the workers and their TVM import now, so it overlaps the first search."""
        from tvm.support.popen_pool import PopenPoolExecutor

        bind_tvm_workers()
        self.shutdown()
        self._pool = PopenPoolExecutor(max_workers=self.max_workers, timeout=self.timeout_sec,
                                       initializer=ignore_stop_signals)
        self._batches = 0
        self._warmup = [self._pool.submit(_import_builder) for _ in range(self.max_workers)]

    def _executor(self):
        if self._pool is None or self._batches >= self.recycle_every:
            self.start()
        self._batches += 1
        return self._pool

    def build(self, build_inputs) -> list:
        from tvm.s_tir.meta_schedule.builder import BuilderResult
        from tvm.s_tir.meta_schedule.builder.local_builder import _worker_func
        from tvm.support.popen_pool import StatusKind

        results = []
        jobs = [(build_cpu_candidate if b.target.kind.name == "llvm" else build_gpu_candidate,
                 None, b.mod, b.target, None) for b in build_inputs]
        for outcome in self._executor().map_with_error_catching(lambda x: _worker_func(*x), jobs):
            if outcome.status == StatusKind.COMPLETE:
                results.append(BuilderResult(outcome.value, None))
            elif outcome.status == StatusKind.TIMEOUT:
                results.append(BuilderResult(None, f"build timed out after {self.timeout_sec} s"))
            else:
                results.append(BuilderResult(None, f"build failed: {outcome.value}"))
        return results

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def ignore_stop_signals() -> None:
    """Runs first in every build and measurement worker: Ctrl-C and SIGTERM are for the tuner,
    which finishes the batch in flight (a worker still exits when the tuner's pipe closes)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _import_builder() -> None:
    """Runs in a build worker: the imports its first build would otherwise pay for."""
    import tvm.s_tir.meta_schedule.builder.local_builder  # noqa: F401
    import tvm.s_tir.transform  # noqa: F401


def build_cpu_candidate(mod, target, _params):
    """MetaSchedule's default_build without its `import tvm.s_tir.tensor_intrin`.

    That import registers every tensor intrinsic (CUDA's alone take 10 s) and costs 15 s in each
    fresh worker; a CPU candidate arrives already tensorized and does not need the registry.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def build_gpu_candidate(mod, target, params):
    """MetaSchedule's default_build, with the pass settings the final build uses."""
    import tvm
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build

    from ..toolchain import gpu_pass_config

    with tvm.transform.PassContext(config=gpu_pass_config(target)):
        return default_build(mod, target, params)


def make_runner(target, options: TuneOptions):
    from tvm.s_tir import meta_schedule as ms

    bind_tvm_workers()
    evaluator = _evaluator_config(target)
    if options.rpc_tracker:
        summary = check_tracker(options.rpc_tracker, options.rpc_key)
        host, _, port = options.rpc_tracker.rpartition(":")
        free = int(summary["queue_info"][options.rpc_key].get("free", 1)) or 1
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port),
                                     tracker_key=options.rpc_key, session_timeout_sec=60)
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                                   max_workers=free), f"rpc:{options.rpc_key}@{options.rpc_tracker}"
    return (ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=30,
                                  initializer=ignore_stop_signals), local_device_name(target))
