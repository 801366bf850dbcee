"""Errors raised by the local-stack launcher.

Hierarchy::

    EmulatorError
    ├── ToolMissingError   a program the stack needs is not installed (says how to get it)
    └── StartupError       a process exited or did not become ready in time (names its log)
"""

from __future__ import annotations


class EmulatorError(Exception):
    """Base class of the launcher's errors."""


class ToolMissingError(EmulatorError):
    """A required program is not installed."""


class StartupError(EmulatorError):
    """A child process died or never answered its readiness probe."""
