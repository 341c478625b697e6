"""``python -m kairos_core config``: the effective settings as a TOML file, secrets masked.

The output is itself a valid ``--config`` file (flat names, one section comment per concern), so
what an operator sees is what they can keep; an unset value is a comment, since TOML has no null.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from enum import StrEnum
from pathlib import Path

from kairos_core.adapters.outbound.postgres import masked
from kairos_core.settings import CONCERNS, Settings

_USER_INFO = re.compile(r"//[^/?#]*@")


def _without_user_info(urls: str) -> str:
    """Every URL in ``urls`` (NATS takes a comma list) with its user info as ``***``: a NATS
    server takes a token there, or a user and password."""
    return _USER_INFO.sub("//***@", urls)


_SECRETS = {"database_url": masked, "nats_url": _without_user_info}
"""Settings that may carry a secret, and how to show them without it."""


def render_config(settings: Settings) -> str:
    lines: list[str] = []
    for concern, model in CONCERNS.items():
        lines.append(f"# {concern}")
        for name in model.flat_names():
            value = getattr(settings, name)
            if value is None:
                lines.append(f"# {name} is unset")
                continue
            if name in _SECRETS:
                value = _SECRETS[name](value)
            lines.append(f"{name} = {_toml(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml(value: object) -> str:
    """A TOML literal: Decimals as strings, so no digit is lost to a float."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, StrEnum | Decimal | Path | str):
        # JSON's escapes are TOML's, but for characters past U+FFFF (a surrogate pair in JSON,
        # refused by TOML): keep those as they are; DEL is the one control JSON leaves bare.
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007F")
    raise TypeError(f"no TOML form for {type(value).__name__}")
