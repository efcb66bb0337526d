"""Configuration: a TOML file validated by pydantic, plus secrets from the environment.

Every problem is reported as `file: key: what is wrong: how to fix`, all at once, so a user fixes
a config in one pass. Secrets are never read from the file and never printed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

DEFAULT_PATH = Path("config.toml")
MAX_BYTES = 1 << 20  # a config is a few KiB: anything past 1 MiB is the wrong file
SQLITE_HEADER = b"SQLite format 3\x00"


class Section(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    # inf/nan are valid TOML floats, and an infinite timeout is never what anyone meant
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Section):
    model: str = "gpt-4.1-mini"
    api: Literal["responses", "chat_completions"] = "responses"
    base_url: str = ""
    instructions: str = "You are a helpful assistant."
    max_turns: int = Field(10, ge=1, le=100)
    max_output_tokens: int | None = Field(None, ge=1)  # per model call; None: the model's own
    # OpenAI reasoning models stream a summary of their reasoning only when asked (Responses API;
    # a model that does not reason rejects the request): "auto", "concise" or "detailed"
    reasoning_summary: Literal["off", "auto", "concise", "detailed"] = "off"
    tracing: bool = False  # send Agents SDK traces to OpenAI; off so nothing leaves by surprise


class StreamConfig(Section):
    cursor: str = Field(" ▌", max_length=8)
    placeholder: str = Field("…", min_length=1, max_length=200)
    stopped_marker: str = Field("⏹ stopped", min_length=1, max_length=100)
    final_deadline: float = Field(300.0, gt=0)  # keep retrying the final frame this long (s)
    max_retries: int = Field(5, ge=0, le=50)  # for intermediate frames
    slow_notice: float = Field(8.0, gt=0)  # no text yet after this long: say the model is slow
    first_token_timeout: float = Field(60.0, gt=0)  # no output at all this long: give up
    stall_timeout: float = Field(60.0, gt=0)  # silence mid-answer this long: give up
    max_reply_chars: int = Field(30000, ge=0)  # the answer is cut there, with a note; 0: no cap
    shutdown_grace: float = Field(20.0, ge=0)  # on SIGTERM, let replies finish this long
    # a reasoning model's thinking is never part of the answer; while it thinks the message shows
    # "💭 thinking…" (status), that plus the tail of its reasoning (summary), or nothing (off)
    show_reasoning: Literal["status", "summary", "off"] = "status"
    interrupted_marker: str = Field(
        "⚠️ interrupted — please ask again", min_length=1, max_length=100
    )  # replies cut by a shutdown or crash


class MemoryConfig(Section):
    backend: Literal["sqlite", "redis"] = "sqlite"  # redis: shared by every replica of the bot
    path: str = "streambot.db"  # sqlite backend
    url: str = ""  # redis backend; else env REDIS_URL (a URL with a password belongs there)
    max_items: int = Field(40, ge=0, le=10_000)  # history items sent to the model per turn; 0 = all
    ttl_days: float = Field(0.0, ge=0)  # forget conversations this long after; 0 = keep them
    thread_messages: int = Field(50, ge=0, le=1000)  # earlier messages read when joining a thread


class LimitsConfig(Section):
    """Abuse and cost limits for chat platforms (0 turns a limit off)."""

    max_prompt_chars: int = Field(8000, ge=0)
    max_images: int = Field(4, ge=0)  # pictures per question sent to the model
    max_image_bytes: int = Field(8 << 20, ge=0)  # per picture
    max_files: int = Field(5, ge=0)  # text files and PDFs per question
    max_file_bytes: int = Field(10 << 20, ge=0)  # per file, as downloaded
    max_file_chars: int = Field(20_000, ge=0)  # text the model reads of one file; cut with a note
    user_concurrent: int = Field(2, ge=0)  # replies one person may have streaming at once
    user_per_minute: int = Field(10, ge=0)  # questions one person may ask per minute
    channel_concurrent: int = Field(10, ge=0)  # replies streaming at once in one channel
    user_tokens_per_day: int = Field(0, ge=0)  # model tokens (input + output) per person per UTC day
    channel_tokens_per_day: int = Field(0, ge=0)  # model tokens per channel per UTC day


class FeedbackConfig(Section):
    enabled: bool = True  # 👍/👎 under every finished answer, stored for `streambot report`


class OpsConfig(Section):
    enabled: bool = False  # off so nothing listens by surprise; the Docker image turns it on
    host: str = "127.0.0.1"  # /metrics and /healthz; "0.0.0.0" inside a container
    port: int = Field(9108, ge=0, le=65535)  # 0 also means off
    log_format: Literal["text", "json"] = "text"


class HandoffConfig(Section):
    """Who a handed-off conversation pings, per chat platform (`[profiles.NAME] handoff`)."""

    slack_group: str = ""  # a user group id, S…
    discord_role: int | None = None  # a role id


class McpServerConfig(Section):
    """One MCP server: a local command (stdio) or a streamable HTTP `url`, never both."""

    name: str = ""  # shown in status lines and errors; default: the command or the URL's host
    command: str = ""
    args: list[str] = []
    env: dict[str, str] = {}  # extra variables for the command (no secrets: see env_from)
    env_from: list[str] = []  # names of this process's variables to pass on (tokens)
    cwd: str = ""
    url: str = ""
    headers: dict[str, str] = {}  # no secrets: see token_env
    token_env: str = ""  # sent as `Authorization: Bearer $VAR` to the url
    timeout: float = Field(10.0, gt=0)  # seconds to connect and per request

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if bool(self.command) == bool(self.url):
            raise ValueError("give either command (a local stdio server) or url (streamable HTTP)")
        return self


class ProfileConfig(ModelConfig):
    """`[profiles.NAME]`: any `[model]` key (unset ones are inherited from `[model]`) plus what
    the profile's agent can look things up with."""

    knowledge: list[str] = []  # folders or files to index, relative to the config file
    docs_url: str = ""  # the published docs' base URL: citations link there instead of to files
    index: str = ""  # the search index file; default: .streambot/NAME.kb.db beside the config file
    tools: list[str] = []  # Python function tools, "package.module:function"
    mcp_servers: list[McpServerConfig] = []
    web_search: bool = False  # the hosted WebSearchTool (api = "responses" only)
    file_search: list[str] = []  # vector store ids for the hosted FileSearchTool (responses only)
    handoff: HandoffConfig | None = None


