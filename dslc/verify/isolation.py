"""Isolation: the differential test runs in a forked child process, so that
the user's code it loads cannot end or crash dslc."""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from dslc.verify.differential import verify_in_process
from dslc.verify.loading import one_line
from dslc.verify.report import ClassResult, VerifyOptions, VerifyReport, VerifyUsageError


def verify_isolated(orig_src: str, new_src: str, *, path: str, rewritten_path: str,
                    options: VerifyOptions) -> VerifyReport:
    """`verify_in_process` in a forked child process, so that the code it
    loads cannot end or crash dslc, nor make it report what did not happen.

    1. Fork (the child shares the parent's imports, `sys.path` and rule
       packs); the child runs `verify_in_process`, sending over a pipe the
       classes it will compare, each class as it starts, each result as it
       ends, and the report.  It ends with `os._exit`: the parent's exit handlers never run
       in it.  It leads a process group of its own, killed when it is done,
       so that nothing the user's code started outlives the check; Ctrl-C in
       the parent kills it too.
    2. The parent collects the messages.  When the child ends without a
       report (the code it loaded called `os._exit`, a native crash, a
       signal) or runs past `options.timeout`: before any class, the report
       is a failure naming the stage (e.g. importing the rewritten file);
       during class X, X fails with that reason and the classes after it are
       compared in a fresh child.
    3. Without `os.fork` (or with `isolate=False`), `verify_in_process`
       runs in process.
    """
    if not options.isolate or not hasattr(os, "fork"):
        return verify_in_process(orig_src, new_src, path=path, rewritten_path=rewritten_path, options=options)
    try:  # imported once here, not again in every child (and not counted in --timeout)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch  # noqa: F401
    except ImportError:
        pass  # the child says so, as a usage error
    device = options.device
    done: list[ClassResult] = []
    pending: list[str] | None = None
    for _attempt in range(64):
        run_options = options if pending is None else replace(options, classes=tuple(pending))
        outcome = _run_child(orig_src, new_src, path, rewritten_path, run_options)
        if outcome.usage_error is not None:
            raise VerifyUsageError(outcome.usage_error)
        if outcome.report is not None:
            report = outcome.report
            if not done:
                return report
            return replace(report, results=tuple(done) + report.results)
        device = outcome.device or device
        names = outcome.classes if outcome.classes is not None else pending
        done.extend(outcome.results)
        if outcome.current is None or names is None:
            stage = outcome.stage or "starting"
            return VerifyReport(path, rewritten_path, device, tuple(done),
                                error=f"the verification process ended while {stage}: {outcome.why}",
                                allow_skip=options.allow_skip)
        done.append(ClassResult(outcome.current, "fail",
                                f"the verification process ended while comparing this class: {outcome.why}"))
        finished = {r.name for r in done}
        pending = [n for n in names if n not in finished]
        if not pending or outcome.timed_out:
            for n in pending:
                done.append(ClassResult(n, "skipped", f"not compared: {outcome.why} in class {outcome.current}"))
            return VerifyReport(path, rewritten_path, device, tuple(done), allow_skip=options.allow_skip)
    return VerifyReport(path, rewritten_path, device, tuple(done), error="the verification process kept failing",
                        allow_skip=options.allow_skip)


@dataclass
class _ChildOutcome:
    report: VerifyReport | None = None
    usage_error: str | None = None
    classes: list[str] | None = None
    results: list[ClassResult] = field(default_factory=list)
    current: str | None = None  # the class being compared when the child ended
    stage: str | None = None
    device: str | None = None
    why: str = ""
    timed_out: bool = False


