import importlib.util
import sys
import textwrap

import pytest

from fib_assets.core.provenance.code_version import CodeVersionError, code_version_of

SOURCE = """
def volume(x):
    '''Doubles a volume.'''
    return x * {factor}


class Plan:
    def size(self):
        return {factor}
"""


def _module(tmp_path, name, text):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def modules(tmp_path):
    names = ["fib_cv_a", "fib_cv_b", "fib_cv_c"]
    a = _module(tmp_path, names[0], SOURCE.format(factor=2))
    b = _module(tmp_path, names[1], SOURCE.format(factor=3))
    c = _module(tmp_path, names[2], SOURCE.format(factor=2) + "   \n")  # trailing blanks only
    yield a, b, c
    for n in names:
        sys.modules.pop(n, None)


def test_changes_when_the_source_changes(modules):
    a, b, c = modules
    assert code_version_of(a.volume) != code_version_of(b.volume)
    assert code_version_of(a.Plan) != code_version_of(b.Plan)
    assert code_version_of(a) != code_version_of(b)
    # the same source text in another module is the same code
    assert code_version_of(a.volume) == code_version_of(c.volume)
    assert code_version_of(a) == code_version_of(c)  # trailing whitespace is not a change
    v = code_version_of(a.volume, a.Plan)
    assert len(v) == 12 and int(v, 16) >= 0
    assert v != code_version_of(a.Plan, a.volume)  # order is part of the identity


def test_changes_after_editing_and_reloading_a_module(tmp_path):
    mod = _module(tmp_path, "fib_cv_edit", SOURCE.format(factor=2))
    try:
        before = code_version_of(mod.volume)
        edited = SOURCE.format(factor=2).replace("x * 2", "x * 2 + 1")
        mod = _module(tmp_path, "fib_cv_edit", edited)  # the file is rewritten and re-imported
        assert code_version_of(mod.volume) != before
    finally:
        sys.modules.pop("fib_cv_edit", None)


def test_decorated_functions_are_unwrapped(modules):
    import functools

    a, _, _ = modules

    @functools.wraps(a.volume)
    def wrapper(x):
        return a.volume(x)

    assert code_version_of(wrapper) == code_version_of(a.volume)


def test_unreadable_source_is_a_clear_error():
    with pytest.raises(CodeVersionError, match="len"):
        code_version_of(len)
    with pytest.raises(CodeVersionError, match="at least one"):
        code_version_of()
