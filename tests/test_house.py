"""The package's house rules: importing it only registers; the stack fixes are opt-in; the
imports point one way; a non-editable install works from outside the checkout."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / 'mobileone_mm'

# What each fix replaces, as 'module:attribute path'.
PATCHED = {
    'mobileone_mm.fixes.safe_loading': ['mmengine.runner.checkpoint:CheckpointLoader._schemes'],
    'mobileone_mm.fixes.durable_checkpoints': [
        'mmengine.fileio.backends:LocalBackend.put',
        'mmengine.fileio.backends:LocalBackend.put_text',
        'mmengine.hooks:CheckpointHook._save_checkpoint_with_step',
        'mmengine.hooks:CheckpointHook._save_best_checkpoint',
        'mmengine.runner.runner:find_latest_checkpoint',
    ],
    'mobileone_mm.fixes.cpu_distributed': [
        'mmengine.dist.utils:_init_dist_pytorch',
        'mmengine.model:MMDistributedDataParallel.__init__',
    ],
}

SNAPSHOT = """
import importlib, json, sys

def resolve(spec):
    module, path = spec.split(':')
    obj = importlib.import_module(module)
    for name in path.split('.'):
        obj = getattr(obj, name)
    # the scheme table is a dict: compare its loaders, not the dict object
    return dict(obj) if isinstance(obj, dict) else obj

patched = json.loads(sys.argv[1])
specs = [s for specs in patched.values() for s in specs]
before = {s: resolve(s) for s in specs}
import mobileone_mm
changed_by_package = [s for s in specs if resolve(s) != before[s]]
changed_by = {}
for fix, fix_specs in patched.items():
    ahead = {s: resolve(s) for s in specs}
    importlib.import_module(fix)
    changed_by[fix] = [s for s in specs if resolve(s) != ahead[s]]
