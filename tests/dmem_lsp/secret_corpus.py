"""A corpus of planted secrets and innocent look-alikes, generated from a seed (nothing real in it).

``planted(seed)`` gives one ``Plant`` per (kind, shape, value): the text, the file it sits in
(None: free text such as a debug step) and the secret values that must not survive. Every kind
comes in several shapes: alone, as a line of a realistic file, and as an added line of a diff.
``innocent()`` gives texts that look like secrets to a careless rule but must be written whole:
git SHAs in docs and configs, lock-file hashes, image digests, references to secrets kept
elsewhere (``os.environ``, ``${VAR}``, ``{{ vault }}``), and ordinary code about passwords and tokens.
"""

from __future__ import annotations

import base64
import random
import string
from dataclasses import dataclass

__all__ = ["Plant", "KINDS", "planted", "innocent"]


@dataclass(frozen=True)
class Plant:
    kind: str
    shape: str
    name: str | None
    text: str
    secrets: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.shape}"


def _chars(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _password(rng: random.Random) -> str:
    """Letters, digits and maybe a symbol, as people pick them (``Hunter2Passw0rdQ``)."""
    word = rng.choice(["Hunter", "Dragon", "Summer", "Falcon", "Notif", "Admin", "Deploy", "Ci"]) + rng.choice(["Db", "Pw", "Pass", "Key", ""])
    return word + _chars(rng, string.ascii_letters, rng.randint(2, 5)) + _chars(rng, string.digits, rng.randint(2, 4)) + rng.choice(["", "_", "!", "Q"])


def _hex(rng: random.Random, n: int = 40) -> str:
    return _chars(rng, "0123456789abcdef", n)


def _b64(rng: random.Random, n: int) -> str:
    return base64.b64encode(rng.randbytes(n)).decode()


def _alnum(rng: random.Random, n: int) -> str:
    return _chars(rng, string.ascii_letters + string.digits, n)


# kind -> (file name or None, template with {s}); the value generator; which file the line sits in
KINDS: dict[str, tuple[str | None, str, object]] = {
    "url password in setup.py": ("setup.py", 'setup(name="pkg", url="https://deploy:{s}@pypi.internal/simple")', _password),
    "url password in tox.ini": ("tox.ini", "setenv = DATABASE_URL=postgres://ci:{s}@db/test", _password),
    "mysql url in compose": ("docker-compose.yml", "      DATABASE_URL: mysql://app:{s}@mysql:3306/app", _password),
    "redis url without user": ("settings.py", 'CACHE = "redis://:{s}@cache:6379/0"', _password),
    "curl -u in package.json": ("package.json", '    "deploy": "curl -u admin:{s} -T dist.tgz https://repo/upload",', _password),
    "curl --user in Makefile": ("Makefile", "\tcurl --user ci:{s} https://repo/api", _password),
    "--password flag": ("tox.ini", "commands = twine upload --password {s} dist/*", _password),
    "sshpass -p": (None, "sshpass -p {s} ssh deploy@host", _password),
    "mysql -p": (None, "mysql -u root -p{s} app < dump.sql", _password),
    "API_KEY hex": ("settings.py", 'API_KEY = "{s}"', _hex),
    "X-Api-Key header": (None, "curl -H 'X-Api-Key: {s}' https://api.example.com/v1", _hex),
    "token hex completion": ("app.py", "token = '{s}'", _hex),
    "POSTGRES_PASSWORD compose": ("docker-compose.yml", "      POSTGRES_PASSWORD: {s}", _password),
    "password: in a debug step": (None, "password: {s}", _password),
    "DB_PASS in a notification": (None, "db login failed: DB_PASS={s}", _password),
    "password in prose": (None, "connection refused for user ci with password {s} (pg_hba.conf)", _password),
    "AWS access key id": ("settings.py", 'AWS_ACCESS_KEY_ID = "AKIA{s}"', lambda r: _chars(r, string.ascii_uppercase + string.digits, 16)),
    "AWS secret key": ("setup.cfg", "aws_secret_access_key = {s}", lambda r: _alnum(r, 40)),
    "GitHub ghp": ("README.md", "export GH_TOKEN=ghp_{s}", lambda r: _alnum(r, 36)),
    "GitHub fine-grained": (None, "github_pat_{s}", lambda r: _alnum(r, 22) + "_" + _alnum(r, 59)),
    "GitLab token": ("package.json", '    "gitlab": "glpat-{s}",', lambda r: _alnum(r, 20)),
    "Slack bot token": ("app.py", 'SLACK = "xoxb-{s}"', lambda r: "-".join((_chars(r, string.digits, 12), _chars(r, string.digits, 13), _alnum(r, 24)))),
    "Slack webhook": ("settings.py", 'HOOK = "https://hooks.slack.com/services/T{s}"', lambda r: _alnum(r, 8).upper() + "/B" + _alnum(r, 8).upper() + "/" + _alnum(r, 24)),
    "Stripe live key": ("settings.py", 'STRIPE = "sk_live_{s}"', lambda r: _alnum(r, 24)),
    "OpenAI key": (None, "OPENAI_API_KEY=sk-proj-{s}", lambda r: _alnum(r, 48)),
    "Hugging Face token": (None, "HF_TOKEN=hf_{s}", lambda r: _alnum(r, 34)),
    "Google API key": ("app.js", 'const key = "AIza{s}";', lambda r: _chars(r, string.ascii_letters + string.digits + "_-", 35)),
    "JWT": (None, "Authorization: Bearer eyJ{s}", lambda r: _alnum(r, 30) + "." + _alnum(r, 40) + "." + _alnum(r, 30)),
    "Authorization Basic": (None, "Authorization: Basic {s}", lambda r: _b64(r, 24)),
    "npm token": ("package.json", '    "token": "npm_{s}",', lambda r: _alnum(r, 36)),
    "PyPI token": ("setup.cfg", "password = pypi-AgEIcHlwaS5vcmc{s}", lambda r: _chars(r, string.ascii_letters + string.digits + "_-", 70)),
    "SendGrid key": ("settings.py", 'SENDGRID = "SG.{s}"', lambda r: _alnum(r, 22) + "." + _alnum(r, 43)),
    "Twilio key": ("settings.py", 'TWILIO = "SK{s}"', lambda r: _hex(r, 32)),
    "Mailchimp key": ("settings.py", 'MAILCHIMP = "{s}-us12"', lambda r: _hex(r, 32)),
    "Azure storage key": (None, "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={s}", lambda r: _b64(r, 64)),
    "Django SECRET_KEY": ("settings.py", "SECRET_KEY = 'django-insecure-{s}'", lambda r: _chars(r, string.ascii_lowercase + string.digits + "!@#%^&*-=+", 50)),
    "client_secret yaml": (".pre-commit-config.yaml", "  client_secret: {s}", lambda r: _alnum(r, 32)),
    "export DB_PASSWORD": ("README.md", "    export DB_PASSWORD={s}", _password),
    "docker run -e": (None, "docker run -e MYSQL_ROOT_PASSWORD={s} mysql:8", _password),
    "JSON password": ("package.json", '  "password": "{s}",', _password),
    "XML password": ("pom.xml", "      <password>{s}</password>", _password),
    "ini password": ("setup.cfg", "password = {s}", _password),
    "Go password": ("main.go", 'password := "{s}"', _password),
    "Java password": ("App.java", 'String password = "{s}";', _password),
    "PGPASSWORD": (None, "PGPASSWORD={s} psql -h db -U ci", _password),
    "Heroku key (uuid)": (None, "HEROKU_API_KEY={s}", lambda r: "-".join(_hex(r, n) for n in (8, 4, 4, 4, 12))),
    "quoted base64 secret": ("app.py", 'SIGNING = "{s}"', lambda r: _b64(r, 33)),
    "quoted hex in a dict": ("app.py", 'CONFIG = {{"upload": "{s}"}}', _hex),
    "api-key in TOML": ("pyproject.toml", 'api-key = "{s}"', lambda r: _alnum(r, 32)),
    "bearer in a trace": (None, "requests.exceptions.HTTPError: 401 for url https://api/x?access_token={s}", lambda r: _alnum(r, 32)),
}

PRIVATE_KEYS = {
    "RSA private key": "-----BEGIN RSA PRIVATE KEY-----\n{s}\n-----END RSA PRIVATE KEY-----",
    "OpenSSH private key": "-----BEGIN OPENSSH PRIVATE KEY-----\n{s}\n-----END OPENSSH PRIVATE KEY-----",
    "EC private key": "-----BEGIN EC PRIVATE KEY-----\n{s}\n-----END EC PRIVATE KEY-----",
    "PGP private key": "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{s}\n-----END PGP PRIVATE KEY BLOCK-----",
    "PKCS8 private key": "-----BEGIN PRIVATE KEY-----\n{s}\n-----END PRIVATE KEY-----",
}

FILLER = {
    "setup.py": "from setuptools import setup\n\n# the package's metadata lives in setup.cfg\n",
    "tox.ini": "[tox]\nenvlist = py311, lint\n\n[testenv]\ndeps = pytest\n",
    "docker-compose.yml": "services:\n  db:\n    image: postgres:16\n    environment:\n",
    "package.json": '{\n  "name": "web",\n  "version": "1.0.0",\n  "scripts": {\n    "test": "vitest",\n',
    "Makefile": "test:\n\tpytest -q\n\nrelease:\n",
    "settings.py": '"""Settings."""\n\nDEBUG = False\nALLOWED_HOSTS = ["example.com"]\n',
    "app.py": "import os\n\n\ndef main() -> None:\n    print('hello')\n\n",
    "setup.cfg": "[metadata]\nname = pkg\n\n[options]\npackages = find:\n\n[upload]\nrepository = internal\n",
    "README.md": "# Project\n\nRun the tests with `pytest`. Deploy from CI only.\n\n",
    "app.js": "import { main } from './main.js';\n\n",
    ".pre-commit-config.yaml": "repos:\n  - repo: https://github.com/astral-sh/ruff-pre-commit\n    rev: v0.6.9\n",
    "pom.xml": "<project>\n  <servers>\n    <server>\n      <id>internal</id>\n      <username>ci</username>\n",
    "main.go": "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n",
    "App.java": "public class App {\n    public static void main(String[] args) {\n",
    "pyproject.toml": '[project]\nname = "pkg"\nversion = "1.0"\n\n[tool.upload]\n',
}
PROSE = (
    "Steps to reproduce: run the deploy job, then open the dashboard; the request fails and the log "
    "says the following, which is why the release was held back until the credentials are rotated.\n"
)


def planted(seed: int = 0, values: int = 3) -> list[Plant]:
    """Every kind, in every shape, with ``values`` random secrets each."""
    rng = random.Random(seed)
    plants = []
    for kind, (name, template, make) in KINDS.items():
        for index in range(values):
            secret = make(rng)  # type: ignore[operator]
            line = template.format(s=secret)
            filler = FILLER.get(name or "", PROSE)
            shapes = {
                "alone": (name, line),
                "in its file": (name, filler + line + "\n" + filler),
                "in free text": (None, PROSE + line + "\n" + PROSE),
                "in a diff": (name, f"--- {name or 'notes.txt'}\n+++ {name or 'notes.txt'}\n@@ -1,3 +1,4 @@\n " + "\n ".join(filler.splitlines()[:3]) + f"\n+{line}\n"),
            }
            for shape, (where, text) in shapes.items():
                plants.append(Plant(kind, f"{shape} #{index}", where, text, (secret,)))
    for kind, template in PRIVATE_KEYS.items():
        body = "\n".join(_b64(rng, 48) for _ in range(6))
        for shape, (where, text) in {
            "alone": ("id_deploy.txt", template.format(s=body)),
            "in free text": (None, PROSE + template.format(s=body) + "\n" + PROSE),
        }.items():
            plants.append(Plant(kind, shape, where, text, tuple(body.splitlines())))
    return plants


INNOCENT: list[tuple[str | None, str]] = [
    ("README.md", "Fixed in commit 3f786850e387550fdab836ed7e6dc881de23001b; see also a94a8fe5ccb19ba61c4c0873d391e987982fbbd3.\n"),
    ("CHANGELOG.md", "- 1.2.0 (9fceb02d0ae598e95dc970b74767f19372d61af8): faster start-up\n"),
    ("app.py", "sha = '3f786850e387550fdab836ed7e6dc881de23001b'\n"),
    ("app.py", "EXPECTED_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'\n"),
    (".pre-commit-config.yaml", "  - repo: https://github.com/psf/black\n    rev: 8fe627072f15ff2e3d380887b92f7868efaf6d05\n"),
    ("docker-compose.yml", "    image: nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31\n"),
    ("package-lock.json", '      "integrity": "sha512-QbRmJzjMU3WSfXpuMlgwGBRtmqUy/S34KLcnMrxNqXp7vZ6fk/ycU7SzyTaQKk0WOeGNwl4Z5pe3aIiyT2D8lw==",\n'),
    ("poetry.lock", 'files = [\n    {file = "six-1.16.0.tar.gz", hash = "sha256:1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926"},\n]\n'),
    ("go.sum", "golang.org/x/text v0.14.0 h1:ScX5w1eTa3QqT8oi6+ziP7dTV1S2+ALU0bI+0zXKWiQ=\n"),
    ("Cargo.lock", 'checksum = "d7a8d2c4f7e1b2a9f1d0c3e6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6"\n'),
    ("settings.py", "password = os.environ['DB_PASSWORD']\napi_key = os.getenv('API_KEY')\nSECRET_KEY = get_secret('django')\n"),
    ("docker-compose.yml", "      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD}\n      API_TOKEN: ${API_TOKEN:-}\n"),
    ("deploy.yml", "    password: \"{{ vault_db_password }}\"\n"),
    ("settings.py", "SECRET_KEY = None\nPASSWORD_MIN_LENGTH = 12\nTOKEN_TTL_SECONDS = 3600\n"),
    ("app.py", "def check_password(password: str, hashed: bytes) -> bool:\n    return bcrypt.checkpw(password.encode(), hashed)\n"),
    ("app.py", "if password != confirmation:\n    raise ValueError('the passwords differ')\n"),
    ("app.py", "tokens = tokenizer.encode(text)\nmax_tokens = 64\ntoken = tokens[0]\n"),
    ("app.py", "api_key = settings.api_key\nauth = HTTPBasicAuth(user, password)\n"),
    ("README.md", "Set the password with `--password` or the `DB_PASSWORD` variable; the token expires after an hour.\n"),
    ("README.md", "The password field is required. Reset your password from the profile page.\n"),
    ("app.css", ".button { color: #ff00aa; background: #123456; }\n"),
    ("app.py", "very_long_identifier_name_for_a_function_in_this_module()\n"),
    ("app.py", "request_id = '6f1c2a0e-3b4d-4c5e-9f60-718293a4b5c6'\n"),
    (None, "Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>\n    main()\nKeyError: 'password'\n"),
    (None, "FAILED tests/test_auth.py::test_token_refresh - AssertionError: expected 401, got 200\n"),
    ("tsconfig.json", '{ "compilerOptions": { "strict": true, "target": "es2022" } }\n'),
    ("pyproject.toml", '[tool.ruff]\nline-length = 100\n\n[tool.pytest.ini_options]\naddopts = "-q"\n'),
    ("app.py", "CLIENT_KEY = \"client\"\nPASSWORD_FIELD = \"password\"\n"),
    ("app.js", "const url = `https://${host}:${port}/api`;\nfetch(url, { headers: { Authorization: `Bearer ${token}` } });\n"),
    ("README.md", "Connect with `psql postgres://user:password@localhost/db` (replace password with yours).\n"),
    ("app.py", 'secret_type = "GitHub Token"\npassword_field = "user_password_v2"\n'),
    ("README.md", "A Twilio key looks like `SKxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx`; proxies like socks5://user:<password>@host.\n"),
    ("app.py", "# see https://hg.python.org/cpython/file/7aaba721ebc0/Lib/socket.py#l252\n"),
    ("app.py", "ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'\n"),
    ("app.py", "key_" * 400 + "= 1\n"),
]
"""(file, text) that must be written whole. The last one's ``user:password`` is a placeholder word, not a secret."""


def innocent() -> list[tuple[str | None, str]]:
    return list(INNOCENT)
