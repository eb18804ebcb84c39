"""What may be written into workspace memory, and which store a file belongs to.

Checked before every write: files matched by the workspace's ``.gitignore`` files or its
``.dmemignore``, files inside version-control, virtual-environment, dependency and build
directories, secrets (by name, by content such as private-key blocks, and tokens that look
like keys), binary files and files over a size cap are never written. A refusal carries
the reason, which goes into the audit log. Nothing here imports torch.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pathspec

__all__ = ["Policy", "Refusal", "is_convention_file", "secret_in_text", "IGNORED_DIRECTORIES"]

IGNORED_DIRECTORIES = frozenset(
    {
        ".git", ".hg", ".svn", ".venv", "venv", ".env", "env", "node_modules", "__pycache__", ".tox", ".nox",
        ".mypy_cache", ".pytest_cache", ".ruff_cache", "build", "dist", "target", "out", ".next", ".gradle",
        ".idea", ".eggs", "site-packages", ".cache",
    }
)
"""Directory names whose contents are tools' output or other people's code."""

CONVENTION_NAMES = frozenset(
    {
        "pyproject.toml", "setup.cfg", "setup.py", "tox.ini", "noxfile.py", ".editorconfig", ".flake8", ".pylintrc",
        "pylintrc", "mypy.ini", ".mypy.ini", "ruff.toml", ".ruff.toml", ".isort.cfg", ".pre-commit-config.yaml",
        ".clang-format", ".clang-tidy", "rustfmt.toml", ".rustfmt.toml", "clippy.toml", "Cargo.toml", "go.mod",
        "package.json", "tsconfig.json", "jsconfig.json", "deno.json", ".prettierrc", ".prettierrc.json",
        ".prettierrc.yaml", ".prettierrc.yml", "prettier.config.js", ".eslintrc", ".eslintrc.json", ".eslintrc.js",
        ".eslintrc.cjs", ".eslintrc.yaml", ".eslintrc.yml", "eslint.config.js", "eslint.config.mjs", "biome.json",
        ".stylelintrc", ".rubocop.yml", "Gemfile", ".golangci.yml", ".golangci.yaml", "CMakeLists.txt", "Makefile",
        "justfile", "build.gradle", "build.gradle.kts", "pom.xml", "composer.json", ".swiftlint.yml",
    }
)
CONVENTION_DOCS = re.compile(r"^(README|CONTRIBUTING|STYLE|STYLEGUIDE|CODING_STYLE|CONVENTIONS)(\.[A-Za-z]+)?$", re.I)

SECRET_NAMES = re.compile(
    r"(^\.env(\..*)?$|^\.envrc$|\.pem$|\.key$|\.p12$|\.pfx$|\.jks$|\.keystore$|\.crt$|\.cer$|\.der$|\.asc$|\.gpg$"
    r"|^id_(rsa|dsa|ecdsa|ed25519)(\.pub)?$|^\.netrc$|^\.pypirc$|^\.npmrc$|^\.git-credentials$"
    r"|credentials|secrets?\.(json|ya?ml|toml|ini)$|^\.htpasswd$|\.kdbx$)",
    re.I,
)
SECRET_CONTENT = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----|-----BEGIN CERTIFICATE-----"
    r"|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{40,}\b"
    r"|\bsk-[A-Za-z0-9_-]{20,}\b|\bxox[abposr]-[A-Za-z0-9-]{10,}\b|\bAIza[0-9A-Za-z_-]{35}\b"
    r"|\bhf_[A-Za-z0-9]{30,}\b|\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"
)
TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{32,}")


@dataclass(frozen=True)
class Refusal:
    reason: str


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def secret_in_text(text: str) -> str | None:
    """Why ``text`` looks like it holds a secret, or None."""
    match = SECRET_CONTENT.search(text)
    if match:
        return "holds a private key, certificate or access token"
    for token in TOKEN.findall(text):
        has_classes = sum(bool(re.search(p, token)) for p in ("[a-z]", "[A-Z]", "[0-9]")) >= 3
        if has_classes and _entropy(token) >= 4.2:
            return "holds a high-entropy token that looks like a key"
    return None


def is_convention_file(relative: PurePosixPath) -> bool:
    """Project and tool configuration, contribution and style docs, the README."""
    name = relative.name
    if name in CONVENTION_NAMES or CONVENTION_DOCS.match(name):
        return True
    return len(relative.parts) <= 2 and name.startswith((".eslintrc", ".prettierrc", ".stylelintrc"))


class Policy:
    """The write policy for one workspace folder."""

    def __init__(
        self, root: Path, max_file_bytes: int, ignore: tuple[str, ...] = (), conventions: tuple[str, ...] = ()
    ) -> None:
        self.root = root
        self.max_file_bytes = max_file_bytes
        self.ignore = tuple(ignore)
        """More gitignore patterns (a workspace's ``.dmem/config.toml``), as if in ``.dmemignore``."""
        self._spec: pathspec.PathSpec | None = None
        self._conventions = pathspec.PathSpec.from_lines("gitwildmatch", conventions)

    def is_convention(self, relative: PurePosixPath) -> bool:
        """A convention file by its name, or one the workspace's config names."""
        return is_convention_file(relative) or self._conventions.match_file(str(relative))

    def reload(self) -> None:
        """Forget the ignore files read so far (one of them changed)."""
        self._spec = None

    def _ignores(self) -> pathspec.PathSpec:
        if self._spec is None:
            lines: list[str] = list(self.ignore)
            for ignore in [self.root / ".dmemignore", *sorted(self.root.rglob(".gitignore"))]:
                parts = ignore.relative_to(self.root).parts
                if any(part in IGNORED_DIRECTORIES for part in parts[:-1]) or not ignore.is_file():
                    continue
                base = "/".join(parts[:-1])
                for line in ignore.read_text(encoding="utf-8", errors="replace").splitlines():
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    negate, pattern = (line.startswith("!"), line.lstrip("!"))
                    if base:  # a nested .gitignore's patterns are relative to its folder
                        pattern = f"{base}/{pattern.lstrip('/')}" if "/" in pattern.rstrip("/") else f"{base}/**/{pattern}"
                    lines.append(("!" if negate else "") + pattern)
            self._spec = pathspec.PathSpec.from_lines("gitwildmatch", lines)
        return self._spec

    def relative(self, path: Path) -> PurePosixPath | None:
        try:
            return PurePosixPath(path.resolve().relative_to(self.root).as_posix())
        except ValueError:
            return None

    def check_path(self, path: Path) -> Refusal | None:
        """Whether a file may be written at all, judged by its path alone."""
        relative = self.relative(path)
        if relative is None:
            return Refusal("outside the workspace folder")
        if any(part in IGNORED_DIRECTORIES for part in relative.parts[:-1]):
            return Refusal("inside an ignored directory (version control, environments, dependencies, builds)")
        if SECRET_NAMES.search(relative.name):
            return Refusal("a secrets file (by its name)")
        if relative.name in (".gitignore", ".dmemignore"):
            return Refusal("an ignore file")
        if self._ignores().match_file(str(relative)):
            return Refusal("ignored by .gitignore, .dmemignore or .dmem/config.toml")
        return None

    def check_file(self, path: Path) -> tuple[str | None, Refusal | None]:
        """(text, None) when the file may be written, (None, why not) otherwise."""
        refusal = self.check_path(path)
        if refusal is not None:
            return None, refusal
        try:
            size = path.stat().st_size
            if size > self.max_file_bytes:
                return None, Refusal(f"over the size cap ({size} > {self.max_file_bytes} bytes)")
            data = path.read_bytes()
        except OSError as error:
            return None, Refusal(f"cannot be read: {error.strerror or error}")
        return self.check_text_bytes(data)

    def check_text_bytes(self, data: bytes) -> tuple[str | None, Refusal | None]:
        if b"\0" in data[:8192]:
            return None, Refusal("binary")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None, Refusal("binary (not UTF-8 text)")
        return self.check_text(text)

    def check_text(self, text: str) -> tuple[str | None, Refusal | None]:
        if len(text.encode("utf-8")) > self.max_file_bytes:
            return None, Refusal(f"over the size cap ({self.max_file_bytes} bytes)")
        secret = secret_in_text(text)
        if secret:
            return None, Refusal(secret)
        return text, None
