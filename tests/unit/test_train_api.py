"""`berthing.train(...)` is callable however it is reached, even after its modules were imported (the package is the
attribute then), and importing it loads neither torch nor transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from berthing.train.run import TrainError


def test_berthing_train_is_callable_every_time(tmp_path) -> None:
    import berthing.train.data

    for _ in range(2):
        assert callable(berthing.train)
        with pytest.raises(TrainError, match="unknown task 'bogus' \\(berthing train does classify and ner\\)"):
            berthing.train("bogus", tmp_path / "x.tsv", tmp_path / "out")


def test_reaching_train_imports_no_torch() -> None:
    code = "import sys, berthing; berthing.train; print('torch' in sys.modules, 'transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stderr
