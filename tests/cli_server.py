"""A fork server for the tests' ``echolab`` runs: one interpreter imports the CLI and its libraries once, then forks a
child per command; the child is a real, separate process that runs ``cli.main`` on the command's arguments, working
folder and environment, with its stdout / stderr in files, and exits with the command's exit code.

Why: every ``echolab`` subprocess spends ~8 s importing torch, Lightning, torchmetrics and friends before it does
anything; the suite runs ~40 of them. What a child shares with the server is only what the imports left in memory
(no torch thread pool or CUDA context exists yet: the server runs no tensor code, and it refuses to fork once a thread
other than the main one is alive). DDP still starts its other ranks as fresh interpreters (Lightning's launcher runs
``sys.executable cli.py ...``), exactly as for a user. Set ``ECHOLAB_TEST_FORK_SERVER=0`` to start a fresh
interpreter per command instead.

Protocol (the test process <-> this server, one JSON object per line on its stdin / stdout):
``{"args": [...], "cwd": str, "env": {...}, "stdout": path, "stderr": path}`` -> ``{"returncode": int}``.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: imported once by the server: what an ``echolab`` command would import before doing any work
PRELOAD = ("cli", "echo_modules", "datamodules", "wandb", "lightning.pytorch.loggers", "tests.helpers")


def _own_temporary_directories(folders: list[tempfile.TemporaryDirectory]) -> None:
    """Give this child its own copy of each temporary folder a library made at import (W&B's media folder): the
    server's are shared by every child, and the first child to exit would delete them under the next ones."""
    for folder in folders:
        folder._finalizer.detach()  # never delete the server's folder from here
        folder.name = tempfile.mkdtemp(suffix=Path(folder.name).name[-16:])
        atexit.register(shutil.rmtree, folder.name, True)


def _child(request: dict, folders: list[tempfile.TemporaryDirectory]) -> int:
    """Run one command in this (forked) process and return its exit code, as ``python cli.py ARGS`` would."""
    _own_temporary_directories(folders)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                           (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):  # fmt: skip
        handle = os.open(path, mode, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own descriptors, open until it exits
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.argv = [str(ROOT / "cli.py"), *request["args"]]  # Lightning's DDP launcher re-runs sys.argv per rank
    import cli

    code = 0
    try:
        cli.main()
    except SystemExit as exit_:  # as the interpreter handles it: an int is the code, None 0, anything else printed, 1
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:  # what an uncaught exception does to ``python cli.py``: traceback, exit code 1
        import traceback

        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()  # W&B, logging and Lightning flush here, as at a normal interpreter exit
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def serve() -> None:
    """Answer requests on stdin until it closes."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    with warnings.catch_warnings():  # isinstance() on some lazy module attributes warns of their deprecation
        warnings.simplefilter("ignore")
        folders = [item for item in gc.get_objects() if isinstance(item, tempfile.TemporaryDirectory)]
    requests, replies = sys.stdin, os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray prints of the server must not reach the protocol pipe
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in requests:
        request = json.loads(line)
        if threading.active_count() > 1:  # forking a multi-threaded process can deadlock the child
            replies.write(json.dumps({"error": f"{threading.active_count()} threads alive; not forking"}) + "\n")
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request, folders)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")


if __name__ == "__main__":
    sys.path[0] = str(ROOT)  # as for `python cli.py`: the checkout, not tests/
    serve()
