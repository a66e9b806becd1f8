"""Reading a Dockerfile and compose.yaml the way Docker does, for checks that run without an engine.

- :func:`parse` splits a Dockerfile into stages of instructions (continuation lines joined, comments
  dropped, ``--flag=value`` options separated, JSON exec form decoded);
- :class:`Rootfs` stands in for a container's filesystem: an absolute path the Dockerfile names that
  does not exist on this machine (``/opt/venv``, ``/src``) lives under a temporary root instead, and
  the paths in commands and ``ENV`` values are rewritten to match;
- :func:`build_context` copies what ``COPY`` may see: the context minus ``.dockerignore`` (the Docker
  SDK's own matcher), so a file the image needs but the ignore file drops fails here too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from docker.utils.build import exclude_paths

_ABSOLUTE_PATH = re.compile(r"(?<![\w$/.-])/[A-Za-z0-9_][\w./-]*")
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::-([^}]*))?\}|(\w+))")


@dataclass
class Instruction:
    """One instruction: its keyword, its ``--flag=value`` options and the rest of its arguments."""

    keyword: str
    args: str
    flags: dict[str, str] = field(default_factory=dict)

    def exec_form(self) -> list[str] | None:
        """The JSON-array (exec) form's words, or None for the shell form."""
        if self.args.startswith("["):
            words = json.loads(self.args)
            assert isinstance(words, list) and all(isinstance(w, str) for w in words), self.args
            return words
        return None


@dataclass
class Stage:
    """A build stage: ``FROM base [AS name]`` and its instructions."""

    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        """This stage's instructions with ``keyword``, in order."""
        return [i for i in self.instructions if i.keyword == keyword]


def logical_lines(text: str) -> list[str]:
    """Join continuation lines; drop comments and blank lines (also inside a continuation, as Docker does)."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    if current:
        lines.append(current)
    return lines


def _split_flags(rest: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, value = word[2:].partition("=")
        flags[name] = value
        rest = rest.strip()
    return flags, rest


def parse(text: str) -> list[Stage]:
    """The Dockerfile's stages, each with its instructions (``FROM`` itself is the stage)."""
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, []))
            continue
        assert stages, f"instruction before FROM: {line}"
        if keyword == "HEALTHCHECK":
            flags, rest = _split_flags(rest.strip())
            command = rest.removeprefix("CMD").strip()
            stages[-1].instructions.append(Instruction(keyword, command, flags))
            continue
        flags, rest = _split_flags(rest.strip()) if keyword == "COPY" else ({}, rest.strip())
        stages[-1].instructions.append(Instruction(keyword, rest, flags))
    return stages


def env_pairs(args: str) -> list[tuple[str, str]]:
    """``ENV a=1 b="two words"`` (or the legacy ``ENV a 1``) as pairs, quotes removed."""
    if "=" not in args.split(" ", 1)[0]:
        name, _, value = args.partition(" ")
        return [(name, value.strip())]
    pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', args)
    return [(name, value[1:-1] if value.startswith('"') else value) for name, value in pairs]


def expand(value: str, env: dict[str, str]) -> str:
    """``$VAR``, ``${VAR}`` and ``${VAR:-default}`` as Docker and compose substitute them."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        found = env.get(name, "")
        return found if found or default is None else default

    return _VARIABLE.sub(substitute, value)


class Rootfs:
    """A container's filesystem on this machine: the paths the image populates itself (``owned``: its
    ``WORKDIR``s and the paths ``COPY`` writes or ``COPY --from`` reads) live under ``root``; every other
    path (the base image's ``/usr/bin``...) is this machine's own."""

    def __init__(self, root: Path, owned: set[str]) -> None:
        self.root = root
        self.owned = {o.rstrip("/") for o in owned}
        root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_image(cls, root: Path, stages: list[Stage]) -> Rootfs:
        """A root owning what ``stages`` populate."""
        owned: set[str] = set()
        for stage in stages:
            for instruction in stage.instructions:
                if instruction.keyword == "WORKDIR":
                    owned.add(instruction.args)
                elif instruction.keyword == "COPY":
                    *sources, destination = instruction.args.split()
                    owned.update(p for p in [destination, *(sources if "from" in instruction.flags else [])]
                                 if p.startswith("/"))
        return cls(root, owned)

    def path(self, container_path: str) -> Path:
        """Where ``container_path`` lives here."""
        if any(container_path == o or container_path.startswith(o + "/") for o in self.owned):
            return self.root / container_path.lstrip("/")
        return Path(container_path)

    def rewrite(self, text: str) -> str:
        """``text`` with every owned absolute path moved under ``root``."""
        return _ABSOLUTE_PATH.sub(lambda m: str(self.path(m.group(0))), text)


def build_context(source: Path, destination: Path) -> Path:
    """Copy ``source`` minus its ``.dockerignore`` to ``destination``: what ``COPY`` can see."""
    ignore = source / ".dockerignore"
    patterns = [p.strip() for p in ignore.read_text().splitlines() if p.strip() and not p.startswith("#")]
    for relative in sorted(exclude_paths(str(source), patterns)):
        origin = source / relative
        target = destination / relative
        if origin.is_dir() and not origin.is_symlink():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target, follow_symlinks=False)
    return destination


def copy_into(context: Path, sources: list[str], destination: Path) -> None:
    """``COPY src... dest`` from the build context: a directory's contents, or files, as Docker copies them."""
    for source in sources:
        origin = context / source
        assert origin.exists(), f"COPY {source}: not in the build context (missing, or excluded by .dockerignore)"
        if origin.is_dir():
            shutil.copytree(origin, destination, dirs_exist_ok=True)
        else:
            target = destination / origin.name if len(sources) > 1 or str(destination).endswith(os.sep) \
                or destination.is_dir() else destination
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
