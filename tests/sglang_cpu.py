"""SGLang 0.5.23's torch-free modules, imported on a CPU-only machine so tests can hold
our wire formats against SGLang's own code.

`import sglang` runs `sglang/__init__.py` and `sglang/srt/utils/__init__.py`, which
import torch and triton. Registering those packages in `sys.modules` as bare module
objects with their real `__path__` lets the pure-Python modules below them import
unchanged (`sglang.srt.disaggregation.kv_events`, `sglang.srt.mem_cache.events`,
`sglang.srt.mem_cache.utils`, ...). Stand-ins, only for GPU code on the import path
that the tested functions never call:

- `sglang.kernels.ops.kvcache.mla_buffer`: Triton MLA kernels, imported at the top of
  `mem_cache/utils.py`; every name raises if called.
- `sglang.srt.utils.cpp_extension_loader`: torch's JIT C++ builder, which SGLang's
  `native_hash.py` uses to build `hash_binding.cpp`. The stand-in builds the same
  source with the same flags using g++, pybind11 and OpenSSL's libcrypto.

Install with `pip install --no-deps sglang==0.5.23` (plus msgspec, pyzmq, pydantic,
psutil; pybind11 for the C++ hash). The arrangement relies on 0.5.23's package layout,
so any other version is skipped. It replaces `sglang` for the whole test session.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest

SGLANG_VERSION = "0.5.23"
_GPU_STANDIN = "sglang.kernels.ops.kvcache.mla_buffer"
_LOADER_STANDIN = "sglang.srt.utils.cpp_extension_loader"


def require_sglang() -> Path:
    """The installed `sglang` package directory; skips the test when it is missing."""
    try:
        version = importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"sglang is not installed (pip install --no-deps sglang=={SGLANG_VERSION})")
    if version != SGLANG_VERSION:
        pytest.skip(f"sglang {version} is installed; these imports rely on {SGLANG_VERSION}'s layout")
    # Not importlib.util.find_spec: once the bare packages are registered it cannot answer.
    return Path(importlib.metadata.distribution("sglang").locate_file("sglang"))


def import_sglang(module: str) -> types.ModuleType:
    """Import one of SGLang's torch-free modules (skips without sglang)."""
    root = require_sglang()
    for name, path in (("sglang", root), ("sglang.srt", root / "srt"), ("sglang.srt.utils", root / "srt" / "utils")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    if _GPU_STANDIN not in sys.modules:
        sys.modules[_GPU_STANDIN] = _gpu_standin()
    return importlib.import_module(module)


def _gpu_standin() -> types.ModuleType:
    module = types.ModuleType(_GPU_STANDIN, "stand-in: Triton MLA kernels need a GPU")

    def __getattr__(name: str):
        if name.startswith("__"):  # module protocol lookups (inspect, pickle) must see no such attribute
            raise AttributeError(name)

        def kernel(*args, **kwargs):
            raise RuntimeError(f"{_GPU_STANDIN}.{name} needs a GPU")

        return kernel

    module.__getattr__ = __getattr__
    return module


def use_gxx_extension_builder(build_dir: Path) -> None:
    """Make SGLang's `native_hash` build its C++ extension with g++ instead of torch."""
    module = types.ModuleType(_LOADER_STANDIN, "stand-in: g++ instead of torch.utils.cpp_extension")
    module.load_extension_with_recovery = lambda *args, **kwargs: _build(build_dir, *args, **kwargs)
    sys.modules[_LOADER_STANDIN] = module


def _build(build_dir: Path, name, sources, extra_cflags=None, extra_ldflags=None, **_ignored):
    """What `torch.utils.cpp_extension.load` does for a CPU-only pybind11 source."""
    if shutil.which("g++") is None:
        raise RuntimeError("g++ is not installed")
    try:
        import pybind11
    except ImportError as exc:
        raise RuntimeError("pybind11 is not installed") from exc
    build_dir.mkdir(parents=True, exist_ok=True)
    target = build_dir / f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}"
    command = [
        "g++", "-shared", "-fPIC", *(extra_cflags or []), f"-DTORCH_EXTENSION_NAME={name}",
        f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
        *sources, "-o", str(target), *(extra_ldflags or []),
    ]  # fmt: skip
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"g++ failed: {built.stderr[-2000:]}")
    spec = importlib.util.spec_from_file_location(name, target)
    extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extension)
    return extension
