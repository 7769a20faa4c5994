# -*- test-case-name: harbor.test.test_config -*-
"""
The vocabulary every part of the configuration is checked with: the error
that names a setting, and the checkers for the values that recur (tables,
string lists, booleans, choices, domains, networks, function targets).

It imports nothing from L{harbor}, so that the modules that parse their own
tables (filters, hooks) and L{harbor.config}, which assembles them, can all
use it without importing each other.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

import idna

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
# A function named as package.module:function (or module:Class.method),
# for python hooks and the policy hook.
TARGET = re.compile(rf"^{_IDENTIFIER}(?:\.{_IDENTIFIER})*:{_IDENTIFIER}(?:\.{_IDENTIFIER})*$")


class ConfigError(ValueError):
    """
    A setting has a value MailHarbor cannot use.

    @ivar setting: The name of the setting at fault, as the configuration
        file spells it (C{"port"}, C{"domains.example.com.accept"}).
    @ivar problem: What is wrong with it, for a human.
    """

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


def checkTarget(target: object, setting: str) -> str:
    """
    Check that C{target} names a function as C{package.module:function}.

    @raise ConfigError: naming C{setting} if it does not.
    """
    if not isinstance(target, str) or not TARGET.match(target):
        raise ConfigError(setting, "must name a function as package.module:function")
    return target


def choice(mapping: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    """
    The value of C{key}, one of C{choices}; the first when it is not set.

    @raise ConfigError: naming C{key} for any other value.
    """
    value = mapping.get(key, choices[0])
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}")
    return value


def boolean(mapping: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """
    The value of C{key}, which must be C{true} or C{false}.

    @raise ConfigError: naming C{key} for anything else.
    """
    value = mapping.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(key, "must be true or false")
    return value


def asciiDomain(domain: str) -> str:
    """
    The lower-case A-label form of a domain, so that C{b\u00fccher.example}
    and C{xn--bcher-kva.example} are the same domain.

    Internationalised names are mapped as IDNA 2008 with UTS 46 says
    (C{stra\u00dfe.de} is C{xn--strae-oqa.de}, not C{strasse.de} as the
    standard library's IDNA 2003 codec would have it), by the C{idna}
    package Twisted's TLS support already brings.

    @raise UnicodeError: if C{domain} is not a valid name (a label longer
        than 63 octets, an empty label, a bad internationalised label).
    """
    name = domain.rstrip(".")
    if name.isascii():
        name = name.lower()
        if len(name) > 253 or not all(0 < len(label) <= 63 for label in name.split(".")):
            raise UnicodeError(f"{domain!r} has an empty or too long label")
        return name
    encoded: bytes = idna.encode(name, uts46=True)
    return encoded.decode("ascii")


def normaliseDomain(name: object, setting: str) -> str:
    """
    Lower-case a domain name and turn it into its ASCII (A-label) form.

    @raise ConfigError: if C{name} is not a host name; it names C{setting}.
    """
    if not isinstance(name, str):
        raise ConfigError(setting, "must be a string")
    try:
        candidate = asciiDomain(name.strip())
    except UnicodeError:
        raise ConfigError(setting, f"{name!r} is not a valid domain name") from None
    if not HOSTNAME.match(candidate) or len(candidate) > 253:
        raise ConfigError(setting, f"{name!r} is not a valid domain name")
    return candidate


def networks(value: object, setting: str) -> tuple[str, ...]:
    """
    Read an IP network, or a list of them (a bare address is a /32 or
    /128), in their normal written form.

    @raise ConfigError: naming C{setting}, for anything else.
    """
    found = []
    for network in stringList(value, setting):
        try:
            found.append(str(ipaddress.ip_network(network, strict=False)))
        except ValueError:
            raise ConfigError(setting, f"{network!r} is not an IP address or network") from None
    return tuple(found)


def checkTable(value: object, setting: str, keys: frozenset[str]) -> Mapping[str, Any]:
    """
    Check that C{value} is a TOML table with no keys but C{keys}.

    @raise ConfigError: naming C{setting}, or its first unknown key.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(setting, "must be a table")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise ConfigError(f"{setting}.{unknown[0]}", "unknown setting")
    return value


def stringList(value: object, setting: str, allowInt: bool = False) -> list[str]:
    """
    Read a string, or a list of strings, as a list (TOML lets an operator
    write either); with C{allowInt}, whole numbers too (ports).

    @raise ConfigError: naming C{setting}, for anything else.
    """
    kinds: tuple[type, ...] = (str, int) if allowInt else (str,)
    if isinstance(value, kinds) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, Iterable) and not isinstance(value, (str, Mapping)):
        items = list(value)
        if all(isinstance(v, kinds) and not isinstance(v, bool) for v in items):
            return [str(v) for v in items]
    raise ConfigError(setting, "must be a string or a list of strings")
