"""The README as the front door, and the docs site's strict build (mkdocs.yml, docs/hooks.py).

`make docs` builds the site with --strict; these tests hold the settings that make a strict
build refuse a broken page, link, anchor, included file or API entry, on a copy of the docs
with one such fault planted."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

README_MAX_LINES = 250
# What a strict build reads: the site's settings and pages, the repository files the pages
# include or link to, and the package the API page documents.
SITE_SOURCES = ('mkdocs.yml', 'README.md', 'docs', 'configs', 'tools/results', 'mobileone_mm')


def _page_table(markdown: str, prefix: str) -> list:
    """The rows of the table of pages: (title, page, description)."""
    return [
        (title, page[len(prefix) :], about)
        for title, page, about in re.findall(
            rf'^\| \[([^\]]+)\]\(({re.escape(prefix)}[a-z0-9_]+\.md)\) \| (.+) \|$',
            markdown,
            flags=re.M,
        )
    ]


def test_readme_is_short_and_links_every_docs_page():
    readme = (REPO / 'README.md').read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    for command in ('make demo', 'make test'):
        assert re.search(rf'^{command} ', readme, flags=re.M), command
    pages = sorted(p.name for p in (REPO / 'docs').glob('*.md') if p.name != 'index.md')
    table = _page_table(readme, 'docs/')
    assert sorted(page for _, page, _ in table) == pages
    # the site's home page has the same table, its links relative to docs/
    assert _page_table((REPO / 'docs' / 'index.md').read_text(), '') == table


def _build(site: Path):
    # not -q: it silences the warnings that --strict counts, and the build passes
    return subprocess.run(
        [sys.executable, '-m', 'mkdocs', 'build', '--strict', '-d', str(site / 'site')],
        cwd=site,
        capture_output=True,
        text=True,
        env=dict(os.environ, NO_MKDOCS_2_WARNING='1'),
    )


@pytest.fixture(scope='module')
def docs_copy(tmp_path_factory):
    """What a strict build reads, copied: a fault planted there leaves the checkout alone."""
    root = tmp_path_factory.mktemp('docs_copy')
    for name in SITE_SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns('__pycache__'))
        else:
            shutil.copy2(source, root / name)
    return root


def test_docs_site_builds(docs_copy):
    result = _build(docs_copy)
    assert result.returncode == 0, result.stderr[-3000:]
    # the repository files the pages link to are in the site, where the links point
    speed = (docs_copy / 'site' / 'speed' / 'index.html').read_text()
    assert 'src="../repo/tools/results/benchmark.png"' in speed
    assert (docs_copy / 'site' / 'repo' / 'tools' / 'results' / 'benchmark.png').is_file()
    # the benchmark's last tables are included, not copied
    assert '<table>' in speed and 'fp32 bound / best peer' in speed


FAULTS = {
    'a page that does not exist': (
        'docs/deploy.md',
        '[its own page](int8.md)',
        '[its own page](int-8.md)',
        "contains a link 'int-8.md'",
    ),
    'an anchor that does not exist': (
        'docs/int8.md',
        '(speed.md#what-the-targets-say-honestly)',
        '(speed.md#what-the-targets-say)',
        "does not contain an anchor '#what-the-targets-say'",
    ),
    'a repository file that does not exist': (
        'docs/detection.md',
        '(../configs/detection/README.md)',
        '(../configs/detection.md)',
        "contains a link 'repo/configs/detection.md'",
    ),
    'an included file section that does not exist': (
        'docs/index.md',
        '"README.md:six"',
        '"README.md:seven"',
        "'seven' could not be located",
    ),
    'an API entry whose object is gone': (
        'docs/api.md',
        '::: mobileone_mm.MobileOne\n',
        '::: mobileone_mm.MobileTwo\n',
        "Could not collect 'mobileone_mm.MobileTwo'",
    ),
    'a page left out of the navigation': (
        'mkdocs.yml',
        '      - int8: int8.md\n',
        '',
        'not included in the "nav" configuration',
    ),
}


@pytest.mark.slow  # a build each (1-3 s)
@pytest.mark.parametrize('fault', FAULTS)
def test_strict_build_refuses(docs_copy, fault):
    path, good, bad, message = FAULTS[fault]
    file = docs_copy / path
    text = file.read_text()
    assert good in text, f'{path} no longer has {good!r}: update the planted fault'
    file.write_text(text.replace(good, bad, 1))
    try:
        result = _build(docs_copy)
    finally:
        file.write_text(text)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