def _send(fd: int, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    data = struct.pack("!Q", len(data)) + data
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _stop_group(pgid: int) -> None:
    """Kill what is left of the child's process group (processes the user's code started)."""
    try:
        if pgid != os.getpgid(0):
            os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _run_child(orig_src: str, new_src: str, path: str, rewritten_path: str,
               options: VerifyOptions) -> _ChildOutcome:
    """Fork a child that runs `verify_in_process`; collect what it sends."""
    for stream in (sys.stdout, sys.stderr):  # no buffered text may be written twice
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # the child
        _child_main(read_fd, write_fd, orig_src, new_src, path, rewritten_path, options)
    os.close(write_fd)
    return _Collector(pid, read_fd, options.timeout).run()


def _child_main(read_fd: int, write_fd: int, orig_src: str, new_src: str, path: str, rewritten_path: str,
                options: VerifyOptions) -> NoReturn:
    """The forked child: run the test, send what happens, end with `os._exit`."""
    status = 0
    try:
        os.close(read_fd)
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends it quietly; the parent reports
        except (ValueError, OSError):
            pass
        try:  # a group of its own: whatever the user's code starts is stopped with it
            os.setpgid(0, 0)
        except OSError:
            pass
        torch = sys.modules.get("torch")
        if torch is not None:  # the parent's OpenMP pool does not survive a fork: one thread here
            try:
                torch.set_num_threads(1)
            except Exception:  # noqa: BLE001
                pass

        def progress(kind: str, value: Any) -> None:
            _send(write_fd, (kind, value))

        try:
            report = verify_in_process(orig_src, new_src, path=path, rewritten_path=rewritten_path,
                                       options=options, progress=progress)
            _send(write_fd, ("report", report))
        except VerifyUsageError as exc:
            _send(write_fd, ("usage", str(exc)))
        except SystemExit as exc:
            _send(write_fd, ("died", f"the code it loaded called sys.exit({exc.code!r})"))
        except BaseException as exc:  # noqa: BLE001 - whatever the user's code raised
            _send(write_fd, ("died", f"{one_line(exc)} escaped"))
    except BaseException:  # noqa: BLE001 - not even a message could be sent
        status = 70
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(status)


class _Collector:
    """The parent's side: the child's messages, until it ends or runs past the timeout."""

    def __init__(self, pid: int, read_fd: int, timeout: float | None) -> None:
        self.pid = pid
        self.read_fd = read_fd
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.outcome = _ChildOutcome()
        self.buffer = b""
        self.died: str | None = None
        self.status: int | None = None  # the child's wait status, once it has ended

    def run(self) -> _ChildOutcome:
        try:
            while self.step():
                pass
        except BaseException:  # Ctrl-C (or anything else) in the parent: the child goes too
            if self.status is None:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    os.waitpid(self.pid, 0)
                except ChildProcessError:
                    pass
            _stop_group(self.pid)
            os.close(self.read_fd)
            raise
        os.close(self.read_fd)
        if self.status is None:
            _, self.status = os.waitpid(self.pid, 0)
        _stop_group(self.pid)
        outcome = self.outcome
        if outcome.report is None and outcome.usage_error is None:
            outcome.why = self.why()
        return outcome

    def step(self) -> bool:
        """Wait (at most 0.5 s) for what the child sends; False when no more is to come."""
        wait = 0.5 if self.deadline is None else max(0.0, min(0.5, self.deadline - time.monotonic()))
        if self.status is not None:
            wait = 0.0  # the child is gone: take what is left, then stop
        ready, _, _ = select.select([self.read_fd], [], [], wait)
        if not ready:
            if self.status is not None:
                return False  # a process the child started may hold the pipe open: no EOF to wait for
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.outcome.timed_out = True
                os.kill(self.pid, signal.SIGKILL)
                return False
            done_pid, done_status = os.waitpid(self.pid, os.WNOHANG)
            if done_pid:
                self.status = done_status
            return True
        chunk = os.read(self.read_fd, 1 << 16)
        if not chunk:
            return False
        self.buffer += chunk
        while len(self.buffer) >= 8:
            (size,) = struct.unpack("!Q", self.buffer[:8])
            if len(self.buffer) < 8 + size:
                break
            kind, value = pickle.loads(self.buffer[8:8 + size])
            self.buffer = self.buffer[8 + size:]
            self.message(kind, value)
        return True

    def message(self, kind: str, value: Any) -> None:
        outcome = self.outcome
        if kind == "report":
            outcome.report = value
        elif kind == "usage":
            outcome.usage_error = value
        elif kind == "died":
            self.died = value
        elif kind == "classes":
            outcome.classes = list(value)
        elif kind == "device":
            outcome.device = value
        elif kind == "stage":
            outcome.stage = value
        elif kind == "class":
            outcome.current = value
        elif kind == "result":
            outcome.results.append(value)
            outcome.current = None

    def why(self) -> str:
        """Why the child ended without a report."""
        status = self.status
        if self.outcome.timed_out:
            return f"timed out after {self.timeout:g} s"
        if self.died is not None:
            return self.died
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            if sig == signal.SIGINT:
                raise KeyboardInterrupt
            return f"the process was killed by signal {name} (a crash in native code, or the code it loaded)"
        return (f"the code it loaded ended the process with exit status {os.WEXITSTATUS(status)} "
                "(os._exit, or a crash) before a result was reported")
