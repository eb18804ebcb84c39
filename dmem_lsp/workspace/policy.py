"""What may be written into workspace memory, and which store a file belongs to.

Checked before every write: files matched by the workspace's ``.gitignore`` files or its
``.dmemignore``, files inside version-control, virtual-environment, dependency and build
directories, secrets files (by name), binary files and files over a size cap are never
written. Secrets inside a text (``secret_scan``: detect-secrets' plugins and our rules) are
redacted, or the text is refused when it is mostly secret or holds a private key. A refusal
carries the reason and a redaction names what was redacted and by which detector; both go
into the audit log. Nothing here imports torch (nor detect-secrets until the first check).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pathspec

from dmem_lsp.workspace import secret_scan

__all__ = ["Policy", "Refusal", "Verdict", "is_convention_file", "secret_in_text", "IGNORED_DIRECTORIES"]

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


@dataclass(frozen=True)
class Refusal:
    reason: str


class Verdict(tuple):
    """``(text, refusal)``: the text to write (secrets redacted) or why not; ``redacted`` names what was redacted."""

    redacted: tuple[str, ...]

    def __new__(cls, text: str | None, refusal: Refusal | None, redacted: tuple[str, ...] = ()) -> Verdict:
        verdict = super().__new__(cls, (text, refusal))
        verdict.redacted = tuple(redacted)
        return verdict

    @property
    def text(self) -> str | None:
        return self[0]

    @property
    def refusal(self) -> Refusal | None:
        return self[1]


def secret_in_text(text: str, name: str | None = None) -> str | None:
    """What secret ``text`` holds (kinds and detectors), or None."""
    findings = secret_scan.scan(text, name)
    return "; ".join(dict.fromkeys(f.label for f in findings)) or None


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
                        pattern = (
                            f"{base}/{pattern.lstrip('/')}" if "/" in pattern.rstrip("/") else f"{base}/**/{pattern}"
                        )
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
            if path.is_symlink():
                return Refusal(f"a symbolic link that leads outside the workspace folder (to {path.resolve()})")
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

    def check_file(self, path: Path) -> Verdict:
        """(text, None) when the file may be written (its secrets redacted), (None, why not) otherwise.

        Reads the file: call it off the event loop.
        """
        refusal = self.check_path(path)
        if refusal is not None:
            return Verdict(None, refusal)
        relative = self.relative(path)
        try:
            if path.is_symlink() and not path.exists():
                return Verdict(None, Refusal(f"a dangling symbolic link (to {path.readlink()})"))
            if path.exists() and not path.is_file():
                return Verdict(None, Refusal("not a regular file"))
            size = path.stat().st_size
            if size > self.max_file_bytes:
                return Verdict(None, Refusal(f"over the size cap ({size} > {self.max_file_bytes} bytes)"))
            data = path.read_bytes()
        except OSError as error:
            return Verdict(None, Refusal(f"cannot be read: {error.strerror or error}"))
        return self.check_text_bytes(data, relative.as_posix())

    def check_text_bytes(self, data: bytes, name: str | None = None) -> Verdict:
        if len(data) > self.max_file_bytes:
            return Verdict(None, Refusal(f"over the size cap ({len(data)} > {self.max_file_bytes} bytes)"))
        if b"\0" in data[:8192]:
            return Verdict(None, Refusal("binary"))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return Verdict(None, Refusal("binary (not UTF-8 text)"))
        return self.check_text(text, name)

    def check_document(self, text: str) -> Refusal | None:
        """Whether an open document may be diffed at all: over the size cap or binary (NUL characters).

        Cheap (no scan, no copy of the text): call it before computing an edit's diff.
        """
        if len(text) > self.max_file_bytes or len(text.encode("utf-8", "surrogatepass")) > self.max_file_bytes:
            return Refusal(f"over the size cap ({self.max_file_bytes} bytes)")
        if "\0" in text:
            return Refusal("binary")
        return None

    def check_text(self, text: str, name: str | None = None) -> Verdict:
        """The text to write, its secrets redacted, or why not; ``name``: the file it comes from (None: free text).

        Scans every line: call it off the event loop for anything long.
        """
        if len(text.encode("utf-8", "surrogatepass")) > self.max_file_bytes:
            return Verdict(None, Refusal(f"over the size cap ({self.max_file_bytes} bytes)"))
        screened = secret_scan.screen(text, name)
        if screened.refused:
            return Verdict(None, Refusal(screened.refused))
        return Verdict(screened.text, None, screened.redacted)