print(json.dumps(dict(package=changed_by_package, fixes=changed_by)))
"""


def test_import_registers_only_and_each_fix_changes_what_it_names():
    """`import mobileone_mm` leaves every mmengine function it could patch the original
    object; importing a fix changes exactly the functions that fix names. Run without
    CUDA so that cpu_distributed applies (it does nothing where CUDA is available)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    out = subprocess.run(
        [sys.executable, '-c', SNAPSHOT, json.dumps(PATCHED)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result['package'] == []
    assert result['fixes'] == PATCHED


def test_import_registers_the_modules():
    out = subprocess.run(
        [
            sys.executable,
            '-c',
            'import mobileone_mm; from mmengine.registry import MODELS, HOOKS; '
            'print(MODELS.get("mobileone_mm.MobileOne").__name__, '
            'HOOKS.get("mobileone_mm.SaveDeployCheckpointHook").__name__)',
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert out.stdout.split() == ['MobileOne', 'SaveDeployCheckpointHook']


# ------------------------------------------------------------------------- imports
def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: Path, source: str = None) -> set:
    """The mobileone_mm modules a file imports (at any depth of the file: lazy imports
    inside functions count too), and any import of the command-line tools."""
    name = _module_name(path)
    package = name if path.name == '__init__.py' else name.rsplit('.', 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[: len(base) - node.level + 1]
                module = '.'.join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ''
            found.add(module)
            found.update(f'{module}.{a.name}' for a in node.names)
    modules = {_module_name(p) for p in PACKAGE.rglob('*.py')}
    return {m for m in found if m in modules and m != name} | {
        m for m in found if m.split('.')[0] == 'tools'
    }


def import_graph() -> dict:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob('*.py')}


def _cycle(graph: dict):
    state = {}

    def visit(node, stack):
        state[node] = 'open'
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = 'done'
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def _room(module: str) -> str:
    """A module's folder inside the package ('models', ...), else the module itself."""
    parts = module.split('.')
    if parts[0] == 'mobileone_mm' and len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return module


def test_no_import_circle_between_files_or_folders():
    graph = import_graph()
    assert _cycle(graph) is None, f'import circle: {" -> ".join(_cycle(graph))}'
    rooms = {}
    for module, imported in graph.items():
        if module == 'mobileone_mm':  # the package's face imports every room
            continue
        rooms.setdefault(_room(module), set()).update(
            _room(m) for m in imported if _room(m) != _room(module) and m != 'mobileone_mm'
        )
    assert _cycle(rooms) is None, f'folder circle: {" -> ".join(_cycle(rooms))}'


# The ground floor: the error classes every room raises and the machine checks (device,
# memory); they import nothing of the package, every room may import them.
GROUND = {'mobileone_mm.errors', 'mobileone_mm.machine'}
LAYERS = {  # a room may import only the rooms listed (and itself, and GROUND)
    'mobileone_mm.errors': set(),
    'mobileone_mm.machine': {'mobileone_mm.errors'},
    'mobileone_mm.registry': set(),
    'checkpoints': set(),
    'models': {'checkpoints', 'mobileone_mm.registry'},
    'loading': {'checkpoints', 'models'},
    'fusion': {'checkpoints', 'models', 'loading', 'mobileone_mm.registry'},
    'predict': {'checkpoints', 'models', 'loading', 'fusion'},
    'runtimes': {'checkpoints', 'models', 'loading', 'fusion', 'predict'},
    'fixes': {'checkpoints', 'models'},
    'training': {'mobileone_mm.registry'},
    # developer tooling (tiny data sets, analysis, the benchmark): may use every room, and
    # no other room imports it
    'devkit': {
        'mobileone_mm',
        'mobileone_mm.registry',
        'checkpoints',
        'models',
        'loading',
        'fusion',
        'predict',
        'runtimes',
        'training',
    },
}


def layer_violations(graph: dict) -> list:
    wrong = []
    for module, imported in graph.items():
        if module == 'mobileone_mm':  # the face: every room but the fixes
            wrong += [f'{module} -> {m}' for m in imported if _room(m) == 'fixes']
            continue
        room = _room(module)
        wrong += [
            f'{module} -> {m}'
            for m in imported
            if _room(m) != room and _room(m) not in LAYERS[room] | (GROUND - {module})
        ]
    return wrong


def test_imports_point_one_way():
    """checkpoints <- models <- loading <- fusion <- predict <- runtimes; fixes beside them;
    the devkit above all, imported by none of them; none imports the fixes (they are applied
    only where a config asks)."""
    assert layer_violations(import_graph()) == []


@pytest.mark.parametrize(
    'room, planted, expected',
    [
        ('models/arch.py', 'def f():\n    from ..runtimes import wrappers\n', 'runtimes'),
        ('fusion/output_check.py', 'from ..runtimes import onnxruntime\n', 'runtimes'),
        ('loading/config.py', 'from ..fusion import reparameterize\n', 'fusion'),
        ('checkpoints/io.py', 'from ..models import arch\n', 'models'),
        ('runtimes/wrappers.py', 'from ..devkit import analysis\n', 'devkit'),
        ('__init__.py', 'from .fixes import safe_loading\n', 'fixes'),
    ],
)
def test_the_checks_see_a_planted_import(room, planted, expected):
    """The checks above are not vacuous: a planted upward import, a runtime import of the
    tooling, or a fix applied on `import mobileone_mm` is found."""
    path = PACKAGE / room
    graph = import_graph()
    graph[_module_name(path)] = _imports(path, path.read_text() + '\n' + planted)
    assert any(expected in v for v in layer_violations(graph))


MAX_MODULE_LINES = 450  # issue 23: a module a newcomer can read in one sitting


def long_modules(root: Path = PACKAGE) -> dict:
    """{module path: lines} of the package's modules longer than MAX_MODULE_LINES."""
    counts = {
        p.relative_to(root).as_posix(): len(p.read_text().splitlines()) for p in root.rglob('*.py')
    }
    return {path: n for path, n in counts.items() if n > MAX_MODULE_LINES}


def test_no_module_above_450_lines(tmp_path):
    assert long_modules() == {}
    (tmp_path / 'long.py').write_text('x = 1\n' * (MAX_MODULE_LINES + 1))  # the check sees one
    assert long_modules(tmp_path) == {'long.py': MAX_MODULE_LINES + 1}


# ------------------------------------------------------------- installed, not editable
@pytest.mark.slow
def test_non_editable_install_builds_every_shipped_config(tmp_path):
    """`pip install .` (not editable) into a target folder; from outside the checkout the
    package imports from there, and every shipped config (passed by its path, as a user
    of the installed package does) builds its model."""
    target = tmp_path / 'site'
    subprocess.run(
        [
            sys.executable,
            '-m',
            'pip',
            'install',
            '--no-deps',
            '--no-build-isolation',
            '--disable-pip-version-check',
            '-q',
            '--target',
            str(target),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    configs = sorted(
        str(p)
        for task in ('detection', 'segmentation', 'classification')
        for p in (REPO / 'configs' / task).glob('*.py')
    )
    script = """
import sys, mobileone_mm
from mobileone_mm.loading.config import build_model, load_config
print('package', mobileone_mm.__file__)
for path in sys.argv[1:]:
    model, codebase = build_model(load_config(path))
    print('built', codebase, type(model).__name__, path)
"""
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run(
        [sys.executable, '-c', script, *configs],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f'package {target}')
    assert len([line for line in lines if line.startswith('built ')]) == len(configs)
