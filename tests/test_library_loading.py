"""Importing fastattn without a usable compiled library says what is wrong and what to do."""

import importlib.util

import pytest

import fastattn
from fastattn import _build_info, _library


def test_loaded_library_registers_the_ops():
    import torch

    assert hasattr(torch.ops.fastattn, "fixed_attention_forward")


def test_library_built_for_another_torch_is_refused(monkeypatch):
    monkeypatch.setattr(_build_info, "TORCH_VERSION", "1.13.1+cu117")
    with pytest.raises(ImportError, match=r"built for torch 1\.13\.1\+cu117.*is running") as error:
        _library.load()
    assert "pip install --no-build-isolation" in str(error.value)


def test_missing_library_says_how_to_build(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="compiled library .* is missing") as error:
        _library.load()
    assert "pip install --no-build-isolation" in str(error.value)


@pytest.mark.parametrize(
    "built, running, same",
    [("2.13.0+cpu", "2.13.0+cpu", True), ("2.13.0+cpu", "2.13.1+cpu", True),
     ("2.14.1+cu130", "2.14.1+cpu", False), ("2.11.0+cu130", "2.13.0+cu130", False)],
)
def test_torch_release_compares_what_the_abi_depends_on(built, running, same):
    assert (_library._torch_release(built) == _library._torch_release(running)) is same


def test_build_info_describes_the_build():
    assert fastattn.built_with_cuda in (True, False)
    assert _build_info.TORCH_VERSION
