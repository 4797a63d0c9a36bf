"""One rule for every file a tool writes, and the first checks of every file it reads.

``plan_outputs`` runs before any work: an output is never an input of the same run, no
two outputs share a path, an output is not a folder or a device, and its folder exists or
can be created and takes a new file (tried, not guessed from permission bits: root, read-
only mounts and /proc all answer truthfully). ``atomic_files`` then writes several files
as one: all of them or none. ``check_input_file`` says what is wrong with a file to read
(missing, a folder, unreadable, empty) in one line naming it.
"""
import contextlib
import os
import socket
import tempfile
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

from ..errors import UserError
from .io import TEMP_MARK, atomic_file

PathLike = Union[str, os.PathLike]


class PathError(UserError, ValueError):
    """A file that cannot be read or written as asked; the message names it and the fix."""


def check_input_file(path: PathLike, what: str = 'file') -> str:
    """``path`` as a string when it is a readable, non-empty regular file, else PathError
    naming ``what``, the path and the problem."""
    path = os.fspath(path)
    if not path:
        raise PathError(f'The {what} path is empty: give a file name.')
    if not os.path.exists(path):
        broken = ' (a symbolic link to nothing)' if os.path.islink(path) else ''
        raise PathError(f'The {what} {path!r} does not exist{broken}: check the path.')
    if os.path.isdir(path):
        raise PathError(f'The {what} {path!r} is a folder, not a file: give the file in it.')
    if not os.path.isfile(path):
        raise PathError(f'The {what} {path!r} is not a regular file (a device, pipe or '
                        f'socket): give a file.')
    if not os.access(path, os.R_OK):
        raise PathError(f'The {what} {path!r} cannot be read (permission denied): fix its '
                        f'permissions or copy it somewhere readable.')
    if os.path.getsize(path) == 0:
        raise PathError(f'The {what} {path!r} is empty (0 bytes): an interrupted download '
                        f'or save? Fetch or write it again.')
    return path


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _first_existing_folder(path: str) -> str:
    """The deepest existing ancestor of ``path``'s folder (the folder itself if it exists)."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    return folder


def _check_folder(path: str, what: str):
    folder = _first_existing_folder(path)
    if not os.path.isdir(folder):
        raise PathError(f'Cannot write the {what} {path!r}: {folder!r} is a file, not a '
                        f'folder. Choose another output path.')
    try:  # a real write, cleaned up at once (named like atomic_file's temp files)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}'
                                     f'{TEMP_MARK}{socket.gethostname()}-{os.getpid()}-')
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise PathError(f'Cannot write the {what} {path!r}: the folder {folder!r} does not '
                        f'take new files ({reason}). Choose another output folder.') from None
    os.close(fd)
    os.unlink(probe)


def plan_outputs(inputs: Optional[Dict[str, Optional[PathLike]]] = None,
                 outputs: Optional[Dict[str, Optional[PathLike]]] = None) -> Dict[str, str]:
    """Check, before any work, that each output of a run can be written without harm.

    ``inputs`` and ``outputs`` map a description ('checkpoint', 'deploy config', ...) to a
    path; ``None`` paths are skipped (optional outputs, URLs are not files). PathError,
    naming both files where two are involved, when an output

    * is an input of the same run (the same file, through links too),
    * shares its path with another output,
    * is an existing folder, or a path ending in a separator, or not a regular file,
    * sits under a file, or in a folder that does not take new files.

    Missing folders are not created here (atomic_files / atomic_file create them when
    writing). Returns ``outputs`` with the paths as strings.
    """
    inputs = {k: os.fspath(v) for k, v in (inputs or {}).items()
              if v is not None and '://' not in os.fspath(v)}
    planned: Dict[str, str] = {}
    for what, path in (outputs or {}).items():
        if path is None:
            continue
        path = os.fspath(path)
        if not path:
            raise PathError(f'The {what} path is empty: give a file name.')
        if path.endswith(os.sep) or os.path.isdir(path):
            raise PathError(f'The {what} {path!r} is a folder: give a file name in it, e.g. '
                            f'{os.path.join(path, "NAME")!r}.')
        if os.path.lexists(path) and not os.path.isfile(path):
            raise PathError(f'The {what} {path!r} exists and is not a regular file (a '
                            f'device, pipe, socket or broken link): choose another name.')
        for input_what, input_path in inputs.items():
            if _same_file(path, input_path):
                raise PathError(f'Writing the {what} to {path!r} would overwrite the '
                                f'{input_what} {input_path!r}, an input of this run: '
                                f'choose another output name.')
        for other_what, other_path in planned.items():
            if _same_file(path, other_path):
                raise PathError(f'The {other_what} and the {what} would both be written to '
                                f'{path!r}: choose another name for one of them.')
        _check_folder(path, what)
        planned[what] = path
    return planned


@contextlib.contextmanager
def atomic_files(targets: Sequence[Tuple[PathLike, str]]) -> Iterator[list]:
    """Several files written as one: ``targets`` is a list of (path, mode); the body gets
    the open temp files in that order. All are renamed into place when the body and
    every flush succeed; any error before that removes every temp file, so either all
    files are new or none changed. Each file on its own is written as ``atomic_file``."""
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(atomic_file(path, mode)) for path, mode in targets]
        yield files
        for f in files:  # every file complete on disk before the first rename
            f.flush()
            os.fsync(f.fileno())


def check_extension(path: PathLike, allowed: Sequence[str], what: str) -> str:
    """``path`` when it ends in one of ``allowed`` (case-insensitive), else PathError."""
    path = os.fspath(path)
    if not path.lower().endswith(tuple(a.lower() for a in allowed)):
        ext = os.path.splitext(path)[1]
        found = f'extension {ext!r}' if ext else 'no extension'
        raise PathError(f'The {what} {path!r} has {found}: use {" or ".join(allowed)}.')
    return path
