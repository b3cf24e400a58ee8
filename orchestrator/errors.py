"""The exception hierarchy and the exit codes the CLI documents.

Every error a user can cause is one of these: the CLI prints `str(error)` as a
single line (cause, then hint) and exits with the error's code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CONFIG = 2  # the composed config or a recipe is invalid; nothing was started
    BOOT = 3  # a process failed to start; everything already started was stopped
    FAILED = 4  # a process kept failing and supervisor.restart.on_failed is stop


class LaunchError(Exception):
    """Base class: a failure with a one-line message and a documented exit code."""

    exit_code: ExitCode = ExitCode.BOOT

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} (hint: {hint})")


class ConfigError(LaunchError):
    """The configuration cannot describe a valid deployment."""

    exit_code = ExitCode.CONFIG

    def __init__(self, key: str, reason: str, hint: str | None = None):
        self.key = key
        super().__init__(f"{key}: {reason}", hint)


class BootError(LaunchError):
    """A process of the plan could not be brought up."""

    exit_code = ExitCode.BOOT
