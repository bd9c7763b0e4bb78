"""The `tvmopt` command's own process: stop signals end it at once in any phase, and TVM's
native log lines go to the log instead of the terminal.

Stop signals. Python raises KeyboardInterrupt only between bytecodes of the main thread: during
minutes of TVM's C++ compiling it waits, and a KeyboardInterrupt raised inside one of TVM's Python
callbacks comes back as a TVM error, or is lost. Here the signal only wakes a watcher thread
(`signal.set_wakeup_fd`, written by the C-level handler the moment the signal arrives; TVM's FFI
releases the GIL during calls), which removes the writes in progress, kills the child processes
and exits 130 (SIGINT) or 143 (SIGTERM). A command that stops cleanly by itself (`tune`) installs
its own handlers meanwhile; the watcher then leaves the signal to them.

Native logs. TVM's C++ logging writes warnings to file descriptor 2 ("Detected pow(x, y) where
y >= 3", "Fast mode segfaults ..."): not the user's business, so fd 2 becomes a pipe read into
the log ("tvmopt.native", shown with -v), and Python's own stderr keeps the terminal.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import sys
import threading

from .. import outputs

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
native_log = logging.getLogger("tvmopt.native")


def _stop_now(signum, frame) -> None:
    """The Python-level handler while no command handles stop signals itself: nothing to do in
    the main thread; the watcher thread has seen the signal and exits the process."""


def exit_on_stop_signals() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop_now)
    threading.Thread(target=_watch, args=(read_fd,), name="tvmopt-signals", daemon=True).start()


def _watch(read_fd: int) -> None:
    while True:
        for signum in os.read(read_fd, 64):
            if signal.getsignal(signum) is _stop_now:
                _exit(signum)


def _exit(signum: int) -> None:
    words = "Interrupted" if signum == signal.SIGINT else "Terminated"
    try:
        sys.stderr.write(f"{words}: nothing was written\n")
        sys.stderr.flush()
    except OSError:
        pass
    outputs.discard_partials()
    kill_children()
    os._exit(128 + signum)  # the shell's code for "ended by this signal"


def kill_children() -> None:
    """SIGKILL every descendant (TVM's workers ignore SIGINT; nvcc and the linker may not have
    seen the signal when it was sent to this process only)."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass


def capture_native_stderr() -> None:
    """File descriptor 2 (TVM's C++ logs, and child processes' stderr) into the log; Python's
    sys.stderr stays on the terminal."""
    terminal = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    # Unbuffered bytes underneath: a signal handler that logs (tune's stop message) while the
    # main thread is inside a write would find a BufferedWriter's lock taken ("reentrant call").
    sys.stderr = io.TextIOWrapper(io.FileIO(terminal, "w"), encoding=sys.stderr.encoding or "utf-8",
                                  errors="backslashreplace", line_buffering=True,
                                  write_through=True)
    threading.Thread(target=_forward, args=(read_fd,), name="tvmopt-native-log",
                     daemon=True).start()


def _forward(read_fd: int) -> None:
    with open(read_fd, "rb") as pipe:
        for line in pipe:
            text = line.decode(errors="replace").rstrip()
            if text:
                native_log.debug("%s", text)


def run(command) -> None:
    """Run the CLI with both in place (TVMOPT_DEBUG=1 leaves stderr alone, for tracebacks of
    crashes in native code)."""
    if not os.environ.get("TVMOPT_DEBUG"):
        capture_native_stderr()
    exit_on_stop_signals()
    command()
