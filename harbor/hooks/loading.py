# -*- test-case-name: harbor.test.test_hooks -*-
"""
Finding the code a hook configuration names: a python hook's function, a
command hook's program, and names for hooks given in code without one.

This is the part of loading hooks that needs no reactor, for start-up
checks (C{Options.postOptions}) and for L{harbor.policyhook}, which imports
its function the same way.  Like L{harbor.hooks.config} it imports no
Twisted; L{harbor.hooks.kinds.loadHooks} builds the hooks themselves.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from harbor._syntax import ConfigError
from harbor.hooks.config import HOOK_NAME, HookConfig

if TYPE_CHECKING:
    from harbor.hooks.events import NewMessage


def importTarget(target: str, setting: str) -> Callable[[NewMessage], object]:
    """
    Import the function a C{python} hook names.

    @param target: C{"package.module:function"}; the part after the colon
        may be dotted (C{"module:Class.method"}).
    @param setting: The setting to name in errors.
    @raise ConfigError: if the module cannot be imported (for whatever
        reason: it is missing, or raised while being imported), has no
        such attribute, or it is not callable.
    """
    moduleName, _, attributes = target.partition(":")
    try:
        found: Any = importlib.import_module(moduleName)
    except Exception as e:
        raise ConfigError(setting, f"cannot import {moduleName}: {type(e).__name__}: {e}") from e
    for attribute in attributes.split("."):
        try:
            found = getattr(found, attribute)
        except AttributeError:
            raise ConfigError(setting, f"{target}: {moduleName} has no {attributes}") from None
    if not callable(found):
        raise ConfigError(setting, f"{target} is not callable")
    return cast("Callable[[NewMessage], object]", found)


def findProgram(program: str, setting: str) -> str:
    """
    Find a command hook's program now, so a typo stops the server from
    starting instead of failing every message later.

    @return: The program's absolute path.
    @raise ConfigError: if it is not an executable file.
    """
    if os.sep in program:
        path = os.path.abspath(program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        raise ConfigError(setting, f"{program} is not an executable file")
    found = shutil.which(program)
    if found is None:
        raise ConfigError(setting, f"{program} is not found on PATH")
    return os.path.abspath(found)


def checkHooks(configs: Sequence[HookConfig]) -> None:
    """
    Import every python hook's function and find every command hook's
    program, without building anything: for start-up checks that must not
    need a reactor (C{Options.postOptions}).

    @raise ConfigError: naming the setting at fault.
    """
    for config in configs:
        if config.kind == "python":
            importTarget(config.target or "", f"{config.setting}.target")
        elif config.kind == "command":
            findProgram(config.argv[0], f"{config.setting}.command")


def defaultHookNames(functions: Sequence[object], taken: Sequence[str] = ()) -> list[str]:
    """
    Names for hooks given in code without one: each function's name, made
    into a valid hook name (C{<lambda>} is C{lambda-}), and numbered where
    it would be the same as another's or one of C{taken} (the hooks that
    have names), since a name keys the hook's jobs.
    """
    used = set(taken)
    names: list[str] = []
    for index, function in enumerate(functions):
        name = re.sub(r"[^A-Za-z0-9_-]", "-", getattr(function, "__name__", "")).lstrip("-_")[:60]
        if not HOOK_NAME.match(name):
            name = "hook"
        candidate, number = name, index
        while candidate in used:
            candidate = f"{name}-{number}"
            number += 1
        used.add(candidate)
        names.append(candidate)
    return names
