"""Every backend implements every operation of kernels/ops.py, with its signature, in its family's
module; the dispatch point exposes each as a plain function that forwards to the active backend.

The CUDA backend is inspected in a child Python with NUMBA_ENABLE_CUDASIM=1 (as tests/test_cuda.py
runs it): the simulator must be on before numba.cuda is imported.
"""

import importlib
import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from scratchvae import kernels
from scratchvae.kernels import ops
from tests.hang import HANG_S

ROOT = Path(__file__).resolve().parents[1]
# Public names a backend may have besides the ops: its name and (cuda) whether it can run here.
NOT_OPS = {"name", "available"}


def contract_problems(module_name):
    """What the backend `module_name` gets wrong against ops.OPS, one line each (empty: nothing)."""
    module = importlib.import_module(module_name)
    problems = []
    for op in ops.OPS:
        fn = getattr(module, op.name, None)
        if not callable(fn):
            problems.append(f"{module_name}: no {op.name}")
            continue
        params = inspect.signature(fn).parameters.values()
        names = tuple(p.name for p in params)
        defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        kinds = {p.kind for p in params}
        if names != op.params or defaults != op.defaults or kinds != {inspect.Parameter.POSITIONAL_OR_KEYWORD}:
            problems.append(f"{module_name}.{op.name}{inspect.signature(fn)}: declared "
                            f"({', '.join(op.outputs + op.inputs)})")
        home = fn.__module__
        if home != "scratchvae.kernels.reference" and home != f"{module_name}.{op.family}" \
                and module_name != "scratchvae.kernels.reference":
            problems.append(f"{module_name}.{op.name} lives in {home}, not in the {op.family} module")
    extra = {n for n, v in vars(module).items()
             if not n.startswith("_") and callable(v) and not isinstance(v, types.ModuleType)
             and not isinstance(v, type) and getattr(v, "__module__", "").startswith("scratchvae.kernels")}
    undeclared = extra - set(ops.BY_NAME) - NOT_OPS
    if undeclared:
        problems.append(f"{module_name}: public functions not declared in ops.py: {sorted(undeclared)}")
    if getattr(module, "name", None) not in kernels.available():
        problems.append(f"{module_name}: name {getattr(module, 'name', None)!r} is not a dispatch name")
    return problems


def test_declarations_are_well_formed():
    assert len(ops.BY_NAME) == len(ops.OPS), "an op declared twice"
    for op in ops.OPS:
        assert op.name.isidentifier() and op.math.strip(), op
        assert len(set(op.params)) == len(op.params), op
        assert op.outputs or op.family == "arrays", f"{op.name}: a kernel writes at least one output"
        optional = [p for p in op.params if p in op.defaults]
        assert list(op.params[len(op.params) - len(optional):]) == optional, f"{op.name}: defaults last"
    assert set(ops.FAMILIES) == {"arrays", "elementwise", "reductions", "batchnorm", "matmul", "convolution",
                                 "fused", "optimizer", "losses"}


@pytest.mark.parametrize("module_name", ["scratchvae.kernels.reference", "scratchvae.kernels.cpu"])
def test_host_backends_implement_every_op(module_name):
    assert contract_problems(module_name) == []


def test_cuda_backend_implements_every_op():
    """The same check on the CUDA backend, imported in a child under the simulator."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    code = ("import json, tests.test_kernel_contract as t; "
            "print(json.dumps(t.contract_problems('scratchvae.kernels.cuda')))")
    child = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=HANG_S, check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    assert json.loads(child.stdout.strip().splitlines()[-1]) == []


def test_dispatch_exposes_every_op_as_a_plain_function():
    assert not hasattr(kernels, "__getattr__"), "ops must be statically visible, not a module __getattr__"
    for op in ops.OPS:
        fn = getattr(kernels, op.name, None)
        assert inspect.isfunction(fn) and fn.__module__ == "scratchvae.kernels", op.name
        params = inspect.signature(fn).parameters.values()
        assert tuple(p.name for p in params) == op.params, op.name
        assert {p.name: p.default for p in params if p.default is not inspect.Parameter.empty} == op.defaults
        assert fn.__doc__ == op.math


def test_dispatch_forwards_each_op_to_the_active_backend(monkeypatch):
    """Each dispatch function calls the op of the same name on the active backend, arguments in order."""
    calls = []
    fake = types.ModuleType("fake_backend")
    for op in ops.OPS:
        setattr(fake, op.name, lambda *args, _name=op.name: calls.append((_name, args)) or _name)
    monkeypatch.setattr(kernels, "_active", fake)
    for op in ops.OPS:
        args = tuple(object() for _ in op.params)
        assert getattr(kernels, op.name)(*args) == op.name
        assert calls.pop() == (op.name, args)
        if op.defaults:  # the defaults travel too
            required = args[:len(op.params) - len(op.defaults)]
            getattr(kernels, op.name)(*required)
            assert calls.pop() == (op.name, required + tuple(op.defaults.values()))
