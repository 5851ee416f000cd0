"""Registry: names, duplicates, close matches, and discovery of user code."""

from __future__ import annotations

import sys
import textwrap
from typing import Literal

import pytest

from modalities import TextModality
from t2t import Problem
from t2t.errors import UserError
from t2t.registry import Registry, discover, import_usr_dir, problems, snake_case


def test_built_in_problems_are_registered():
    discover()
    for name in ("algorithmic_copy", "algorithmic_reverse", "algorithmic_sort",
                 "algorithmic_addition", "translate_deen_multi30k", "text_pairs"):
        assert name in problems
        assert problems.get(name).name == name


def test_register_forms_and_default_names():
    registry = Registry("problem", "t2t-problems")

    @registry.register
    class TranslateDEEN(Problem):
        pass

    @registry.register()
    class MyTask(Problem):
        pass

    @registry.register("custom")
    class Other(Problem):
        pass

    assert registry.names() == ["custom", "my_task", "translate_deen"]
    assert Other.name == "custom"
    assert snake_case("ImageToText2D") == "image_to_text2_d"


def test_duplicate_name_names_both_definitions():
    registry = Registry("problem", "t2t-problems")

    @registry.register("twice")
    class First(Problem):
        pass

    with pytest.raises(UserError) as error:
        @registry.register("twice")
        class Second(Problem):
            pass

    message = str(error.value)
    assert "'twice' is registered twice" in message
    assert "First" in message and "Second" in message and "test_registry.py:" in message


def test_unknown_name_lists_close_matches():
    discover()
    with pytest.raises(UserError) as error:
        problems.get("algorithmic_revers")
    assert "did you mean algorithmic_reverse" in str(error.value)
    assert "t2t-problems" in str(error.value)


def test_usr_dir_file_and_reimport(tmp_path):
    path = tmp_path / "my_usr_problems_file.py"
    path.write_text(textwrap.dedent('''
        from modalities import TextModality
        from t2t import Problem, register_problem

        @register_problem("usr_file_problem")
        class UsrFileProblem(Problem):
            """From a file."""
            inputs = targets = TextModality(vocab="byte")
            def generate_samples(self, split):
                yield {"inputs": "a", "targets": "b"}
    '''))
    import_usr_dir(path)
    import_usr_dir(path)  # importing the same file again is not a duplicate
    assert problems.get("usr_file_problem").description() == "From a file."
    del sys.modules["my_usr_problems_file"]
    import_usr_dir(path)  # nor is re-executing it (a notebook cell run twice)


def test_usr_dir_package_with_relative_import(tmp_path):
    package = tmp_path / "my_usr_package"
    package.mkdir()
    (package / "__init__.py").write_text("from . import tasks\n")
    (package / "tasks.py").write_text(textwrap.dedent('''
        from t2t import Problem, register_problem

        @register_problem("usr_package_problem")
        class UsrPackageProblem(Problem):
            pass
    '''))
    import_usr_dir(package)
    assert "usr_package_problem" in problems


@pytest.mark.parametrize("bad", ["missing.py", "not_python.txt", "plain_dir"])
def test_usr_dir_errors(tmp_path, bad):
    (tmp_path / "not_python.txt").write_text("x")
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(UserError, match="usr_dir"):
        import_usr_dir(tmp_path / bad)


def test_entry_point_plugin_is_discovered(tmp_path, monkeypatch):
    (tmp_path / "t2t_test_plugin.py").write_text(textwrap.dedent('''
        from t2t import Problem, register_problem

        @register_problem("plugin_problem")
        class PluginProblem(Problem):
            pass
    '''))
    dist = tmp_path / "t2t_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: t2t-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[t2t.problems]\nplugin = t2t_test_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    discover()
    assert "plugin_problem" in problems


class WithOptions(Problem):
    inputs = targets = TextModality(vocab="char")

    def __init__(self, *, size: int = 3, mode: Literal["a", "b"] = "a"):
        self.size = size


def test_problem_options_are_recorded_and_checked():
    assert WithOptions(size=5).options == {"size": 5, "mode": "a"}
    with pytest.raises(UserError, match=r"unknown option 'sise' for problem with_options; "
                                        r"did you mean size\?"):
        WithOptions(sise=5)
    with pytest.raises(UserError, match="mode='c' is not one of: a, b"):
        WithOptions(mode="c")
    with pytest.raises(TypeError, match="keyword"):
        WithOptions(5)


def test_each_instance_owns_its_modalities_and_keeps_joint_ones_joint(tmp_path):
    first, second = WithOptions(), WithOptions()
    assert first.inputs is first.targets  # one joint vocabulary...
    assert first.inputs is not second.inputs  # ...per instance
    assert first.inputs is not WithOptions.inputs
    first.inputs.fit(["xyz"], vocab_dir=tmp_path)
    assert second.inputs.needs_fit and WithOptions.inputs.needs_fit