class RouteConfig(Section):
    """`[[routes]]`: questions matching every given condition get `profile`; first match wins."""

    platform: str = ""  # an adapter name; empty: any
    team_ids: list[str] = []  # workspaces; empty: any
    guild_ids: list[int | str] = []  # servers; empty: any
    channel_ids: list[int | str] = []  # channels (or a thread's parent, or a category); empty: any
    dm: bool | None = None  # true: only direct messages; false: never; unset: either
    profile: str


DEFAULT_PROFILE = "default"  # the name of `[model]` as a profile


S = TypeVar("S", bound=BaseModel)


class Config(Section):
    """The core sections; each adapter's section (`[console]` and every chat platform's) is
    validated by the adapter's own model and kept beside them (see `section`)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    model: ModelConfig = ModelConfig()
    stream: StreamConfig = StreamConfig()
    memory: MemoryConfig = MemoryConfig()
    limits: LimitsConfig = LimitsConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    ops: OpsConfig = OpsConfig()
    profiles: dict[str, ProfileConfig] = {}
    routes: list[RouteConfig] = []
    _base_dir: Path = PrivateAttr(default_factory=lambda: Path("."))
    _source: str = PrivateAttr("built-in defaults")

    @property
    def source(self) -> str:
        """Where this config came from (the file), for error messages."""
        return self._source

    def path(self, value: str) -> Path:
        """A path from the config (knowledge folders): relative ones start at the config
        file's folder, so an example runs from any working directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self._base_dir / p

    def section(self, name: str, model: type[S]) -> S:
        """The adapter section `name` as `model` (its defaults when the file has none)."""
        value = (self.model_extra or {}).get(name)
        if isinstance(value, model):
            return value
        section = model.model_validate(value or {})
        setattr(self, name, section)  # later changes (CLI flags) land on this instance
        return section


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.what}: {self.fix}"


