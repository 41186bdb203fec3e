"""The watchdog between the service and the TorchServe it starts: TorchServe dies with the service.

    python -m saliency.torchserve.watchdog --parent PID [--cleanup PATH]... -- COMMAND...

TorchServe is three generations of processes: the `torchserve` launcher (Python) starts the JVM
(`org.pytorch.serve.ModelServer`), which starts one Python worker per model worker. A kill -9 of
the service runs none of its cleanup (no signal handler, atexit or finally), and a parent-death
signal set on the launcher would end the launcher alone: PR_SET_PDEATHSIG is per process and
cleared in a fork's child, so the JVM and its workers would carry on, holding the ports and the
key file. Hence this process, the service's direct child, which starts COMMAND (the launcher)
in its own process group, shared by everything the launcher starts:

- it asks the kernel for SIGUSR1 when the service dies (PR_SET_PDEATHSIG, set here after exec
  rather than in a preexec_fn: the service has gRPC threads, and Python documents preexec_fn as
  unsafe in a threaded process) and also polls getppid() every POLL_S (the signal is tied to
  the thread that forked this process, and it is lost if the service died before prctl ran);
- when the service is gone, it ends the whole group (SIGTERM, then SIGKILL after GRACE_S), and
  removes the --cleanup paths: the work dir with key_file.json. It is the only process left that
  knows them, and a key file left in /tmp is a live credential until TorchServe is gone and a
  stale one after, so it goes now rather than at some later start (a later start also sweeps
  work dirs whose service and watchdog are both gone: process.sweep_stale_workdirs);
- SIGTERM (the service's stop(), which signals the whole group) ends the group the same way
  and leaves the files to the service;
- when the launcher exits on its own, the rest of the group is ended and its exit code returned,
  so the service sees TorchServe gone (TorchServeProcess.alive()) when the launcher is.

The launcher gets a parent-death signal too (this process has one thread, so preexec_fn is safe
here): were the watchdog itself killed, the launcher would not outlive it.

Standard library only: it must start fast, and it imports nothing that could fail.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PARENT_DEATH_SIGNAL = signal.SIGUSR1  # only wakes the loop: getppid() decides
POLL_S = 0.2
GRACE_S = 10.0  # SIGTERM -> SIGKILL: the JVM's shutdown hook stops its workers within this


def _prctl(option: int, value: int) -> bool:
    """prctl(option, value) for the calling process; False where there is no prctl."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def set_parent_death_signal(sig: int) -> bool:
    return _prctl(PR_SET_PDEATHSIG, int(sig))


def reap() -> None:
    """Collect exited orphans of the group: as a subreaper this process inherits the JVM when
    the launcher dies first, and the workers when the JVM does (where PID 1 reaps nothing,
    they would stay zombies)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def group_members(pgid: int, exclude: int | None = None) -> list[int]:
    """Pids of the running (not zombie) processes of process group `pgid`, from /proc."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == exclude:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(name))
    return members


def end_group(child: subprocess.Popen | None, grace_s: float = GRACE_S) -> None:
    """SIGTERM every other process of this process group, SIGKILL those left after grace_s."""
    me, pgid = os.getpid(), os.getpgrp()
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in group_members(pgid, exclude=me):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if child is not None:
                child.poll()  # the launcher first, for its exit code
            reap()
            if not group_members(pgid, exclude=me):
                reap()  # those seen as zombies just now
                return
            time.sleep(0.05)


def remove(paths: Sequence[str]) -> None:
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saliency.torchserve.watchdog", description=__doc__.splitlines()[0])
    parser.add_argument("--parent", type=int, required=True, help="the service's pid")
    parser.add_argument("--cleanup", action="append", default=[], help="removed when the service dies")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the TorchServe launcher and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")

    stopping = False

    def on_stop(signum, frame):  # the service's stop(): SIGTERM to the group
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the service's to handle
    signal.signal(PARENT_DEATH_SIGNAL, lambda signum, frame: None)
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)  # lead a group of our own (the service starts us in a new session)
    set_parent_death_signal(PARENT_DEATH_SIGNAL)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)

    def orphaned() -> bool:
        return os.getppid() != args.parent

    if orphaned():  # the service died before the signal was armed
        remove(args.cleanup)
        return 1
    child = subprocess.Popen(command, preexec_fn=lambda: set_parent_death_signal(signal.SIGKILL))
    while True:
        try:
            code = child.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            if orphaned():
                print(f"saliency.torchserve.watchdog: the service (pid {args.parent}) is gone; stopping TorchServe",
                      file=sys.stderr, flush=True)
                end_group(child)
                remove(args.cleanup)
                return 1
            if stopping:
                end_group(child)
                return child.wait()
            continue
        end_group(None)  # the launcher exited: leave no JVM or worker behind it
        if orphaned():
            remove(args.cleanup)
        return code


if __name__ == "__main__":
    sys.exit(main())
