"""mkdocs hook: the repository files the pages link to, in the site as well.

The pages under docs/ link to files of the repository the way GitHub resolves them, from
docs/ (``../configs/detection/README.md``, ``../tools/results/benchmark.png``). mkdocs
only knows the files under docs/, so ``--strict`` would call those links broken. This hook
adds the files of ``REPOSITORY_FILES`` to the site under ``repo/`` and points the pages'
``../`` links there; a link to any other file outside docs/ stays broken and fails the
build.
"""

import re
from pathlib import Path

from mkdocs.structure.files import File

# What the pages link to outside docs/: the configs' READMEs and the configs they link to,
# the benchmark's last results.
REPOSITORY_FILES = ('configs/**/README.md', 'configs/**/*.py', 'tools/results/*')
SITE_FOLDER = 'repo'
LINK_OUT_OF_DOCS = re.compile(r'\]\(\.\./')


def on_files(files, config):
    root = Path(config.config_file_path).parent
    for pattern in REPOSITORY_FILES:
        for path in sorted(root.glob(pattern)):
            src_uri = f'{SITE_FOLDER}/{path.relative_to(root).as_posix()}'
            files.append(File.generated(config, src_uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri.startswith(f'{SITE_FOLDER}/'):
        return markdown  # a repository file: its links are relative to its own folder
    return LINK_OUT_OF_DOCS.sub(f']({SITE_FOLDER}/', markdown)  # pages lie flat in docs/
