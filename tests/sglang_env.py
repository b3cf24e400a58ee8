"""SGLang 0.5.23's parser (`prepare_server_args`) and request types (`io_struct`,
`SamplingParams`, `TokenizerManager`), imported on a CPU-only machine for tests.

A GPU node imports them the ordinary way. Here three things stand in the way, and
`prepare_sglang()` arranges `sys.modules` around each before the first import:

- `sglang/__init__.py` loads the frontend language API and patches transformers; none
  of that is needed to parse flags or build requests. The `sglang` package is
  registered bare (its real `__path__`, its `__init__` not run). Every other package
  `__init__` runs as usual; a bare `sglang.srt.utils` left by tests/sglang_cpu.py (the
  KV-event tests' helper, which needs no torch) is completed with its real `__init__`.
- Triton (a GPU compiler, about 1 GB) is imported at module level by SGLang's kernel
  files, which only define kernels. A stand-in gives them exactly the names they touch
  while importing (`jit`, `language.constexpr`, `language.extra.libdevice`,
  `tools.tensor_descriptor.TensorDescriptor`); a kernel built with it raises if
  launched. torch looks for Triton too and must keep seeing none, so torch's compiler
  stack is imported first, while Triton is still absent.
- torchvision from PyPI is a CUDA build that fails to load next to the CPU torch
  wheel; SGLang's multimodal configs only read `transforms.InterpolationMode` at import.
  transformers is asked first whether torchvision exists (it caches the answer: no).

Importing `tokenizer_manager` sets uvloop's event-loop policy process-wide; the
previous policy is put back so other async tests keep their loop.

Install (Python 3.11, CPU; about 1.6 GB and a minute and a half): see tests/sglang-cpu.txt.

Not triton, not torchvision (stood in above). The arrangement relies on 0.5.23's
package layout: another version is skipped. Once arranged, SGLang stays importable
for the rest of the test session.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import importlib.metadata
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import pytest

SGLANG_VERSION = "0.5.23"
# What SGLang's import path needs beyond sglang itself (import name: pip name).
REQUIRED = {
    "torch": "torch==2.13.0+cpu",
    "transformers": "transformers==5.19.0",
    "numpy": "numpy",
    "msgspec": "msgspec",
    "zmq": "pyzmq",
    "pydantic": "pydantic",
    "fastapi": "fastapi",
    "uvloop": "uvloop",
    "tvm_ffi": "apache-tvm-ffi==0.1.11",
}

_reason: list[str | None] = []  # filled once: why SGLang cannot be imported here (None: it can)


def prepare_sglang() -> bool:
    """Make `sglang.srt.server_args` importable the normal way; True when it is.
    Safe to call repeatedly: the first call decides."""
    if not _reason:
        _reason.append(_arrange())
    return _reason[0] is None


def require_sglang(*modules: str) -> list[types.ModuleType]:
    """Import SGLang modules for a test, or skip it with the reason they cannot be."""
    if not prepare_sglang():
        pytest.skip(_reason[0])
    with _importing():
        return [importlib.import_module(name) for name in modules]


def _arrange() -> str | None:
    try:
        version = importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return f"sglang is not installed (pip install --no-deps sglang=={SGLANG_VERSION})"
    if version != SGLANG_VERSION:
        return f"sglang {version} is installed; this CPU import relies on {SGLANG_VERSION}'s layout"
    missing = [pip for name, pip in REQUIRED.items() if importlib.util.find_spec(name) is None]
    if missing:
        return f"SGLang's parser needs {', '.join(missing)} on this CPU machine (see tests/sglang_env.py)"
    root = Path(importlib.metadata.distribution("sglang").locate_file("sglang"))
    try:
        with _importing():
            standins = _standins()
            if standins:
                _settle_gpu_package_checks()
            for module in standins:
                sys.modules.setdefault(module.__name__, module)
            _register_bare_sglang(root)
            importlib.import_module("sglang.srt.server_args")
    except Exception as e:  # noqa: BLE001 - becomes the skip reason
        return f"SGLang's parser does not import on this CPU: {type(e).__name__}: {e}"
    return None


@contextlib.contextmanager
def _importing():
    """Around SGLang's imports: no import-time warnings (torch.jit deprecations, "only
    CUDA supports AWQ"), the event-loop policy kept, and modules that answer every
    attribute set aside. Such a module (a catch-all stand-in, as tests/sglang_cpu.py
    registers) even answers `__file__` with a non-path, which breaks
    `inspect.getmodule`, and torch calls that while registering SGLang's custom ops."""
    policy = asyncio.get_event_loop_policy()
    aside = {
        name: module
        for name, module in list(sys.modules.items())
        if not isinstance(getattr(module, "__file__", None), (str, type(None)))
    }
    for name in aside:
        del sys.modules[name]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.modules.update(aside)
        asyncio.set_event_loop_policy(policy)  # tokenizer_manager installs uvloop's


