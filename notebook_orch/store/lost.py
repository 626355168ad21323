"""A store file lost under live runs (deleted, replaced, truncated, moved aside): noticed, said, written again.

Design note. SQLite keeps writing through its open file descriptor: a store file deleted
under a live run took every later commit with it, and one truncated went on "committing"
into a file that no longer held the earlier ones, while the run said `succeeded` with
`not_persisted={}` (16-30 of 30 outputs lost). So:

* before every write the store checks that its path still names the file it opened and
  that the file still starts with a SQLite header (`check`: one `stat` and a 16-byte read,
  against a commit every 10 ms at most);
* when it does not (deleted, replaced, truncated or overwritten), or when the file is moved
  aside as corrupt, every run still writing to it (live, or finished with writes left) is
  **written again** from its first event into the fresh file (`Recorder.rewrite`): its run
  row, every output (a `cached` one too: the row it came from is gone) and its events,
  replacing whatever part of it reached the fresh file (`Batch.reset`). A StoreWarning says
  what happened to the file and that the runs are written again. Runs that had finished
  writing are left out: deleting the store between runs is how one clears it;
* if writing again fails (the folder cannot be recreated, the disk is full), the run's end
  reports each output kept in memory only in `run.not_persisted`, as for any failed write.

A file cut in its middle (header intact) is caught by SQLite as corruption, moved aside, and
handled the same way. The old file (or what is left of it) is never deleted.
"""
from __future__ import annotations

import os
import warnings
import weakref
from pathlib import Path
from typing import Any

__all__ = ["check", "follow", "rewrite_all"]

_HEADER = b"SQLite format 3\x00"
_followers: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()


def follow(store: Any, recorder: Any) -> None:
    """`recorder` writes a run of this session into `store`: written again if the file is lost."""
    followers = _followers.get(store)
    if followers is None:
        followers = _followers[store] = weakref.WeakSet()
    followers.add(recorder)


def check(path: Path, ino: int | None) -> str | None:
    """Why the file at `path` is no longer the store file opened as inode `ino` (None: it still is)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "it was deleted"
    except OSError:
        return None                       # unreadable: SQLite's own error says more
    if ino is not None and st.st_ino != ino:
        return "it was replaced by another file"
    try:
        with open(path, "rb") as f:
            head = f.read(len(_HEADER))
    except OSError:
        return None
    if head != _HEADER:
        return "it was truncated" if len(head) < len(_HEADER) else "it was overwritten"
    return None


def rewrite_all(store: Any, why: str, *, warn: bool = True) -> None:
    """The file the runs of this session wrote to is gone: each of them is written again to the fresh one."""
    # runs that wrote to the lost file and are still writing: a run that had finished writing is left as the file
    # now is (deleting the store between runs is how one clears it), one that wrote nothing yet has nothing lost
    recorders = [r for r in list(_followers.get(store, ())) if r.written and not r.done()]
    for r in recorders:
        r.rewrite()
    if warn and recorders:
        n = len(recorders)
        said = f"the {n} run(s) writing to it are written again to a fresh store"
        warnings.warn(_warning(f"notebook_orch store {store.path}: {why} while this process was using it; {said}. "
                               f"Outputs that cannot be written are listed in run.not_persisted."), stacklevel=4)


def _warning(text: str) -> Warning:
    from .sqlite import StoreWarning
    return StoreWarning(text)
