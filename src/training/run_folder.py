"""One run per output folder: refuse to start over another run's checkpoints, and lock the folder.

A new run in a folder that holds another run's checkpoints would replace its best.pth and
last.pth: `claim_output_dir` refuses, naming the three ways on (--resume, another --output-dir,
--overwrite). With --overwrite the previous run's files are removed first, so no stale
checkpoint_epoch_N.pth of the old run is mistaken for the new one. A lock file (`.train.lock`,
holding the owner's PID and host) keeps two runs started at once from interleaving their files;
it is removed when the run ends, however it ends short of SIGKILL, and a lock left by a process
that no longer exists on this host is taken over with a message.
"""

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".train.lock"
# What train.py writes: the files of a previous run that --overwrite removes
CHECKPOINT_PATTERNS = ("last.pth", "best.pth", "checkpoint_epoch_*.pth")
OTHER_RUN_FILES = ("history.json", "training_curves.png", "val_predictions.png")


class RunFolderError(RuntimeError):
    """The output folder cannot be used for this run; the message says why and what to do."""


def previous_checkpoints(output_dir: Path) -> list:
    """Checkpoints of an earlier run in `output_dir`, sorted by name."""
    return sorted({p for pattern in CHECKPOINT_PATTERNS for p in Path(output_dir).glob(pattern) if p.is_file()})


@contextmanager
def claim_output_dir(output_dir, resume: bool = False, overwrite: bool = False, enabled: bool = True):
    """Lock `output_dir` for this run (released on exit), after checking it holds no other run.

    enabled=False (ranks other than 0 in a multi-GPU run) does nothing: only rank 0 writes files.
    """
    if not enabled:
        yield
        return
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"{output_dir}: output directory is not writable: {error.strerror or error}") from None
    lock = _acquire(output_dir / LOCK_NAME)
    try:
        _check_previous_run(output_dir, resume, overwrite)
        yield
    finally:
        _release(lock)


def _check_previous_run(output_dir: Path, resume: bool, overwrite: bool) -> None:
    found = previous_checkpoints(output_dir)
    if not found or resume:
        return
    if not overwrite:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        last = output_dir / "last.pth"
        raise RunFolderError(
            f"{output_dir} already holds a training run ({names}); to keep it safe, nothing was started: "
            f"continue it with --resume {last if last.exists() else found[-1]}, choose another --output-dir, "
            "or pass --overwrite to replace it"
        )
    removed = found + [output_dir / name for name in OTHER_RUN_FILES if (output_dir / name).is_file()]
    for path in removed:
        path.unlink()
    print(f"--overwrite: removed {len(removed)} file(s) of the previous run in {output_dir}")


def _owner(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}  # half-written or unreadable: treated as a lock of no live process


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _acquire(lock: Path) -> Path:
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):  # at most: create, or find a stale lock, remove it, create
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(lock)
            if owner.get("host", me["host"]) != me["host"]:
                raise RunFolderError(
                    f"{lock.parent}: locked by a training run on host {owner['host']} (PID {owner.get('pid')}); "
                    f"choose another --output-dir, or delete {lock} if that run is gone"
                ) from None
            if _alive(owner.get("pid")):
                raise RunFolderError(
                    f"{lock.parent}: another training run (PID {owner['pid']}) is writing here; "
                    "wait for it to end or choose another --output-dir"
                ) from None
            print(f"taking over the stale lock {lock}: PID {owner.get('pid', '?')} that held it is no longer running")
            lock.unlink(missing_ok=True)
            continue
        except OSError as error:
            raise RunFolderError(
                f"{lock.parent}: output directory is not writable: {error.strerror or error}"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return lock
    raise RunFolderError(f"{lock}: could not take the lock (another run keeps taking it); choose another --output-dir")


def _release(lock: Path) -> None:
    if _owner(lock).get("pid") == os.getpid():
        lock.unlink(missing_ok=True)


def check_writable(output_dir: Path) -> None:
    """Fail before training, not after the first epoch, when results could not be saved."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunFolderError(f"{output_dir}: output directory is not writable: {error.strerror or error}") from None
