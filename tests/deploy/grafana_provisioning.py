"""Reading Grafana provisioning files the way Grafana does: YAML, then every string value through
Grafana's interpolation (pkg/services/provisioning/values: `$$` is a literal `$`; `$__env{NAME}`,
`$__file{PATH}` and `${NAME}` expanders; then Go's os.ExpandEnv for `$NAME` and `${NAME}`).
Grafana documents `$ENV_VAR_NAME` and `${ENV_VAR_NAME}` and no default syntax."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

# setting.ExpandVar: `${NAME}`, `$__env{NAME}`, `$__file{PATH}` (other expanders are Enterprise).
_EXPANDER = re.compile(r"\$(|__\w+)\{([^}]+)\}")
_SPECIAL = set("*#$@!?-0123456789")


def _expanders(text: str, env: Mapping[str, str]) -> str:
    for name in ("env", "file"):  # Grafana applies them in priority order, env first
        for match in _EXPANDER.finditer(text):
            kind, argument = match.group(1), match.group(2)
            if kind == f"__{name}" or (kind == "" and name == "env"):
                value = env.get(argument, "") if name == "env" else Path(argument).read_text().strip()
                text = text.replace(match.group(0), value, 1)
    return text


def _shell_name(s: str) -> tuple[str, int]:
    """Go's os.getShellName: the variable name after `$` and how many bytes it spans."""
    if s[0] == "{":
        if len(s) > 2 and s[1] in _SPECIAL and s[2] == "}":
            return s[1:2], 3
        for i in range(1, len(s)):
            if s[i] == "}":
                return ("", 2) if i == 1 else (s[1:i], i + 1)
        return "", 1
    if s[0] in _SPECIAL:
        return s[0:1], 1
    i = 0
    while i < len(s) and (s[i] == "_" or (s[i].isascii() and s[i].isalnum())):
        i += 1
    return s[:i], i


def go_expand_env(s: str, env: Mapping[str, str]) -> str:
    """Go's os.ExpandEnv."""
    out: list[str] = []
    i = j = 0
    changed = False
    while j < len(s):
        if s[j] == "$" and j + 1 < len(s):
            changed = True
            out.append(s[i:j])
            name, width = _shell_name(s[j + 1 :])
            if name == "" and width > 0:
                pass  # invalid syntax: Go drops the characters
            elif name == "":
                out.append("$")
            else:
                out.append(env.get(name, ""))
            j += width
            i = j + 1
        j += 1
    if not changed:
        return s
    return "".join(out) + s[i:]


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """values.interpolateValue: split on `$$`, expand each part, join with a literal `$`."""
    return "$".join(go_expand_env(_expanders(part, env), env) for part in value.split("$$"))


def _interpolated(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, list):
        return [_interpolated(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _interpolated(v, env) for k, v in value.items()}
    return value


def read_provisioning(path: Path, env: Mapping[str, str]) -> Any:
    """A provisioning file as Grafana sees it with `env` as its environment."""
    return _interpolated(yaml.safe_load(path.read_text()), env)
