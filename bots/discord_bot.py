"""The Discord adapter: answers mentions, DMs, replies and `/ask` by streaming through the host.

It stays thin. The host (core/host.py) admits questions, runs and registers replies, stops them
and shuts down; the relay decides what each message shows and the pacer when a request may go
out. This module turns Discord events into `host.answer/stop/deleted` calls. Its targets
(bots/discord_target.py) only post, edit and continue in new messages; set-up facts, rates and
error mapping live in bots/discord_api.py.

Rate limits: Discord allows 5 message creates and 5 edits (two buckets) per 5 s per channel and
50 requests/s per bot. Every reply in a channel draws from the channel's pacer budget for its
kind of request, learned from Discord's headers (`Buckets` in bots/discord_api.py), and from one
global budget, so the newest frame is coalesced *before* it reaches discord.py. discord.py
still keeps its own per-bucket queues underneath, but a reply's posts and edits get one attempt
each: the relay retries a 429 or 5xx through the pacer, which discord.py's own retries would
bypass (see `relayed`).

`[discord] api_base` points one client - REST, interaction webhooks and the gateway - at a proxy
or a fake without touching discord.py's process-wide `Route.BASE` (see `RebasedHTTP`).

Sharded over several processes on the redis backend, the processes take turns to IDENTIFY
through Redis, one per `shard_id % max_concurrency` bucket every 5 s (`before_identify_hook`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import aiohttp
import discord
from discord import app_commands
from redis.exceptions import RedisError

from bots.discord_api import (
    NO_PINGS,
    Buckets,
    DiscordSettings,
    RebasedHTTP,
    channel_ids,
    global_budget,
    identify_key,
    identify_turn,
    intents,
    invite_url,
    is_allowed,
    portal,
    role_ids,
    setup_summary,
    webhook_major,
)
from bots.discord_target import (
    ChannelTarget,
    FeedbackButton,
    HumanButton,
    InteractionTarget,
    ReasonModal,
    ResolvedButton,
    StopButton,
)
from core.adapter import Adapter, Need
from core.attachments import Attachment, http_fetch
from core.config import env
from core.errors import SetupError
from core.host import Host, Question
from core.ops import register_ready
from core.pacing import ACK
from core.recent import Recent

log = logging.getLogger("streambot.discord")

MAX_CHAIN_HOPS = 40  # how far up a reply chain to look for its first message after a restart
KEY_CACHE = 20_000  # message id -> conversation key entries kept in memory
TYPING_EVERY = 8.0  # Discord shows "is typing" for ~10 s per request
# `open_threads = "auto"`: a channel is busy when its edit budget, shared by the replies streaming
# there, cannot give one more a fresh frame at least this often; the next answer gets a thread.
FRESH_EVERY = 3.5
TOKEN = "DISCORD_BOT_TOKEN"


def _place_key(channel: Any, guild_id: int | None) -> str | None:
    """A thread or a DM is one conversation; elsewhere it is the reply chain (None here)."""
    if isinstance(channel, discord.Thread):
        return f"discord:thread:{channel.id}"
    return f"discord:dm:{channel.id}" if guild_id is None else None


def _origin(channel: Any, guild_id: int | None) -> dict[str, Any]:
    """What `[[routes]]` match on: the server, a DM, and the thread parent and category."""
    return {
        "team": str(guild_id) if guild_id is not None else "",
        "dm": guild_id is None,
        "channels": tuple(str(i) for i in sorted(channel_ids(channel))),
    }


def attachments(message: discord.Message) -> tuple[Attachment, ...]:
    """The files of a message as the core describes them; downloaded only when answered.
    (A paste too long for a message arrives as `message.txt`: a text file like any other.)"""
    return _described(message.attachments)


def _described(files: list[discord.Attachment]) -> tuple[Attachment, ...]:
    return tuple(Attachment(a.filename, a.content_type or "", a.size, fetch=http_fetch(a.url)) for a in files)


# --- the bot -----------------------------------------------------------------------------------


class DiscordBot(discord.AutoShardedClient):
    """One Discord connection (all shards): turns Discord events into host calls."""

    def __init__(self, host: Host, settings: DiscordSettings) -> None:
        self.host = host
        self.settings = settings
        self.buckets = Buckets(host.pacer, settings)  # learns Discord's buckets from its answers
        super().__init__(
            http_trace=self.buckets.trace(),
            intents=intents(),
            allowed_mentions=discord.AllowedMentions.none(),  # model output never pings
            shard_count=settings.shard_count,
            shard_ids=settings.shard_ids or None,
            max_ratelimit_timeout=30.0,  # longer waits reach the relay as RateLimited
            chunk_guilds_at_startup=False,
            member_cache_flags=discord.MemberCacheFlags.none(),
        )
        # always: besides `api_base`, it is what gives the relay's requests one attempt each
        self.http = self._connection.http = RebasedHTTP(settings.api_base, self.http)
        self.tree = app_commands.CommandTree(self)

        @self.tree.command(name="ask", description="Ask the model; the answer streams in as it is written")
        @app_commands.describe(
            prompt="Your question",
            new="Start a new conversation (forget this one)",
            file="A picture or a file to ask about",
        )
        async def ask(
            interaction: discord.Interaction,
            prompt: str,
            new: bool = False,
            file: discord.Attachment | None = None,
        ) -> None:
            await self._ask_command(interaction, prompt, new, file)

        @self.tree.command(name="forget", description="Start over: forget the conversation here")
        async def forget(interaction: discord.Interaction) -> None:
            await self._forget_command(interaction)

        self._keys: Recent[int, str] = Recent(KEY_CACHE)  # message id -> conversation key
        self._typing: dict[int, tuple[int, asyncio.Task[None]]] = {}
        self._max_concurrency: int | None = None  # IDENTIFY buckets, from GET /gateway/bot
        self._in_channel: dict[int, int] = {}  # channel id -> replies answering in the channel

    # --- start-up --------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        self.add_dynamic_items(StopButton, FeedbackButton, HumanButton, ResolvedButton)
        # REST works from here on: finish what a crash left
        self.host.repair("discord", self._finish, self.settings.page_chars)
        app_id = self.application_id or 0
        log.info("Discord: %s", setup_summary(app_id, self.settings))
        flags = self.application_flags
        if not (flags.gateway_message_content or flags.gateway_message_content_limited):
            log.warning(
                "Discord: the Message Content intent looks disabled for this app; enable "
                "it at %s (Privileged Gateway Intents) or the bot cannot read questions",
                portal(app_id),
            )
        if self.settings.sync_commands:
            try:
                await self.tree.sync()
            except discord.HTTPException as exc:
                log.warning("Discord: could not register /ask (%s); mentions and DMs still work", exc)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """On the redis backend, take this shard's IDENTIFY bucket in Redis, so that shards run
        by other processes of this bot never IDENTIFY in the same bucket within 5 s. Otherwise
        discord.py's default: 5 s between this process's own IDENTIFYs."""
        redis = getattr(self.host.store, "redis", None)
        if redis is None:
            await super().before_identify_hook(shard_id, initial=initial)
            return
        if self._max_concurrency is None:
            try:
                self._max_concurrency = (await self.fetch_session_start_limits()).max_concurrency
            except (discord.DiscordException, aiohttp.ClientError, OSError) as exc:
                log.warning("Discord: could not read max_concurrency (%s); assuming 1", exc)
                self._max_concurrency = 1
        key = identify_key(self.application_id or 0, shard_id or 0, self._max_concurrency)
        try:
            await identify_turn(redis, key)
        except RedisError as exc:
            log.warning(
                "Discord: Redis is unreachable to take turns to IDENTIFY (%s); waiting as one process would",
                exc,
            )
            await super().before_identify_hook(shard_id, initial=initial)

    async def on_ready(self) -> None:
        log.info(
            "Discord: connected as %s (%s) to %d server(s)",
            self.user,
            getattr(self.user, "id", "?"),
            len(self.guilds),
        )
        if not self.guilds:  # the URL is what the operator needs next: make it visible
            log.warning(
                "Discord: the bot is not in any server yet; %s",
                invite_url(self.application_id or 0, self.settings),
            )

    # --- triggers --------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        me = self.user
        if (
            me is None
            or message.author.bot
            or message.webhook_id
            or message.type not in (discord.MessageType.default, discord.MessageType.reply)
        ):
            return  # other bots, ourselves, webhooks (author.bot may be unset), system messages
        channel = message.channel
        in_dm = message.guild is None
        in_our_thread = isinstance(channel, discord.Thread) and channel.owner_id == me.id
        replying_to_us = await self._replies_to_us(message)
        if not (in_dm or in_our_thread or replying_to_us or me in message.mentions):
            return
        if not is_allowed(
            self.settings,
            user_id=message.author.id,
            role_ids=role_ids(message.author),
            guild_id=message.guild.id if message.guild else None,
            channel_ids=channel_ids(channel),
        ):
            log.debug("Discord: ignoring %s in %s (access lists)", message.author.id, channel.id)
            return
        prompt = re.sub(rf"<@!?{me.id}>", "", message.content).strip()
        # A thread opened on a message has that message's id: its key is known before it exists.
        in_thread = (
            not replying_to_us and isinstance(channel, discord.TextChannel) and self._wants_thread(channel.id)
        )
        key = (
            f"discord:thread:{message.id}"
            if in_thread
            else _place_key(channel, message.guild and message.guild.id) or await self._chain_key(message)
        )
        target = ChannelTarget(self, message.id, key, channel, message, in_thread)
        files = attachments(message)
        if not prompt and not files:
            await self.host.notice(target, "Ask me something after the mention, or use `/ask`.")
            return
        self.remember(message.id, key)
        shared = not in_dm  # several people may talk here: the model is told who speaks
        context = (
            await self._unseen(message) if isinstance(channel, discord.Thread) and not in_our_thread else ()
        )
        here = 0 if in_thread else 1
        self._in_channel[channel.id] = self._in_channel.get(channel.id, 0) + here
        try:
            await self.host.answer(
                Question(
                    str(message.id),
                    str(message.author.id),
                    str(channel.id),
                    key,
                    prompt,
                    message=str(message.id),
                    author=message.author.display_name if shared else "",
                    attachments=files,
                    context=context,
                    **_origin(channel, message.guild and message.guild.id),
                ),
                target,
            )
        finally:
            if (left := self._in_channel.pop(channel.id, 0) - here) > 0:
                self._in_channel[channel.id] = left

    def _wants_thread(self, channel_id: int) -> bool:
        """Whether a new answer in this text channel goes to a thread of its own: always, never,
        or with "auto" while the channel is busy (see FRESH_EVERY)."""
        mode = self.settings.open_threads
        if mode != "auto":
            return bool(mode)
        streaming = self._in_channel.get(channel_id, 0)
        return (streaming + 1) * self.buckets.spacing("edit", channel_id) > FRESH_EVERY

    async def _unseen(self, message: discord.Message) -> tuple[tuple[str, str], ...]:
        """The thread's messages since the bot last spoke there (from its start if it never
        did), bounded by `[memory] thread_messages`: what was said before the bot was asked.
        Mentions of the bot are left out: each was a question of its own."""
        me, limit = self.user, self.host.config.memory.thread_messages
        if me is None or not limit:
            return ()
        thread = message.channel
        earlier: list[tuple[str, str]] = []
        seen, from_start = 0, True
        try:
            async for m in thread.history(limit=limit, before=message):
                seen += 1
                if m.author.id == me.id:
                    from_start = False
                    break
                if not (m.author.bot or me in m.mentions or not m.content.strip()):
                    earlier.append((m.author.display_name, re.sub(r"<@!?\d+>", "", m.content).strip()))
            if from_start and seen < limit and (starter := await self._starter(thread)) is not None:
                earlier.append(starter)  # a thread started on a message: that message comes first
        except discord.HTTPException as exc:  # no Read Message History here: answer without
            log.info("Discord: could not read the thread %s: %s", thread.id, exc)
        return tuple(reversed(earlier))

    async def _starter(self, thread: discord.Thread) -> tuple[str, str] | None:
        """The message a thread was started on (it lives in the parent channel), if any."""
        parent = thread.parent
        if not isinstance(parent, discord.TextChannel):
            return None
        try:
            m = await parent.fetch_message(thread.id)
        except discord.HTTPException:  # a thread started on its own has no such message
            return None
        text = re.sub(r"<@!?\d+>", "", m.content).strip()
        return (m.author.display_name, text) if text and not m.author.bot else None

    async def _ask_command(
        self,
        interaction: discord.Interaction,
        prompt: str,
        new: bool = False,
        file: discord.Attachment | None = None,
    ) -> None:
        """/ask prompt: - deferred at once ("is thinking…"), then the original response is edited.
        With new:true a DM's or thread's conversation starts over first."""
        user = interaction.user
        if interaction.channel is None or not self._may_use(interaction):
            await interaction.response.send_message("You can't use this bot here.", ephemeral=True)
            return
        # elsewhere the response message starts a reply chain of its own (see `_chain_key`)
        place = _place_key(interaction.channel, interaction.guild_id)
        key = place or f"discord:chain:{interaction.id}"
        await self.host.answer(
            Question(
                str(interaction.id),
                str(user.id),
                str(interaction.channel.id),
                key,
                prompt.strip() or ("" if file else "Hello!"),
                author=user.display_name if interaction.guild_id else "",
                attachments=_described([file] if file else []),
                fresh=new and place is not None,
                **_origin(interaction.channel, interaction.guild_id),
            ),
            InteractionTarget(self, interaction, key),
        )

    async def _forget_command(self, interaction: discord.Interaction) -> None:
        """/forget: a DM or a thread starts over; in a channel every mention already does."""
        if interaction.channel is None or not self._may_use(interaction):
            await interaction.response.send_message("You can't use this bot here.", ephemeral=True)
            return
        place = _place_key(interaction.channel, interaction.guild_id)
        if place is None:
            text = "Here every new mention starts a fresh conversation; replying to my answer continues one."
        elif self.host.start_over(place):
            text = "Done: I've forgotten our conversation here. The next question starts fresh."
        else:
            text = "I keep no memory of conversations, so there is nothing to forget."
        await interaction.response.send_message(text, ephemeral=True)

    def _may_use(self, interaction: discord.Interaction) -> bool:
        return is_allowed(
            self.settings,
            user_id=interaction.user.id,
            role_ids=role_ids(interaction.user),
            guild_id=interaction.guild_id,
            channel_ids=channel_ids(interaction.channel),
        )

    # --- user actions reported to the host ------------------------------------------------------

    def remember(self, message_id: int, key: str) -> None:
        """`message_id` (a question or a page) belongs to conversation `key`."""
        self._keys[message_id] = key

    async def on_raw_message_delete(self, event: discord.RawMessageDeleteEvent) -> None:
        await self.host.deleted(str(event.message_id))

    async def on_stop_click(self, interaction: discord.Interaction, reply_id: int) -> None:
        perms = getattr(interaction, "permissions", None)
        result = await self.host.stop(
            str(reply_id), str(interaction.user.id), moderator=bool(perms and perms.manage_messages)
        )
        if result == "stopped":
            await interaction.response.defer()  # the relay's final edit removes the button
        elif result == "not_yours":
            await interaction.response.send_message(
                "Only the person who asked can stop this answer.", ephemeral=True
            )
        else:  # finished, or left by an earlier run of the bot: just tidy it
            content = interaction.message.content if interaction.message else ""
            cursor, marker = self.host.config.stream.cursor, self.host.config.stream.stopped_marker
            if content.endswith(cursor):
                content = f"{content.removesuffix(cursor).rstrip()}\n\n{marker}"
            await interaction.response.edit_message(
                content=content or marker, view=None, allowed_mentions=NO_PINGS()
            )

    # --- the support desk: feedback, handoff --------------------------------------------------

    async def on_feedback_click(self, interaction: discord.Interaction, vote: str, reply_id: int) -> None:
        """👍/👎: store it (the person's last click counts); a 👎 asks why, in a modal."""
        try:
            await self.host.feedback(
                str(reply_id), str(interaction.user.id), "up" if vote == "up" else "down", "discord"
            )
        except Exception as exc:
            log.warning("Discord: could not store feedback on reply %s: %s", reply_id, exc)
        if vote == "down":
            await interaction.response.send_modal(ReasonModal(reply_id))
        else:
            await interaction.response.send_message("Thanks for the feedback!", ephemeral=True)

    async def on_reason_submit(self, interaction: discord.Interaction, reply_id: int, reason: str) -> None:
        if reason.strip():
            try:
                await self.host.feedback_reason(str(reply_id), str(interaction.user.id), reason)
            except Exception as exc:
                log.warning("Discord: could not store a feedback reason: %s", exc)
        await interaction.response.send_message("Thanks: the team will see that.", ephemeral=True)

    async def on_human_click(self, interaction: discord.Interaction, reply_id: int) -> None:
        """ "Get a human": ping the profile's role in this conversation, once."""
        channel, message = interaction.channel, interaction.message
        if channel is None or message is None:
            return
        try:
            answer = await self.host.ledger.answer(str(reply_id))
        except Exception as exc:
            log.warning("Discord: could not look up reply %s: %s", reply_id, exc)
            answer = None
        key = (
            answer.conversation
            if answer
            else _place_key(channel, interaction.guild_id) or await self._chain_key(message)
        )
        target = ChannelTarget(self, reply_id, key, channel, None)
        target.messages.append(message)  # the answer: marked with 🆘
        await interaction.response.defer(ephemeral=True, thinking=False)
        # the answer's profile; if its record is not written yet, the one the routes pick here
        where = Question(
            str(reply_id),
            str(interaction.user.id),
            str(channel.id),
            key,
            "",
            **_origin(channel, interaction.guild_id),
        )
        result = await self.host.request_human(
            key,
            answer.profile if answer else self.host.profile_for(where, "discord"),
            str(interaction.user.id),
            f"{interaction.user} asked for a person",
            target,
        )
        if result == "already":
            await interaction.followup.send("A person has already been asked to help here.", ephemeral=True)
        elif result == "off":
            await interaction.followup.send("Nobody is set up to take over here.", ephemeral=True)

    async def on_resolved_click(self, interaction: discord.Interaction, conversation: str) -> None:
        """ "Resolved" on the handoff message: the bot answers in that conversation again."""
        await self.host.resolve(conversation, str(interaction.user.id))
        await interaction.response.edit_message(
            content="✅ Resolved: I'm answering here again.", view=None, allowed_mentions=NO_PINGS()
        )

    # --- helpers ---------------------------------------------------------------------------

    async def _replies_to_us(self, message: discord.Message) -> bool:
        ref = message.reference
        if ref is None or ref.message_id is None or self.user is None:
            return False
        parent = await self._message(message.channel, ref.message_id, ref.resolved)
        return parent is not None and parent.author.id == self.user.id

    async def _chain_key(self, message: discord.Message) -> str:
        """A reply chain is one conversation, named after its first message (or the `/ask` that
        made it). Known messages answer from memory; after a restart the chain is walked up
        (cache first, then fetch)."""
        current: discord.Message | None = message
        root: int | None = message.id
        for _ in range(MAX_CHAIN_HOPS):
            if current is None or (ref := current.reference) is None or ref.message_id is None:
                break
            if key := self._keys.get(ref.message_id):
                return key
            root = ref.message_id
            current = await self._message(message.channel, ref.message_id, ref.resolved)
        if current is not None and (made_by := getattr(current, "interaction_metadata", None)):
            root = made_by.id  # an /ask response: its chain is named after the interaction
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

    async def open_thread(self, message: discord.Message) -> discord.Thread | None:
        name = " ".join(re.sub(r"<@!?\d+>", "", message.content).split())[:90] or "Conversation"
        try:
            return await message.create_thread(name=name, auto_archive_duration=1440)
        except discord.HTTPException as exc:
            log.warning(
                "Discord: could not open a thread in %s (%s); answering in the channel",
                message.channel.id,
                exc,
            )
            return None

    async def _finish(self, place: dict[str, Any], content: str) -> None:
        """Finish a reply a crash or kill left streaming (the host wrote `content`)."""
        if "token" in place:
            await self.host.pacer.acquire(self.buckets.budgets("webhook-edit", webhook_major(place["token"])))
            webhook = discord.Webhook.partial(place["application"], place["token"], client=self)
            await webhook.edit_message(
                place["message"], content=content, view=None, allowed_mentions=NO_PINGS()
            )
        else:
            await self.host.pacer.acquire(self.buckets.budgets("edit", place["channel"]))
            message = self.get_partial_messageable(place["channel"]).get_partial_message(place["message"])
            await message.edit(content=content, view=None, allowed_mentions=NO_PINGS())

    def typing_start(self, channel: Any) -> None:
        """One "is typing…" loop per channel, however many replies stream there."""
        count, task = self._typing.get(channel.id, (0, None))
        self._typing[channel.id] = (count + 1, task or asyncio.create_task(self._keep_typing(channel)))

    def typing_stop(self, channel: Any) -> None:
        count, task = self._typing.pop(channel.id, (0, None))
        if count > 1 and task is not None:
            self._typing[channel.id] = (count - 1, task)
        elif task is not None:
            task.cancel()

    async def _keep_typing(self, channel: Any) -> None:
        while True:
            try:
                # Typing counts towards Discord's 50 requests/s too: with a hundred busy
                # channels it would otherwise push message requests into global 429s. It tells
                # the asker they were heard, so it goes before edits (as placeholders do).
                await self.host.pacer.acquire(global_budget(), ACK)
                await channel.typing()
            except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
                log.debug("Discord: typing indicator failed in %s: %s", channel.id, exc)
            await asyncio.sleep(TYPING_EVERY)

    async def shutdown(self) -> None:
        """Let the host finish or interrupt the running replies, then disconnect."""
        try:
            await self.host.shutdown()
        finally:  # even when a second Ctrl-C cuts the grace period short
            for _, task in self._typing.values():
                task.cancel()
            if not self.is_closed():
                await self.close()


def _not_voice(record: logging.LogRecord) -> bool:
    """discord.py warns at every start that voice needs PyNaCl: noise for a text-only bot."""
    return "voice will NOT be supported" not in str(record.msg)


async def serve(host: Host, settings: DiscordSettings) -> None:
    """Run the Discord bot until cancelled. Token: env DISCORD_BOT_TOKEN (never logged)."""
    host.start()
    logging.getLogger("discord.client").addFilter(_not_voice)
    bot = DiscordBot(host, settings)
    register_ready("discord", lambda: bot.is_ready() and not bot.is_closed())
    try:
        await bot.start(env(TOKEN))
    except discord.LoginFailure:
        raise SetupError(
            "Discord rejected DISCORD_BOT_TOKEN (401): reset the token in the "
            "Developer Portal (Bot → Reset Token) and set it again"
        ) from None
    except discord.PrivilegedIntentsRequired:
        message = (
            "Discord refused the connection because the Message Content intent is not "
            f"enabled: open {portal(bot.application_id)}, turn on Privileged Gateway Intents → "
            "Message Content Intent, save, and start streambot again"
        )
        log.error("Discord: %s", message)
        raise SetupError(message) from None
    finally:
        await bot.shutdown()


ADAPTER = Adapter(
    "discord",
    DiscordSettings,
    serve,
    secrets=(TOKEN,),
    needs=lambda s: [Need(TOKEN, "discord.enabled", "the Discord adapter needs a bot token")],
)