def _settle_gpu_package_checks() -> None:
    """torch and transformers decide once whether Triton/torchvision exist, and some
    torch modules import Triton at their top: let them all see the truth first."""
    import torch
    import transformers.utils.import_utils as hf
    from torch.utils._triton import has_triton_package

    has_triton_package()
    torch.compile(lambda x: x)  # imports dynamo, inductor's triton_compat, flop_counter (no compile runs)
    hf.is_torchvision_available()


def _standins() -> list[types.ModuleType]:
    modules: list[types.ModuleType] = []
    if importlib.util.find_spec("triton") is None:
        modules += _triton_standin()
    if importlib.util.find_spec("torchvision") is None:  # never install PyPI's (CUDA) torchvision here
        modules += _torchvision_standin()
    return modules


def _package(name: str, doc: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    module.__path__ = []  # a package: any other submodule is "not found"
    module.__dict__.update(attrs)
    return module


def _triton_standin() -> list[types.ModuleType]:
    doc = "stand-in for tests: Triton is a GPU compiler; SGLang only defines kernels with it at import"

    class Kernel:
        def __init__(self, fn):
            self.fn, self.__name__, self.__doc__ = fn, getattr(fn, "__name__", "kernel"), getattr(fn, "__doc__", None)

        def __getitem__(self, grid):
            raise RuntimeError(f"{self.__name__} is a Triton kernel: it needs a GPU (triton stand-in)")

        __call__ = __getitem__

    def jit(fn=None, **_options):
        return Kernel(fn) if fn is not None else Kernel

    class constexpr:  # noqa: N801 - Triton's spelling
        def __init__(self, value=None):
            self.value = value

    class TensorDescriptor:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("TensorDescriptor needs a GPU (triton stand-in)")

    libdevice = types.ModuleType("triton.language.extra.libdevice", doc)
    extra = _package("triton.language.extra", doc, libdevice=libdevice)
    language = _package("triton.language", doc, constexpr=constexpr, extra=extra)
    tensor_descriptor = types.ModuleType("triton.tools.tensor_descriptor", doc)
    tensor_descriptor.TensorDescriptor = TensorDescriptor
    tools = _package("triton.tools", doc, tensor_descriptor=tensor_descriptor)
    triton = _package("triton", doc, jit=jit, language=language, tools=tools)
    return [triton, language, extra, libdevice, tools, tensor_descriptor]


def _torchvision_standin() -> list[types.ModuleType]:
    doc = "stand-in for tests: SGLang's multimodal configs read only InterpolationMode at import"

    class InterpolationMode(enum.Enum):  # torchvision's values
        NEAREST = "nearest"
        NEAREST_EXACT = "nearest-exact"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"
        BOX = "box"
        HAMMING = "hamming"
        LANCZOS = "lanczos"

    functional = types.ModuleType("torchvision.transforms.functional", doc)
    functional.InterpolationMode = InterpolationMode
    transforms = _package("torchvision.transforms", doc, InterpolationMode=InterpolationMode, functional=functional)
    return [_package("torchvision", doc, transforms=transforms), transforms, functional]


def _register_bare_sglang(root: Path) -> None:
    if "sglang" not in sys.modules:
        package = types.ModuleType("sglang", "bare package for tests: sglang/__init__.py not run")
        package.__path__ = [str(root)]
        sys.modules["sglang"] = package
    utils = sys.modules.get("sglang.srt.utils")
    if utils is not None and getattr(utils, "__file__", None) is None:  # left bare by tests/sglang_cpu.py
        init = root / "srt" / "utils" / "__init__.py"
        utils.__file__ = str(init)
        exec(compile(init.read_text(), str(init), "exec"), utils.__dict__)
