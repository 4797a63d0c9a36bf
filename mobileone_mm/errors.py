"""One error boundary for every command-line tool.

A mistake a user can make (a missing or wrong file, a config that cannot be read, a device
this machine lacks, an input too large for its memory) is a ``UserError``: its message
names the problem and the fix. The package's error classes (CheckpointError, PathError,
DeployError, PredictError, ExportError, QuantizeError, ...) all derive from it, and keep
their ValueError / TypeError base for Python callers.

A tool's ``main`` is wrapped by ``run_tool``: a UserError ends the tool with one line,
``tool: message``, on stderr and exit code 2 (argparse's code for a bad command line);
any other exception is a bug and keeps its traceback. ``--debug`` (``tool_parser`` adds
it) prints the traceback of a UserError too, before the line. Ctrl-C (KeyboardInterrupt)
ends the tool with one line too, exit code 130. Importing this module
needs nothing outside the standard library.
"""

import argparse
import functools
import inspect
import os
import sys
import traceback
import warnings
from typing import Callable, Optional, Sequence

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


class UserError(Exception):
    """An expected mistake in a tool's input, with the problem and the fix."""

    exit_code = EXIT_USER_ERROR


class CheckFailed(UserError):
    """A check that ran and refused its candidate (an artefact that does not compute the
    model's outputs): a result, not an input mistake, so a tool ends with exit code 1 (and
    one line, as for a mistake); nothing was written."""

    exit_code = 1


def tool_parser(description: Optional[str]) -> argparse.ArgumentParser:
    """An ArgumentParser for a tool in tools/: ``description`` shown as written, and the
    ``--debug`` flag that ``run_tool`` reads."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        '--debug',
        action='store_true',
        help='on an input error, print the traceback too (not only the one-line message)',
    )
    return parser


def _debug_requested(argv: Optional[Sequence[str]]) -> bool:
    """Whether ``argv`` (sys.argv[1:] when None) has --debug, read as the tool's parser
    reads it (an unambiguous prefix such as --deb counts too)."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument('--debug', action='store_true')
    try:
        return peek.parse_known_args(sys.argv[1:] if argv is None else list(argv))[0].debug
    except SystemExit:  # e.g. --debug=1: the tool's own parser has already refused it
        return False


def one_line(error: BaseException) -> str:
    """The error's message on one line (line breaks of a quoted exception joined)."""
    return ' '.join(str(error).split()) or type(error).__name__


def run_tool(main: Callable) -> Callable:
    """Decorator of a tool's ``main(argv=None)``: the error boundary described above. The
    tool's name in the message is its file name (``tools/export_onnx.py``: export_onnx)."""
    name = os.path.splitext(os.path.basename(inspect.getsourcefile(main)))[0]

    @functools.wraps(main)
    def boundary(argv: Optional[Sequence[str]] = None):
        try:
            with warnings.catch_warnings():
                # mmengine imports pkg_resources, which setuptools 81 (the pinned stack,
                # docs/stack.md) deprecates: four lines meant for mmengine's authors
                # before every tool's first line of output, or its one-line error
                warnings.filterwarnings(
                    'ignore', message='pkg_resources is deprecated', category=UserWarning
                )
                return main(argv)
        except UserError as error:
            if _debug_requested(argv):
                traceback.print_exc()
            sys.stderr.flush()
            print(f'{name}: {one_line(error)}', file=sys.stderr, flush=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            if _debug_requested(argv):
                traceback.print_exc()
            sys.stderr.flush()
            print(
                f'{name}: interrupted; every output is written whole or not at all '
                f'(temporary files removed)',
                file=sys.stderr,
                flush=True,
            )
            sys.exit(EXIT_INTERRUPTED)

    return boundary
