"""One rule for every file a tool writes, and the first checks of every file it reads.

The rules: a tool never replaces or deletes a file it did not write, and an output's
extension names its format; both are checked before any work, and a failed run leaves
nothing on disk.

``plan_outputs`` runs before any work: an output is never an input of the same run, no
two outputs share a path, an output is not a folder or a device, an existing output is
one our tools wrote (``written_here``: the mark its format carries, e.g. a checkpoint's
``meta['written_by']``, a config's first line, a runtime artefact's metadata; a file
written beside an artefact, such as an OpenVINO IR's .bin, is judged by the artefact),
and its folder exists or can be created and takes a new file (tried, not guessed from
permission bits: root, read-only mounts and /proc all answer truthfully).
``atomic_files`` then writes several files as one: all of them or none. ``written_files``
does the same for a folder of files (a data set): a manifest lists what the tool wrote,
and only that is ever deleted. ``check_input_file`` says what is wrong with a file to
read (missing, a folder, unreadable, empty) in one line naming it.
"""

import contextlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

from ..errors import UserError
from .io import TEMP_MARK, WRITTEN_BY, atomic_file
from .marks import FOLDER_FORMATS, MARK_READERS, _format_of, written_here

PathLike = Union[str, os.PathLike]


class PathError(UserError, ValueError):
    """A file that cannot be read or written as asked; the message names it and the fix."""


class DataSetExists(UserError, FileExistsError):
    """The output folder already holds a data set, and overwriting was not asked for."""


class ForeignFileError(PathError):
    """A file a tool would replace or delete but did not write (it carries no mark of
    ours): refused, naming the file and the fix."""


def check_replaceable(path: str, what: str):
    """ForeignFileError unless ``path`` is new or a file our tools wrote (``written_here``)."""
    if not os.path.lexists(path):
        return
    if not written_here(path):
        ext = _format_of(path)
        why = (
            'it carries no mark of our tools'
            if ext in MARK_READERS
            else f'files named {ext or "without an extension"} carry no mark of our tools'
        )
        raise ForeignFileError(
            f'The {what} {path!r} already exists and was not written by '
            f'this tool ({why}): it is not replaced. Choose another '
            f'name, or move that file away first.'
        )


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
        raise PathError(
            f'The {what} {path!r} is not a regular file (a device, pipe or socket): give a file.'
        )
    if not os.access(path, os.R_OK):
        raise PathError(
            f'The {what} {path!r} cannot be read (permission denied): fix its '
            f'permissions or copy it somewhere readable.'
        )
    if os.path.getsize(path) == 0:
        raise PathError(
            f'The {what} {path!r} is empty (0 bytes): an interrupted download '
            f'or save? Fetch or write it again.'
        )
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
        raise PathError(
            f'Cannot write the {what} {path!r}: {folder!r} is a file, not a '
            f'folder. Choose another output path.'
        )
    try:  # a real write, cleaned up at once (named like atomic_file's temp files)
        fd, probe = tempfile.mkstemp(
            dir=folder,
            prefix=f'.{os.path.basename(path)}{TEMP_MARK}{socket.gethostname()}-{os.getpid()}-',
        )
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise PathError(
            f'Cannot write the {what} {path!r}: the folder {folder!r} does not '
            f'take new files ({reason}). Choose another output folder.'
        ) from None
    os.close(fd)
    os.unlink(probe)


def plan_outputs(
    inputs: Optional[Dict[str, Optional[PathLike]]] = None,
    outputs: Optional[Dict[str, Optional[PathLike]]] = None,
    folders: Optional[Dict[str, Optional[PathLike]]] = None,
) -> Dict[str, str]:
    """Check, before any work, that each output of a run can be written without harm.

    ``inputs``, ``outputs`` and ``folders`` (output folders: a tool writes files in them)
    map a description ('checkpoint', 'deploy config', ...) to a path; ``None`` paths are
    skipped (optional outputs, URLs are not files). PathError, naming both files where
    two are involved, when an output folder is an existing file, or an output

    * is an input of the same run (the same file, through links too),
    * shares its path with another output,
    * is an existing folder (but one of a folder format, FOLDER_FORMATS: an .mlpackage,
      judged by its mark below), or a path ending in a separator, or not a regular file,
    * exists and was not written by our tools (``check_replaceable``: ForeignFileError;
      the mark its format carries, MARK_READERS),
    * sits under a file, or in a folder that does not take new files (tried last, after
      every other check: a refused run changes nothing, not even a folder's time).

    Missing folders are not created here (atomic_files / atomic_file create them when
    writing). Returns ``outputs`` with the paths as strings.
    """
    inputs = {
        k: os.fspath(v)
        for k, v in (inputs or {}).items()
        if v is not None and '://' not in os.fspath(v)
    }
    folders = {k: os.fspath(v) for k, v in (folders or {}).items() if v is not None}
    for what, path in folders.items():
        if not path:
            raise PathError(f'The {what} path is empty: give a folder name.')
        if os.path.lexists(path) and not os.path.isdir(path):
            raise PathError(
                f'The {what} {path!r} is a file, not a folder: give a folder '
                f'(a new name makes one).'
            )
    planned: Dict[str, str] = {}
    for what, path in (outputs or {}).items():
        if path is None:
            continue
        path = os.fspath(path)
        if not path:
            raise PathError(f'The {what} path is empty: give a file name.')
        folder_format = _format_of(path) in FOLDER_FORMATS
        if path.endswith(os.sep) or (os.path.isdir(path) and not folder_format):
            raise PathError(
                f'The {what} {path!r} is a folder: give a file name in it, e.g. '
                f'{os.path.join(path, "NAME")!r}.'
            )
        if (
            os.path.lexists(path)
            and not os.path.isfile(path)
            and not (folder_format and os.path.isdir(path))
        ):
            raise PathError(
                f'The {what} {path!r} exists and is not a regular file (a '
                f'device, pipe, socket or broken link): choose another name.'
            )
        for input_what, input_path in inputs.items():
            if _same_file(path, input_path):
                raise PathError(
                    f'Writing the {what} to {path!r} would overwrite the '
                    f'{input_what} {input_path!r}, an input of this run: '
                    f'choose another output name.'
                )
        for other_what, other_path in planned.items():
            if _same_file(path, other_path):
                raise PathError(
                    f'The {other_what} and the {what} would both be written to '
                    f'{path!r}: choose another name for one of them.'
                )
        check_replaceable(path, what)
        planned[what] = path
    for what, path in folders.items():
        _check_folder(os.path.join(path, 'NAME'), what)
    for what, path in planned.items():
        _check_folder(path, what)
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