class ConfigError(Exception):
    """All problems found in one config, each on its own line."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


def _fix_for(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "remove it or check its spelling against config.example.toml"
    if kind == "literal_error":
        return f"use {error['ctx']['expected']}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return "pick a value in the documented range (see config.example.toml)"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"give a {kind.split('_')[0]} value"
    return "see config.example.toml for the expected value"


def _problems(exc: ValidationError, file: str, prefix: tuple[str, ...] = ()) -> list[Problem]:
    return [
        Problem(
            file,
            ".".join(str(p) for p in (*prefix, *err["loc"])) or "(top level)",
            err["msg"].lower() if err["type"] != "extra_forbidden" else "unknown key",
            _fix_for(err),
        )
        for err in exc.errors()
    ]


def parse(data: dict[str, Any], file: str, sections: Mapping[str, type[BaseModel]] | None = None) -> Config:
    """Validate parsed TOML data: the core sections, and each adapter section in `sections`
    (name -> model) by its model. Raise ConfigError listing every problem."""
    sections = sections or {}
    problems: list[Problem] = []
    core = {k: v for k, v in data.items() if k not in sections}
    extra = {}
    for name, model in sections.items():
        if name in data:
            try:
                extra[name] = model.model_validate(data[name])
            except ValidationError as exc:
                problems += _problems(exc, file, (name,))
            except RecursionError:
                problems.append(
                    Problem(file, name, "nested too deeply", "a streambot config has at most three levels")
                )
    unknown = [k for k in core if k not in Config.model_fields]
    problems += [Problem(file, k, "unknown key", _fix_for({"type": "extra_forbidden"})) for k in unknown]
    try:
        config = Config.model_validate({k: v for k, v in core.items() if k not in unknown})
    except RecursionError:
        raise ConfigError(
            [Problem(file, "(syntax)", "nested too deeply", "a streambot config has at most three levels")]
        ) from None
    except ValidationError as exc:
        problems = _problems(exc, file) + problems
    else:
        problems += _route_problems(config, file, sections)
    if problems:
        raise ConfigError(problems)
    for name, section in extra.items():
        setattr(config, name, section)
    return config


def _route_problems(config: Config, file: str, sections: Mapping[str, type[BaseModel]]) -> list[Problem]:
    """Routes must name a defined profile and (when the adapters are known) a real platform."""
    known = sorted({DEFAULT_PROFILE, *config.profiles})
    problems = []
    for name, profile in config.profiles.items():
        api = profile.api if "api" in profile.model_fields_set else config.model.api
        hosted = [k for k in ("web_search", "file_search") if getattr(profile, k)]
        if hosted and api != "responses":
            problems.append(
                Problem(
                    file,
                    f"profiles.{name}.{hosted[0]}",
                    "hosted tools need the Responses API",
                    f'set api = "responses" for this profile (it uses {api}), or remove {hosted[0]}',
                )
            )
    for i, route in enumerate(config.routes):
        if route.profile not in known:
            problems.append(
                Problem(
                    file,
                    f"routes.{i}.profile",
                    f"no profile named {route.profile!r}",
                    f"add a [profiles.{route.profile}] table or use one of {', '.join(known)}",
                )
            )
        if sections and route.platform and route.platform not in sections:
            problems.append(
                Problem(
                    file,
                    f"routes.{i}.platform",
                    f"no platform named {route.platform!r}",
                    f"use one of {', '.join(sorted(sections))}, or leave it out to match any",
                )
            )
    return problems


def load(
    path: str | Path | None = None, sections: Mapping[str, type[BaseModel]] | None = None
) -> tuple[Config, str]:
    """Load a config file; with no path, `config.toml` if present, else built-in defaults.
    `sections` are the adapters' section models, as for `parse`.

    Returns the config and the name of where it came from.
    """
    explicit = path is not None
    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.exists():
        if explicit:
            raise ConfigError(
                [
                    Problem(
                        str(p),
                        "(file)",
                        "file not found",
                        "check the path, or copy config.example.toml there",
                    )
                ]
            )
        return Config(), "built-in defaults"
    try:
        with p.open("rb") as f:  # bounded: `check-config /dev/zero` must end
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise ConfigError(
                [Problem(str(p), "(file)", "larger than 1 MiB", "point --config at the bot's TOML file")]
            )
        data = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            [Problem(str(p), "(syntax)", f"not valid TOML ({exc})", "fix the TOML syntax at that line")]
        ) from None
    except RecursionError:
        raise ConfigError(
            [Problem(str(p), "(syntax)", "nested too deeply", "a streambot config has at most three levels")]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [
                Problem(
                    str(p),
                    "(file)",
                    f"cannot read it ({exc.__class__.__name__})",
                    "check the file's permissions and that it is UTF-8 text",
                )
            ]
        ) from None
    config = parse(data, str(p), sections)
    config._base_dir, config._source = p.parent, str(p)
    return config, str(p)


def env(name: str) -> str:
    """A secret or setting from the environment; '' when unset. Never log the value."""
    return os.environ.get(name, "").strip()


def missing_env(file: str, needs: Iterable[tuple[str, str, str]]) -> list[Problem]:
    """A problem for each (variable, config key, why) whose variable is not set."""
    return [
        Problem(file, key, f"{var} is not set ({why})", f"export {var}=... in the bot's environment")
        for var, key, why in needs
        if not env(var)
    ]


def check_env(config: Config, file: str) -> list[Problem]:
    """What the core sections need from the environment but is missing or wrong (each
    adapter adds its own needs: see core/adapter.py)."""
    missing: list[Problem] = []
    if config.memory.backend == "sqlite" and (why := sqlite_unopenable(config.memory.path)):
        missing.append(
            Problem(
                file,
                "memory.path",
                f"cannot open it ({why})",
                "point it at a file SQLite can create or open read-write",
            )
        )
    if config.memory.backend == "redis":
        url = redis_url(config)
        if not url:
            missing.append(
                Problem(
                    file,
                    "memory.url",
                    "the redis backend needs a Redis URL",
                    'set [memory] url = "redis://host:6379/0" or export REDIS_URL=...',
                )
            )
        elif urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            missing.append(
                Problem(
                    file,
                    "memory.url",
                    "not a Redis URL",
                    "use redis://[:password@]host:port/db, rediss://... or unix://...",
                )
            )
        if urlsplit(config.memory.url).password:
            missing.append(
                Problem(
                    file,
                    "memory.url",
                    "holds a password, and secrets never go in the file",
                    "export the whole URL as REDIS_URL and remove memory.url",
                )
            )
    return missing


def sqlite_unopenable(path: str) -> str:
    """Why SQLite could not open (or create) `path` read-write; '' when it could."""
    if not path or path == ":memory:" or path.startswith("file:"):  # "": memory off
        return ""
    p = Path(path)
    if p.is_dir():
        return "it is a folder"
    if p.exists():
        if not os.access(p, os.R_OK | os.W_OK):
            return "no permission to read and write it"
        try:
            with p.open("rb") as f:
                head = f.read(len(SQLITE_HEADER))
        except OSError as exc:
            return exc.strerror or type(exc).__name__
        return "" if not head or head == SQLITE_HEADER else "it is not a SQLite database"
    folder = p.parent
    if not folder.is_dir():
        return f"the folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"no permission to create files in {folder}"
    return ""


def redis_url(config: Config) -> str:
    """`[memory] url`, else env REDIS_URL. It may hold a password: log only `redis_where(url)`."""
    return config.memory.url.strip() or env("REDIS_URL")


def redis_where(url: str) -> str:
    """Where a Redis URL points (host:port/db), without user or password: safe to log."""
    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else parts.netloc.rpartition("@")[2] + parts.path


def uses_demo_model(config: Config) -> bool:
    """True when no real model is configured: no API key and no OpenAI-compatible base URL."""
    return not (env("OPENAI_API_KEY") or config.model.base_url or env("OPENAI_BASE_URL"))
