"""The Discord adapter: answers mentions, DMs, replies and `/ask` by streaming through the relay.

It stays thin. The relay decides what each message shows and the shared pacer decides when a
request may go out; this module only posts, edits, continues in new messages, and reports user
actions (the Stop button, deleted messages, shutdown) back to the relay as `reply.stop()`.

Rate limits: Discord allows about 5 message creates/edits per 5 s per channel and 50 requests/s
per bot. Every reply in a channel draws from one pacer budget per channel (`edits_per_5s`, 4 by
default, per 5.5 s: see JITTER) and from one global budget, so the newest frame is coalesced
*before* it reaches discord.py. discord.py still keeps its own per-bucket queues
and 429 handling underneath, as a safety net that should never fire.

`[discord] api_base` points one client - REST, interaction webhooks and the gateway - at a proxy
or a fake without touching discord.py's process-wide `Route.BASE` (see `_RebasedHTTP`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.http import HTTPClient, Route
from discord.utils import MISSING

from core.config import Config, DiscordConfig, env
from core.errors import SetupError
from core.limits import FINAL_GRACE, RESTARTING, Gate, Refused, Slot
from core.logs import tag_reply
from core.ops import register_ready
from core.pacing import Pacer
from core.platform import Frame, MessageGone, Op, Rate, RateLimited, Target, TransientError
from core.relay import Outcome, Reply
from core.sources import Brain
from core.state import ReplyRecord, StateStore, repair_orphans

log = logging.getLogger("streambot.discord")

# Discord counts a bucket's window from the first request it *receives*; our pacer counts from
# when it *grants*. Grants come in bursts exactly one window apart (each waits for the oldest to
# expire), so a few ms of network jitter can land a burst inside Discord's previous window. Padding
# our windows by more than the jitter keeps every Discord window at or under our count.
JITTER = 0.5
WINDOW = 5.0 + JITTER  # Discord: ~5 message creates/edits per 5 s per channel
GLOBAL_RATE = Rate(45, 1.0 + JITTER / 5)  # Discord: 50 requests/s; the rest: typing, callbacks
STOP_PREFIX = "streambot:stop:"
MAX_CHAIN_HOPS = 40  # how far up a reply chain to look for its first message after a restart
KEY_CACHE = 20_000  # message id -> conversation key entries kept in memory
TYPING_EVERY = 8.0  # Discord shows "is typing" for ~10 s per request


class DiscordSetupError(SetupError):
    """The bot cannot run as configured; the message says what to change."""


# --- set-up facts: intents, permissions, invite -----------------------------------------------


def intents() -> discord.Intents:
    """Exactly the gateway intents the bot needs. Message Content is privileged."""
    wanted = discord.Intents.none()
    wanted.guilds = True  # channels, threads and roles, for access checks
    wanted.guild_messages = True  # mentions and replies in servers, and their deletion
    wanted.dm_messages = True
    wanted.message_content = True  # to read the question
    return wanted


def permissions(config: DiscordConfig) -> discord.Permissions:
    """Exactly the channel permissions the bot uses."""
    needed = discord.Permissions(view_channel=True, send_messages=True,
                                 send_messages_in_threads=True, read_message_history=True)
    if config.open_threads:
        needed.create_public_threads = True
    return needed


def invite_url(app_id: int, config: DiscordConfig) -> str:
    return discord.utils.oauth_url(app_id, permissions=permissions(config),
                                   scopes=("bot", "applications.commands"))


_UI_NAMES = {"read_messages": "View Channels", "send_messages": "Send Messages",
             "send_messages_in_threads": "Send Messages in Threads",
             "read_message_history": "Read Message History",
             "create_public_threads": "Create Public Threads"}


def _setup_summary(app_id: int, config: DiscordConfig) -> str:
    perms = ", ".join(_UI_NAMES.get(name, name) for name, on in permissions(config) if on)
    return (f"invite the bot with {invite_url(app_id, config)}\n"
            f"  permissions: {perms}; scopes: bot, applications.commands\n"
            "  gateway intents: Guilds, Guild Messages, Direct Messages, Message Content "
            f"(privileged: enable it at {_portal(app_id)} under Privileged Gateway Intents)")


def _portal(app_id: int | None) -> str:
    base = "https://discord.com/developers/applications"
    return f"{base}/{app_id}/bot" if app_id else base


def _budgets(key: str, config: DiscordConfig) -> list[tuple[str, Rate]]:
    """A message create or edit in one channel (or interaction): its bucket plus the global one."""
    return [(key, Rate(config.edits_per_5s, WINDOW)), ("discord:global", GLOBAL_RATE)]


def _place_key(channel: Any, guild_id: int | None) -> str | None:
    """A thread or a DM is one conversation; elsewhere it is the reply chain (None here)."""
    if isinstance(channel, discord.Thread):
        return f"discord:thread:{channel.id}"
    return f"discord:dm:{channel.id}" if guild_id is None else None


# --- access ----------------------------------------------------------------------------------


def is_allowed(config: DiscordConfig, *, user_id: int, role_ids: set[int], guild_id: int | None,
               channel_ids: set[int]) -> bool:
    """Whether to answer this person here. Blocklists win; allowlists are off when empty.

    `channel_ids` holds the channel plus its thread parent and category, so listing a category
    or a parent channel covers everything under it. Users and roles allow as one group: with
    `user_ids` or `role_ids` set, a person needs to be listed or to hold a listed role (so in
    DMs, where there are no roles, only `user_ids` can allow them).
    """
    if user_id in config.blocked_user_ids or role_ids & set(config.blocked_role_ids):
        return False
    if guild_id is None:
        if not config.allow_dms:
            return False
    else:
        if guild_id in config.blocked_guild_ids or (config.guild_ids and guild_id not in config.guild_ids):
            return False
        if channel_ids & set(config.blocked_channel_ids):
            return False
        if config.channel_ids and not channel_ids & set(config.channel_ids):
            return False
    if config.user_ids or config.role_ids:
        return user_id in config.user_ids or bool(role_ids & set(config.role_ids))
    return True


def _channel_ids(channel: Any) -> set[int]:
    ids = {channel.id}
    parent = getattr(channel, "parent", None)
    for c in (channel, parent):
        for attr in ("parent_id", "category_id"):
            if (value := getattr(c, attr, None)) is not None:
                ids.add(value)
    return ids


def _role_ids(user: discord.abc.User) -> set[int]:
    return {r.id for r in getattr(user, "roles", [])}


# --- pointing one client at a proxy ------------------------------------------------------------


class _RebasedSession:
    """The client's aiohttp session with discord.com URLs rewritten to `api_base`.

    discord.py sends REST calls, interaction webhooks and the gateway connection through this
    one session, so wrapping it redirects all three for this client only.
    """

    def __init__(self, session: aiohttp.ClientSession, http: _RebasedHTTP) -> None:
        self._session = session
        self._http = http

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def request(self, method: str, url: Any, **kwargs: Any) -> Any:
        return self._session.request(method, self._http.rebase(str(url)), **kwargs)

    async def ws_connect(self, url: Any, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        return await self._session.ws_connect(await self._http.gateway_for(str(url)), **kwargs)


class _RebasedHTTP(HTTPClient):
    """discord.py's HTTP client for a bot behind `api_base`.

    `Route.BASE` is a class attribute shared by every client in the process, so instead of
    changing it this subclass intercepts the private session discord.py stores (a property
    named after the mangled `_HTTPClient__session`) and wraps it in `_RebasedSession`. A plain
    client connects to the hard-coded `wss://gateway.discord.gg` whenever it (re)identifies;
    that URL is replaced by the one `GET /gateway/bot` returns through `api_base`.
    """

    def __init__(self, api_base: str, original: HTTPClient) -> None:
        super().__init__(original.loop, None if original.connector is MISSING else original.connector,
                         proxy=original.proxy, proxy_auth=original.proxy_auth,
                         unsync_clock=not original.use_clock, http_trace=original.http_trace,
                         max_ratelimit_timeout=original.max_ratelimit_timeout)
        self.api_base = api_base.rstrip("/")

    @property
    def _HTTPClient__session(self) -> Any:  # noqa: N802 - the name discord.py reads and writes
        return self.__dict__.get("_rebased_session", MISSING)

    @_HTTPClient__session.setter
    def _HTTPClient__session(self, session: Any) -> None:  # noqa: N802
        wrapped = session if session is MISSING else _RebasedSession(session, self)
        self.__dict__["_rebased_session"] = wrapped

    def rebase(self, url: str) -> str:
        return self.api_base + url[len(Route.BASE):] if url.startswith(Route.BASE) else url

    async def gateway_for(self, url: str) -> str:
        wanted = yarl.URL(url)
        if not (wanted.host or "").endswith(".discord.gg"):  # the default or a resume gateway
            return url  # a URL the proxy (or fake) handed out: already behind it
        _, gateway, _ = await self.get_bot_gateway()
        return str(yarl.URL(gateway).with_query(wanted.query))


# --- targets: where one reply goes -------------------------------------------------------------


_NO_PINGS = discord.AllowedMentions.none


@contextlib.contextmanager
def _platform_errors() -> Iterator[None]:
    """Translate discord.py's errors into the relay's: gone, rate limited, transient."""
    try:
        yield
    except discord.NotFound as exc:  # Unknown Message / Channel / Webhook: it was deleted
        raise MessageGone(str(exc)) from exc
    except discord.RateLimited as exc:  # discord.py refused to wait longer than max_ratelimit_timeout
        raise RateLimited(exc.retry_after) from exc
    except discord.DiscordServerError as exc:
        raise TransientError(str(exc)) from exc
    except discord.HTTPException as exc:
        if exc.status == 429:
            retry = exc.response.headers.get("Retry-After", "1") if exc.response else "1"
            raise RateLimited(float(retry)) from exc
        if exc.status >= 500:
            raise TransientError(str(exc)) from exc
        raise
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc


class _DiscordTarget(Target):
    """What both targets share: limits, the Stop button, deleted-message bookkeeping."""

    platform = "discord"

    def __init__(self, bot: DiscordBot, reply_id: int, key: str, budget_key: str) -> None:
        self.bot = bot
        self.reply_id = reply_id
        self.key = key  # the conversation, remembered for every page so replies to it continue
        self.page_limit = bot.settings.page_chars
        per_window = bot.settings.edits_per_5s
        self._budgets = _budgets(budget_key, bot.settings)
        # Spread one reply's edits over the window instead of spending it in a burst: otherwise a
        # quick answer uses every slot on half-written frames and its final text waits ~5 s.
        # The key sorts before the others: the pacer takes budgets in key order, recording a
        # slot in each as it goes, so the one that waits longest must come first.
        self._edit_budgets = [(f"discord:burst:{reply_id}", Rate(1, WINDOW / per_window)),
                              *self._budgets]
        self.messages: list[Any] = []
        self.gone: set[int] = set()

    def budgets(self, op: Op) -> list[tuple[str, Rate]]:
        return self._edit_budgets if op == "edit" else self._budgets

    def locate(self, handle: Any) -> dict[str, Any]:
        return {"channel": handle.channel.id, "message": handle.id}

    def _view(self, frame: Frame) -> discord.ui.View | None:
        return stop_view(self.reply_id) if frame.streaming else None

    def _posted(self, message: Any) -> Any:
        self.messages.append(message)
        self.bot.track(message.id, self.reply_id, self.key)
        return message

    async def edit(self, handle: Any, frame: Frame) -> None:
        if handle.id in self.gone:  # deleted: no request at all, and the relay stops
            raise MessageGone(f"message {handle.id} was deleted")
        with _platform_errors():
            await handle.edit(content=frame.text, allowed_mentions=_NO_PINGS(), view=self._view(frame))


class ChannelTarget(_DiscordTarget):
    """A reply in a channel, thread or DM: the first page replies to the question, each
    continuation replies to the page before it (so pages of concurrent replies stay linked)."""

    def __init__(self, bot: DiscordBot, reply_id: int, key: str, channel: discord.abc.Messageable,
                 question: discord.Message | None) -> None:
        super().__init__(bot, reply_id, key, f"discord:channel:{getattr(channel, 'id', reply_id)}")
        self.channel = channel
        self.question = question

    async def post(self, frame: Frame) -> discord.Message:
        ping = self.bot.settings.reply_ping
        refers_to = self.question if frame.index == 0 else (self.messages[-1] if self.messages else None)
        options: dict[str, Any] = {}
        if refers_to is not None:
            options["reference"] = refers_to.to_reference(fail_if_not_exists=False)
        mentions = discord.AllowedMentions(everyone=False, users=False, roles=False,
                                           replied_user=ping and frame.index == 0)
        # Discord may create the message and still answer 5xx or drop the connection; the
        # retried create then carries the same nonce, which Discord (enforce_nonce) answers with
        # the message it already made instead of posting it twice. That message shows the
        # first attempt's frame, so it is brought up to this one.
        nonce = f"{self.reply_id}:{frame.index}"  # at most 25 characters
        with _platform_errors():
            message = await self.channel.send(frame.text, allowed_mentions=mentions, nonce=nonce,
                                              view=self._view(frame) or MISSING, **options)
            if message.content.strip() != frame.text.strip():
                await message.edit(content=frame.text, allowed_mentions=_NO_PINGS(),
                                   view=self._view(frame))
        return self._posted(message)


class InteractionTarget(_DiscordTarget):
    """A reply to `/ask`: the deferred original response first, then follow-up messages.

    Interaction tokens last 15 minutes; a reply streaming longer than that cannot be edited.
    """

    def __init__(self, bot: DiscordBot, interaction: discord.Interaction, key: str) -> None:
        super().__init__(bot, interaction.id, key, f"discord:interaction:{interaction.id}")
        self.interaction = interaction

    def locate(self, handle: Any) -> dict[str, Any]:
        # The response is the interaction's webhook message: only its token may edit it.
        return {**super().locate(handle), "application": self.interaction.application_id,
                "token": self.interaction.token}

    async def post(self, frame: Frame) -> discord.Message:
        with _platform_errors():
            if frame.index == 0:
                message = await self.interaction.edit_original_response(
                    content=frame.text, allowed_mentions=_NO_PINGS(), view=self._view(frame))
            else:
                message = await self.interaction.followup.send(
                    frame.text, allowed_mentions=_NO_PINGS(), view=self._view(frame) or MISSING,
                    wait=True)
        return self._posted(message)


# --- the Stop button -----------------------------------------------------------------------------


class StopButton(discord.ui.DynamicItem[discord.ui.Button], template=STOP_PREFIX + r"(?P<id>[0-9]+)"):
    """Stops the reply named in its custom_id. Matched by pattern, so a click is understood by
    any process (a button left by a crashed run is cleaned up instead of doing nothing)."""

    def __init__(self, reply_id: int) -> None:
        super().__init__(discord.ui.Button(style=discord.ButtonStyle.secondary, label="Stop",
                                           emoji="⏹️", custom_id=f"{STOP_PREFIX}{reply_id}"))
        self.reply_id = reply_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> StopButton:
        return cls(int(match["id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = interaction.client
        if isinstance(bot, DiscordBot):
            await bot.on_stop_click(interaction, self.reply_id)


def stop_view(reply_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(StopButton(reply_id))
    return view


# --- the bot -----------------------------------------------------------------------------------


@dataclass
class _Active:
    reply: Reply
    target: _DiscordTarget
    asker_id: int
    done: asyncio.Event = field(default_factory=asyncio.Event)


class DiscordBot(discord.AutoShardedClient):
    """One Discord connection (all shards) answering through the shared brain and pacer."""

    def __init__(self, config: Config, brain: Brain, pacer: Pacer, store: StateStore | None = None,
                 gate: Gate | None = None) -> None:
        self.config = config
        self.settings = config.discord
        self.brain = brain
        self.pacer = pacer
        self.store = store
        self.gate = gate or Gate(config.limits)
        self.closing = False  # shutting down: no new replies
        self._recovery: asyncio.Task[None] | None = None
        super().__init__(
            intents=intents(),
            allowed_mentions=discord.AllowedMentions.none(),  # model output never pings
            shard_count=self.settings.shard_count,
            shard_ids=self.settings.shard_ids or None,
            max_ratelimit_timeout=30.0,  # longer waits reach the relay as RateLimited
            chunk_guilds_at_startup=False,
            member_cache_flags=discord.MemberCacheFlags.none(),
        )
        if self.settings.api_base:
            self.http = self._connection.http = _RebasedHTTP(self.settings.api_base, self.http)
        self.tree = app_commands.CommandTree(self)

        @self.tree.command(name="ask", description="Ask the model; the answer streams in as it is written")
        @app_commands.describe(prompt="Your question")
        async def ask(interaction: discord.Interaction, prompt: str) -> None:
            await self._ask_command(interaction, prompt)

        self.active: dict[int, _Active] = {}  # reply id -> the running reply
        self._watched: dict[int, int] = {}  # message id (question or page) -> reply id
        self._keys: OrderedDict[int, str] = OrderedDict()  # message id -> conversation key
        self._typing: dict[int, tuple[int, asyncio.Task[None]]] = {}

    # --- start-up --------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        self.add_dynamic_items(StopButton)
        if self.store is not None:  # REST works from here on: finish what a crash left
            self._recovery = asyncio.create_task(repair_orphans(self.store, "discord", self._repair))
        app_id = self.application_id or 0
        log.info("Discord: %s", _setup_summary(app_id, self.settings))
        flags = self.application_flags
        if not (flags.gateway_message_content or flags.gateway_message_content_limited):
            log.warning("Discord: the Message Content intent looks disabled for this app; enable "
                        "it at %s (Privileged Gateway Intents) or the bot cannot read questions",
                        _portal(app_id))
        if self.settings.sync_commands:
            try:
                await self.tree.sync()
            except discord.HTTPException as exc:
                log.warning("Discord: could not register /ask (%s); mentions and DMs still work", exc)

    async def on_ready(self) -> None:
        log.info("Discord: connected as %s (%s) to %d server(s)", self.user,
                 getattr(self.user, "id", "?"), len(self.guilds))
        if not self.guilds:  # the URL is what the operator needs next: make it visible
            log.warning("Discord: the bot is not in any server yet; %s",
                        invite_url(self.application_id or 0, self.settings))

    # --- triggers --------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        me = self.user
        if me is None or message.author.bot or message.webhook_id or message.type not in (
                discord.MessageType.default, discord.MessageType.reply):
            return  # other bots, ourselves, webhooks (author.bot may be unset), system messages
        channel = message.channel
        in_dm = message.guild is None
        in_our_thread = isinstance(channel, discord.Thread) and channel.owner_id == me.id
        replying_to_us = await self._replies_to_us(message)
        if not (in_dm or in_our_thread or replying_to_us or me in message.mentions):
            return
        if not is_allowed(self.settings, user_id=message.author.id, role_ids=_role_ids(message.author),
                          guild_id=message.guild.id if message.guild else None,
                          channel_ids=_channel_ids(channel)):
            log.debug("Discord: ignoring %s in %s (access lists)", message.author.id, channel.id)
            return
        prompt = re.sub(rf"<@!?{me.id}>", "", message.content).strip()
        if not prompt:
            await self._tell(message, "Ask me something after the mention, or use `/ask`.")
            return
        try:
            slot = self._admit(message.author.id, channel.id, prompt)
        except Refused as exc:
            await self._tell(message, str(exc))
            return
        question: discord.Message | None = message
        if self.settings.open_threads and not replying_to_us and isinstance(channel, discord.TextChannel):
            if thread := await self._open_thread(message, prompt):
                channel, question = thread, None  # a thread cannot reply to its parent's message
        try:
            key = _place_key(channel, message.guild and message.guild.id) or await self._chain_key(message)
            target = ChannelTarget(self, message.id, key, channel, question)
            self.track(message.id, message.id, key)
            async with self._typing_in(channel):
                await self._stream(prompt, key, target, message.author.id)
        finally:
            self.gate.release(slot)

    async def _ask_command(self, interaction: discord.Interaction, prompt: str) -> None:
        """/ask prompt: - deferred at once ("is thinking…"), then the original response is edited."""
        user = interaction.user
        if interaction.channel is None or not is_allowed(
                self.settings, user_id=user.id, role_ids=_role_ids(user), guild_id=interaction.guild_id,
                channel_ids=_channel_ids(interaction.channel)):
            await interaction.response.send_message("You can't use this bot here.", ephemeral=True)
            return
        prompt = prompt.strip() or "Hello!"
        try:
            slot = self._admit(user.id, interaction.channel.id, prompt)
        except Refused as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        try:
            callback = await interaction.response.defer(thinking=True)
            # elsewhere the response message starts a reply chain of its own
            key = (_place_key(interaction.channel, interaction.guild_id)
                   or f"discord:chain:{getattr(callback, 'message_id', None) or interaction.id}")
            await self._stream(prompt, key, InteractionTarget(self, interaction, key), user.id)
        finally:
            self.gate.release(slot)

    def _admit(self, user_id: int, channel_id: int, prompt: str) -> Slot:
        if self.closing:
            raise Refused(RESTARTING)
        return self.gate.admit(str(user_id), str(channel_id), prompt)

    async def _stream(self, prompt: str, key: str, target: _DiscordTarget, asker_id: int) -> Outcome:
        tag_reply(reply_id=target.reply_id, conversation=key, platform="discord")
        reply = Reply(self.brain.start(prompt, key), target, self.pacer, self.config.stream, self.store)
        active = self.active[target.reply_id] = _Active(reply, target, asker_id)
        try:
            outcome = await reply.run()
        finally:
            active.done.set()
            del self.active[target.reply_id]
            for mid in [m for m, r in self._watched.items() if r == target.reply_id]:
                del self._watched[mid]
        log.info("Discord: reply %s %s in %d message(s) (%d posts, %d edits, %d rate limited)",
                 target.reply_id, outcome.status, len(outcome.pages), outcome.posts, outcome.edits,
                 outcome.rate_limited, extra={"reply_id": target.reply_id, "conversation": key,
                                              "status": outcome.status, "outcome": outcome,
                                              "placeholder_after": outcome.placeholder_after,
                                              "first_text_after": outcome.first_text_after})
        return outcome

    # --- user actions reported back to the relay -------------------------------------------

    def track(self, message_id: int, reply_id: int, key: str) -> None:
        """`message_id` (the question or a page) belongs to conversation `key`; deleting it
        while reply `reply_id` streams stops that reply."""
        self._watched[message_id] = reply_id
        self._remember_key(message_id, key)

    async def on_raw_message_delete(self, event: discord.RawMessageDeleteEvent) -> None:
        reply_id = self._watched.pop(event.message_id, None)
        active = self.active.get(reply_id) if reply_id is not None else None
        if active is None:
            return
        active.target.gone.add(event.message_id)
        log.info("Discord: message %s deleted; stopping reply %s", event.message_id, reply_id,
                 extra={"reply_id": reply_id, "conversation": active.target.key})
        active.reply.stop()

    async def on_stop_click(self, interaction: discord.Interaction, reply_id: int) -> None:
        active = self.active.get(reply_id)
        if active is None:  # finished, or left by an earlier run of the bot: just tidy it
            content = interaction.message.content if interaction.message else ""
            cursor, marker = self.config.stream.cursor, self.config.stream.stopped_marker
            if content.endswith(cursor):
                content = f"{content.removesuffix(cursor).rstrip()}\n\n{marker}"
            await interaction.response.edit_message(content=content or marker, view=None,
                                                    allowed_mentions=_NO_PINGS())
            return
        perms = getattr(interaction, "permissions", None)
        if interaction.user.id != active.asker_id and not (perms and perms.manage_messages):
            await interaction.response.send_message("Only the person who asked can stop this answer.",
                                                    ephemeral=True)
            return
        await interaction.response.defer()  # the relay's final edit removes the button
        log.info("Discord: %s pressed Stop on reply %s", interaction.user.id, reply_id,
                 extra={"reply_id": reply_id, "conversation": active.target.key})
        active.reply.stop()

    # --- helpers ---------------------------------------------------------------------------

    async def _replies_to_us(self, message: discord.Message) -> bool:
        ref = message.reference
        if ref is None or ref.message_id is None or self.user is None:
            return False
        parent = await self._message(message.channel, ref.message_id, ref.resolved)
        return parent is not None and parent.author.id == self.user.id

    async def _chain_key(self, message: discord.Message) -> str:
        """A reply chain is one conversation, named after its first message. Known messages
        answer from memory; after a restart the chain is walked up (cache first, then fetch)."""
        current: discord.Message | None = message
        root = message.id
        for _ in range(MAX_CHAIN_HOPS):
            if current is None or (ref := current.reference) is None or ref.message_id is None:
                break
            if key := self._keys.get(ref.message_id):
                return key
            root = ref.message_id
            current = await self._message(message.channel, ref.message_id, ref.resolved)
        return f"discord:chain:{root}"

    async def _message(self, channel: Any, message_id: int, resolved: Any = None) -> discord.Message | None:
        if isinstance(resolved, discord.Message):
            return resolved
        if isinstance(resolved, discord.DeletedReferencedMessage):
            return None
        cached = self._connection._get_message(message_id)
        if cached is not None:
            return cached
        try:
            return await channel.fetch_message(message_id)
        except discord.HTTPException:
            return None

    def _remember_key(self, message_id: int, key: str) -> None:
        self._keys[message_id] = key
        self._keys.move_to_end(message_id)
        while len(self._keys) > KEY_CACHE:
            self._keys.popitem(last=False)

    async def _open_thread(self, message: discord.Message, prompt: str) -> discord.Thread | None:
        name = " ".join(prompt.split())[:90] or "Conversation"
        try:
            return await message.create_thread(name=name, auto_archive_duration=1440)
        except discord.HTTPException as exc:
            log.warning("Discord: could not open a thread in %s (%s); answering in the channel",
                        message.channel.id, exc)
            return None

    async def _tell(self, message: discord.Message, text: str) -> None:
        """A short answer that is not a model reply (a hint, a refusal), paced like the rest."""
        with contextlib.suppress(discord.HTTPException):
            await self.pacer.acquire(_budgets(f"discord:channel:{message.channel.id}", self.settings))
            await message.reply(text, allowed_mentions=_NO_PINGS(), mention_author=False)

    async def _repair(self, record: ReplyRecord) -> None:
        """Finish a reply a crash or kill left streaming, with the interrupted marker."""
        place = record.place
        content = record.final_text(self.config.stream.interrupted_marker, self.settings.page_chars)
        try:
            await self.pacer.acquire(_budgets(f"discord:channel:{place['channel']}", self.settings))
            if "token" in place:
                webhook = discord.Webhook.partial(place["application"], place["token"], client=self)
                await webhook.edit_message(place["message"], content=content, view=None,
                                           allowed_mentions=_NO_PINGS())
            else:
                message = self.get_partial_messageable(place["channel"]).get_partial_message(
                    place["message"])
                await message.edit(content=content, view=None, allowed_mentions=_NO_PINGS())
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.warning("Discord: could not finish interrupted reply %s: %s", record.reply_id, exc)

    @contextlib.asynccontextmanager
    async def _typing_in(self, channel: Any) -> AsyncIterator[None]:
        """One "is typing…" loop per channel, however many replies stream there."""
        count, task = self._typing.get(channel.id, (0, None))
        if task is None:
            task = asyncio.create_task(self._keep_typing(channel))
        self._typing[channel.id] = (count + 1, task)
        try:
            yield
        finally:
            count, task = self._typing[channel.id]
            if count == 1:
                del self._typing[channel.id]
                task.cancel()
            else:
                self._typing[channel.id] = (count - 1, task)

    async def _keep_typing(self, channel: Any) -> None:
        while True:
            try:
                # Typing counts towards Discord's 50 requests/s too: with a hundred busy
                # channels it would otherwise push message requests into global 429s.
                await self.pacer.acquire([("discord:global", GLOBAL_RATE)])
                await channel.typing()
            except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
                log.debug("Discord: typing indicator failed in %s: %s", channel.id, exc)
            await asyncio.sleep(TYPING_EVERY)

    async def shutdown(self) -> None:
        """Take no new questions, give running replies `shutdown_grace` seconds to finish, then
        stop the rest with the interrupted marker (their text kept), let them deliver, close."""
        self.closing = True
        waiting = [asyncio.create_task(a.done.wait()) for a in self.active.values()]
        try:
            if waiting:
                log.info("Discord: shutting down; waiting for %d reply(s)", len(waiting))
                _, pending = await asyncio.wait(waiting, timeout=self.config.stream.shutdown_grace)
                for active in list(self.active.values()):
                    active.reply.stop(self.config.stream.interrupted_marker)
                if pending:
                    await asyncio.wait(pending, timeout=FINAL_GRACE)
        finally:  # even when a second Ctrl-C cuts the grace period short
            for _, task in self._typing.values():
                task.cancel()
            if self._recovery is not None:
                self._recovery.cancel()
            if not self.is_closed():
                await self.close()


async def serve(config: Config, brain: Brain, pacer: Pacer, store: StateStore | None = None,
                gate: Gate | None = None) -> None:
    """Run the Discord bot until cancelled. Token: env DISCORD_BOT_TOKEN (never logged)."""
    token = env("DISCORD_BOT_TOKEN")
    if not token:
        raise DiscordSetupError("DISCORD_BOT_TOKEN is not set: copy the bot token from the Developer "
                                "Portal (Bot → Reset Token) into the bot's environment")
    bot = DiscordBot(config, brain, pacer, store, gate)
    register_ready("discord", lambda: bot.is_ready() and not bot.is_closed())
    try:
        await bot.start(token)
    except discord.LoginFailure:
        raise DiscordSetupError("Discord rejected DISCORD_BOT_TOKEN (401): reset the token in the "
                                "Developer Portal (Bot → Reset Token) and set it again") from None
    except discord.PrivilegedIntentsRequired:
        message = ("Discord refused the connection because the Message Content intent is not "
                   f"enabled: open {_portal(bot.application_id)}, turn on Privileged Gateway Intents → "
                   "Message Content Intent, save, and start streambot again")
        log.error("Discord: %s", message)
        raise DiscordSetupError(message) from None
    finally:
        await bot.shutdown()