class WrittenFiles:
    """The files and folders a tool creates under ``folder`` (paths relative to it), for
    its manifest: ``file(relative)`` makes the missing folders above it and returns where
    to write."""

    def __init__(self, folder: Path):
        self.folder, self.files, self.folders = folder, [], []

    def file(self, relative: str) -> Path:
        path = self.folder / relative
        missing = []
        parent = path.parent
        while parent != self.folder and not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for created in reversed(missing):
            created.mkdir()
            self.folders.append(created.relative_to(self.folder).as_posix())
        self.files.append(Path(relative).as_posix())
        return path

    def remove(self):
        """Delete what was created, files first, then the folders if they are empty."""
        for relative in self.files:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / relative).unlink()
        for relative in sorted(self.folders, key=len, reverse=True):
            with contextlib.suppress(OSError):  # not empty: files of someone else
                (self.folder / relative).rmdir()


def _files_under(path: Path) -> Iterator[Path]:
    if path.is_dir() and not path.is_symlink():
        for child in sorted(path.iterdir()):
            yield from _files_under(child)
    else:
        yield path


def _read_manifest(path: Path) -> WrittenFiles:
    """What a tool's last run in ``path``'s folder wrote (none when ``path`` is new);
    ForeignFileError when ``path`` exists and is not a manifest of ours."""
    own = WrittenFiles(path.parent)
    if not os.path.lexists(path):
        return own
    try:
        with open(path) as f:
            entries = json.load(f)
        ours = entries.get('written_by') == WRITTEN_BY
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise ForeignFileError(
            f'{str(path)!r} is where this tool lists the files it wrote, '
            f'but it was not written by this tool: it is not replaced. '
            f'Move it away, or choose another output folder.'
        )
    own.files, own.folders = list(entries['files']), list(entries['folders'])
    return own


@contextlib.contextmanager
def written_files(
    folder: PathLike, manifest: str, targets: Sequence[str], overwrite: bool = False
) -> Iterator[WrittenFiles]:
    """A set of files a tool writes under ``folder``, as its own: ``targets`` (files and
    folders, relative to ``folder``) are what it writes. When one exists: without
    ``overwrite`` FileExistsError; with it, every file under them must be listed in the
    manifest of the tool's last run (``folder/manifest``), else ForeignFileError naming
    the first that is not, and nothing is deleted; then the listed files and folders are
    deleted. The body writes through ``WrittenFiles.file``; the manifest is written last.
    A failure in the body deletes what it wrote: nothing is left of a failed run."""
    folder = Path(folder)
    listed = folder / manifest
    own = _read_manifest(listed)
    existing = [folder / t for t in targets if os.path.lexists(folder / t)]
    if existing and not overwrite:
        raise DataSetExists(
            f'{existing[0]} already exists: choose another output folder '
            f'or pass overwrite=True (--overwrite) to replace it.'
        )
    for path in (p for target in existing for p in _files_under(target)):
        if path.relative_to(folder).as_posix() not in own.files:
            raise ForeignFileError(
                f'{str(path)!r} was not written by this tool (it is not in '
                f'{str(listed)!r}, the list of what it wrote): --overwrite deletes only '
                f'those files. Move it away, or choose another output folder.'
            )
    plan_outputs(folders={'output folder': folder})
    if existing:  # the set's own files, all listed (checked above); a listed path elsewhere
        for target in existing:  # is never deleted
            for path in _files_under(target):
                path.unlink()
            if target.is_dir() and not target.is_symlink():
                for root, _, _ in os.walk(target, topdown=False):
                    os.rmdir(root)
        listed.unlink(missing_ok=True)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # nearest first
    folder.mkdir(parents=True, exist_ok=True)
    written = WrittenFiles(folder)
    try:
        yield written
        with atomic_file(folder / manifest, 'w') as f:
            json.dump(
                dict(written_by=WRITTEN_BY, files=written.files, folders=written.folders),
                f,
                indent=0,
            )
    except BaseException:
        written.remove()
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
