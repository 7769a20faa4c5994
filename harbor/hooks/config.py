# -*- test-case-name: harbor.test.test_hookconfig -*-
"""
The C{[[hook]]} tables of the configuration file, checked into
L{HookConfig} values, and the defaults they fall back to.

Checking imports and runs nothing (L{harbor.hooks.loading} finds the code a
hook names, L{harbor.hooks.kinds.loadHooks} builds the hooks), and this
module imports neither Twisted nor any other part of L{harbor.hooks}:
L{harbor.config} reads the hooks with the rest of the file, and
C{mailharbor} shows L{RESCAN_INTERVAL}, without paying for either.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen

from harbor._syntax import ConfigError, checkTarget

KINDS = ("python", "command", "webhook")
WEBHOOK_FORMATS = ("json", "multipart")

DEFAULT_ATTEMPTS = 8
DEFAULT_BACKOFF = 30.0
DEFAULT_MAX_BACKOFF = 3600.0
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_IN_FLIGHT = 4
#: Pending jobs a hook may have before new mail is refused with 451 4.3.0.
DEFAULT_MAX_PENDING = 10_000

#: Seconds between a running server's looks at its hook spool for jobs put
#: back by C{mailharbor hooks retry} (the command and the server share it).
RESCAN_INTERVAL = 30.0

#: The hook spool's directory name inside the Maildir root, its default
#: place (C{hook_spool}).  It cannot clash with a domain's Maildir, and
#: having neither C{new/} nor C{cur/} it is never taken for one.
SPOOL_NAME = ".hooks"

#: What a hook's name may be: it names the hook's job files.
HOOK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ENVIRONMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENVIRONMENT_PREFIX = "MAILHARBOR_"
_COMMON_KEYS = frozenset(
    {"name", "kind", "attempts", "backoff", "max_backoff", "timeout", "max_in_flight", "max_pending"}
)
_KIND_KEYS = {
    "python": frozenset({"target", "thread"}),
    "command": frozenset({"command", "environment"}),
    "webhook": frozenset({"url", "format", "headers"}),
}


def checkName(name: str) -> str:
    """
    Check the name of a hook made in code.

    @return: C{name}.
    @raise ValueError: if it is not a valid hook name.
    """
    if not HOOK_NAME.match(name):
        raise ValueError(f"{name!r} is not a hook name: use letters, digits, - and _")
    return name


@frozen
class RetryPolicy:
    """
    How often, and how patiently, a failing hook is tried again.

    @ivar attempts: Attempts in all before the job goes to the dead letters.
    @ivar backoff: Seconds between the first and second attempts; each
        later wait is twice the one before.
    @ivar maxBackoff: The longest wait between two attempts.
    """

    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    maxBackoff: float = DEFAULT_MAX_BACKOFF

    def delayAfter(self, failures: int) -> float:
        """
        Seconds to wait after the C{failures}-th failed attempt (from 1).
        """
        return float(min(self.maxBackoff, self.backoff * 2 ** min(failures - 1, 64)))


#: The retry policy of a hook made in code without one.
DEFAULT_RETRY = RetryPolicy()


@frozen
class HookConfig:
    """
    One C{[[hook]]} table of the configuration file, checked.

    @ivar name: The hook's unique name.
    @ivar kind: C{"python"}, C{"command"} or C{"webhook"}.
    @ivar target: For C{python}: C{"package.module:function"}.
    @ivar thread: For C{python}: call the function in a worker thread.
    @ivar argv: For C{command}: the program and its arguments.
    @ivar environment: For C{command}: more environment variables.
    @ivar url: For C{webhook}: the http or https URL to POST to.
    @ivar format: For C{webhook}: C{"json"} or C{"multipart"}.
    @ivar headers: For C{webhook}: more request headers.
    @ivar timeout: Seconds an attempt may take.
    @ivar maxInFlight: Calls of this hook that may run at once.
    @ivar maxPending: Pending jobs this hook may have; once it has that
        many, new mail is refused with C{451 4.3.0} until they drain.
    @ivar attempts: Attempts before the job is parked as a dead letter.
    @ivar backoff: Seconds before the first retry; doubled each time.
    @ivar maxBackoff: The longest wait between attempts.
    """

    name: str
    kind: str
    target: str | None = None
    thread: bool = False
    argv: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    url: str | None = None
    format: str = "json"
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    maxInFlight: int = DEFAULT_MAX_IN_FLIGHT
    maxPending: int = DEFAULT_MAX_PENDING
    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    maxBackoff: float = DEFAULT_MAX_BACKOFF
    setting: str = field(default="hook", eq=False)

    @property
    def retry(self) -> RetryPolicy:
        """
        The hook's retry policy.
        """
        return RetryPolicy(self.attempts, self.backoff, self.maxBackoff)


def parseHooks(tables: object) -> tuple[HookConfig, ...]:
    """
    Check the C{[[hook]]} array of tables of the configuration file.

    Nothing is imported or run here; L{harbor.hooks.kinds.loadHooks} does
    that.

    @param tables: The value of the top-level C{hook} key, if any.
    @raise ConfigError: naming the first setting that is wrong, as
        C{hook[0].url}.
    """
    if tables is None:
        return ()
    if isinstance(tables, Mapping) or not isinstance(tables, (list, tuple)):
        raise ConfigError("hook", "must be an array of tables: write each hook as a [[hook]] table")
    configs: list[HookConfig] = []
    for index, table in enumerate(tables):
        setting = f"hook[{index}]"
        config = _parseHook(table, setting)
        if any(other.name == config.name for other in configs):
            raise ConfigError(f"{setting}.name", f"another hook is already named {config.name!r}")
        configs.append(config)
    return tuple(configs)


def hookTable(config: HookConfig) -> dict[str, Any]:
    """
    The C{[[hook]]} table that L{parseHooks} reads as C{config}: the keys
    an operator writes, every setting spelled out.
    """
    table: dict[str, Any] = {"name": config.name, "kind": config.kind}
    if config.kind == "python":
        table.update(target=config.target, thread=config.thread)
    elif config.kind == "command":
        table.update(command=list(config.argv), environment=dict(config.environment))
    else:
        table.update(url=config.url, format=config.format, headers=dict(config.headers))
    table.update(
        attempts=config.attempts,
        backoff=config.backoff,
        max_backoff=config.maxBackoff,
        timeout=config.timeout,
        max_in_flight=config.maxInFlight,
        max_pending=config.maxPending,
    )
    return table


def _parseHook(table: object, setting: str) -> HookConfig:
    if not isinstance(table, Mapping):
        raise ConfigError(setting, "must be a table")
    kind = table.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{setting}.kind", f"must be one of {', '.join(KINDS)}")
    unknown = sorted(set(table) - _COMMON_KEYS - _KIND_KEYS[kind])
    if unknown:
        raise ConfigError(f"{setting}.{unknown[0]}", f"is not a setting of a {kind} hook")
    name = table.get("name")
    if not isinstance(name, str) or not HOOK_NAME.match(name):
        raise ConfigError(
            f"{setting}.name",
            "is required: up to 64 letters, digits, - and _, starting with a letter or digit",
        )
    values: dict[str, Any] = {"name": name, "kind": kind, "setting": setting}
    values["attempts"] = _number(table, "attempts", setting, DEFAULT_ATTEMPTS, 1, whole=True)
    values["backoff"] = _number(table, "backoff", setting, DEFAULT_BACKOFF, 0.001)
    values["maxBackoff"] = _number(table, "max_backoff", setting, DEFAULT_MAX_BACKOFF, 0.001)
    if values["maxBackoff"] < values["backoff"]:
        raise ConfigError(f"{setting}.max_backoff", "must not be less than backoff")
    values["timeout"] = _number(table, "timeout", setting, DEFAULT_TIMEOUT, 0.001)
    values["maxInFlight"] = _number(
        table, "max_in_flight", setting, DEFAULT_MAX_IN_FLIGHT, 1, whole=True
    )
    values["maxPending"] = _number(table, "max_pending", setting, DEFAULT_MAX_PENDING, 1, whole=True)
    if kind == "python":
        values["target"] = checkTarget(table.get("target"), f"{setting}.target")
        thread = table.get("thread", False)
        if not isinstance(thread, bool):
            raise ConfigError(f"{setting}.thread", "must be true or false")
        values["thread"] = thread
    elif kind == "command":
        argv = table.get("command")
        if (
            not isinstance(argv, list)
            or not argv
            or not all(isinstance(a, str) and "\0" not in a for a in argv)
            or not argv[0]
        ):
            raise ConfigError(
                f"{setting}.command",
                'must be a list: the program and its arguments, as ["/usr/local/bin/x", "--y"]',
            )
        values["argv"] = tuple(argv)
        environment = _stringTable(table, "environment", setting, _ENVIRONMENT_NAME)
        for key, _ in environment:
            if key.startswith(_ENVIRONMENT_PREFIX):
                raise ConfigError(
                    f"{setting}.environment", f"{key}: MAILHARBOR_ variables are set by MailHarbor"
                )
        values["environment"] = environment
    else:
        url = table.get("url")
        if not isinstance(url, str) or not _validURL(url):
            raise ConfigError(f"{setting}.url", "must be an http:// or https:// URL (ASCII only)")
        values["url"] = url
        format = table.get("format", "json")
        if format not in WEBHOOK_FORMATS:
            raise ConfigError(f"{setting}.format", f"must be one of {', '.join(WEBHOOK_FORMATS)}")
        values["format"] = format
        values["headers"] = _stringTable(table, "headers", setting, _HEADER_NAME)
    return HookConfig(**values)


def _number(
    table: Mapping[str, Any],
    key: str,
    setting: str,
    default: float,
    minimum: float,
    whole: bool = False,
) -> Any:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
        raise ConfigError(f"{setting}.{key}", f"must be {'a whole number' if whole else 'a number'}")
    if value < minimum:
        raise ConfigError(f"{setting}.{key}", f"must be at least {minimum:g}")
    return value if whole else float(value)


def _stringTable(
    table: Mapping[str, Any], key: str, setting: str, names: re.Pattern[str]
) -> tuple[tuple[str, str], ...]:
    value = table.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{setting}.{key}", "must be a table of strings")
    pairs = []
    for name, text in value.items():
        if not names.match(name):
            raise ConfigError(f"{setting}.{key}", f"{name!r} is not a valid name")
        if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
            raise ConfigError(f"{setting}.{key}", f"{name}: must be a one-line string")
        pairs.append((name, text))
    return tuple(pairs)


def _validURL(url: str) -> bool:
    if not url.isascii() or any(c.isspace() for c in url):
        return False
    try:
        parts = urlsplit(url)
        # urlsplit takes any port; reading it checks it is a number in range.
        _ = parts.port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
