"""The identifier alphabet: model names, device ids and groups travel in MQTT topics and name run
folders, so the wire and the spec loader check them with this one rule (no '/', no leading '.')."""

from __future__ import annotations

import re

IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
IDENTIFIER_RULE = "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
