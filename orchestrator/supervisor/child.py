"""One child process of a deployment, owned from start to reap.

The child runs in its own session (its own process group, so a signal reaches
everything it started) with a parent-death signal: if the orchestrator dies, even
by SIGKILL, the kernel kills the child. Its output goes to `<run dir>/<name>.log`.
`stop()` is the one way to end it: SIGTERM to the group, wait, SIGKILL, always reap.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
from pathlib import Path

from orchestrator.plan import ProcessSpec

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """Runs in the child between fork and exec."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


class Child:
    def __init__(self, spec: ProcessSpec, log_dir: Path):
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                env={**os.environ, **self.spec.env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        log.info("%s started (pid %d)", self.spec.name, self.process.pid)

    async def wait(self) -> int:
        return await self.process.wait()

    def signal(self, sig: int) -> None:
        if self.running:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM, up to `timeout` seconds to finish (a worker drains meanwhile), then SIGKILL."""
        if self.process is None:
            return None
        if self.running:
            self.signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await self.process.wait()
            except TimeoutError:
                log.warning("%s did not stop within %.0fs: killing it", self.spec.name, timeout)
        self.kill()
        return await self.process.wait()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
