"""scripts/convert_inception_weights.py without torch: fake torch / pytorch_fid modules."""

import importlib.util
import pathlib
import sys
import types

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "convert_inception_weights.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("convert_inception_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _FakeTensor:
    def __init__(self, array):
        self.array = np.asarray(array)

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.array


@pytest.fixture
def fake_torch(monkeypatch):
    calls = []

    def load(path, map_location=None, weights_only=False):
        calls.append(dict(path=path, map_location=map_location, weights_only=weights_only))
        return {"fc.weight": _FakeTensor(np.ones((2, 3))),
                "Conv2d_1a_3x3.bn.num_batches_tracked": _FakeTensor(7)}

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=load))
    return calls


def test_broken_torchvision_only_skips_the_reference(tmp_path, monkeypatch, fake_torch, capsys):
    """A pytorch_fid whose import raises RuntimeError (torchvision 0.28 with torch 2.13: "operator
    torchvision::nms does not exist") warns and the weights are still written."""
    package = tmp_path / "fake_site" / "pytorch_fid"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "fake_site"))
    monkeypatch.delitem(sys.modules, "pytorch_fid", raising=False)
    output = tmp_path / "out.npz"
    _load_script().convert("weights.pth", str(output))
    assert fake_torch == [dict(path="weights.pth", map_location="cpu", weights_only=True)]
    with np.load(output) as written:
        assert written.files == ["fc.weight"]
        np.testing.assert_array_equal(written["fc.weight"], np.ones((2, 3), np.float32))
    assert "torchvision::nms" in capsys.readouterr().err


def test_missing_pytorch_fid_only_skips_the_reference(tmp_path, monkeypatch, fake_torch, capsys):
    monkeypatch.setitem(sys.modules, "pytorch_fid", None)  # makes the import raise ImportError
    output = tmp_path / "out.npz"
    arrays = _load_script().convert("weights.pth", str(output))
    assert output.exists() and set(arrays) == {"fc.weight"}
    assert "pytorch_fid unavailable" in capsys.readouterr().err
