"""--device resolution: cpu always works, cuda is refused clearly without torch or a GPU."""

from __future__ import annotations

import sys
import types

import pytest

from lungvol import device as device_mod
from lungvol.device import describe_device, resolve_device
from lungvol.errors import InputError, LungvolError, MissingDependencyError


def _fake_torch(*, n_gpus: int, cuda_build: str | None = "12.4") -> types.ModuleType:
    torch = types.ModuleType("torch")
    torch.__version__ = "2.99.0"
    torch.version = types.SimpleNamespace(cuda=cuda_build)
    torch.cuda = types.SimpleNamespace(
        is_available=lambda: n_gpus > 0,
        device_count=lambda: n_gpus,
        get_device_name=lambda index: "Fake GPU 80GB",
    )
    return torch


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "_import_torch", lambda: None)


@pytest.mark.parametrize("requested", ["cpu", "CPU", " cpu "])
def test_cpu_is_always_cpu_without_importing_torch(
    requested: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom() -> None:
        raise AssertionError("cpu must not import torch")

    monkeypatch.setattr(device_mod, "_import_torch", boom)
    assert resolve_device(requested) == "cpu"


def test_auto_without_torch_is_cpu(no_torch: None) -> None:
    assert resolve_device("auto") == "cpu"


def test_auto_with_torch_but_no_gpu_is_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "_import_torch", lambda: _fake_torch(n_gpus=0))
    assert resolve_device("auto") == "cpu"


def test_auto_picks_cuda_when_torch_sees_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "_import_torch", lambda: _fake_torch(n_gpus=1))
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda") == "cuda"


def test_cuda_without_torch_is_missing_dependency_one_line(no_torch: None) -> None:
    with pytest.raises(MissingDependencyError) as info:
        resolve_device("cuda")
    message = str(info.value)
    assert "\n" not in message
    assert "torch" in message
    assert "--device cpu" in message


@pytest.mark.parametrize(
    ("cuda_build", "expected"), [(None, "CPU-only build"), ("12.4", "sees no GPU")]
)
def test_cuda_without_gpu_is_input_error_saying_why(
    cuda_build: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        device_mod, "_import_torch", lambda: _fake_torch(n_gpus=0, cuda_build=cuda_build)
    )
    with pytest.raises(InputError, match=expected) as info:
        resolve_device("cuda")
    assert "\n" not in str(info.value)
    assert "--gpus all" in str(info.value)


@pytest.mark.parametrize("requested", ["gpu", "cuda:0", "", "tpu"])
def test_unknown_device_is_input_error(requested: str) -> None:
    with pytest.raises(InputError, match="auto\\|cpu\\|cuda"):
        resolve_device(requested)


def test_non_string_device_is_input_error() -> None:
    with pytest.raises(InputError):
        resolve_device(None)  # type: ignore[arg-type]


def test_broken_torch_install_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # An installed torch that fails to import must not silently fall back to the CPU.
    monkeypatch.setattr(device_mod.importlib.util, "find_spec", lambda name: object())

    def failing_import(name: str) -> None:
        raise OSError("libcudart.so.12: cannot open shared object file")

    monkeypatch.setattr(device_mod.importlib, "import_module", failing_import)
    with pytest.raises(MissingDependencyError, match="cannot be imported.*libcudart"):
        resolve_device("auto")


def test_real_environment_cuda_request_fails_cleanly_here() -> None:
    # This project's CI machines have no GPU: whatever is installed, cuda must be refused
    # with a lungvol error (never an ImportError/AttributeError traceback).
    try:
        import torch  # noqa: F401

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        pytest.skip("a CUDA GPU is visible; this test checks the refusal path")
    with pytest.raises(LungvolError):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


def test_describe_device_records_facts_for_provenance(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = describe_device("cpu")
    assert cpu["device"] == "cpu"
    assert set(cpu) == {"device", "torch_version", "cuda_version", "gpu_name"}
    assert cpu["gpu_name"] is None
    monkeypatch.setattr(device_mod, "_import_torch", lambda: _fake_torch(n_gpus=1))
    cuda = describe_device("cuda")
    assert cuda["gpu_name"] == "Fake GPU 80GB"
    assert cuda["cuda_version"] == "12.4"
    with pytest.raises(InputError):
        describe_device("auto")


def test_cpu_path_leaves_torch_unimported() -> None:
    already = "torch" in sys.modules
    resolve_device("cpu")
    describe_device("cpu")
    assert ("torch" in sys.modules) == already
