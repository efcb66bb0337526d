"""Where one Discord reply goes: a channel, thread or DM message chain, or an `/ask` response;
and the Stop button it shows while it streams."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord.utils import MISSING

from bots.discord_api import NO_PINGS, MessageRoute, global_budget, platform_errors, relayed, webhook_major
from core.platform import Frame, Op, Rate, Target, TransientError

if TYPE_CHECKING:
    from bots.discord_bot import DiscordBot

log = logging.getLogger("streambot.discord")

STOP_PREFIX = "streambot:stop:"
FEEDBACK_PREFIX = "streambot:fb:"
HUMAN_PREFIX = "streambot:human:"
RESOLVED_PREFIX = "streambot:resolved:"


def escape_mentions(text: str) -> str:
    """`text` (a reason the model or a person gave) without working mentions."""
    return discord.utils.escape_mentions(text)


# --- targets: where one reply goes -------------------------------------------------------------


class _DiscordTarget(Target):
    """What both targets share: limits, the Stop button, remembering each page's conversation."""

    platform = "discord"

    def __init__(self, bot: DiscordBot, reply_id: int, key: str) -> None:
        self.bot = bot
        self.reply_id = reply_id
        self.key = key  # the conversation, remembered for every page so replies to it continue
        self.page_limit = bot.settings.page_chars
        self.render_tables = bot.settings.table_width > 0  # Discord does not render tables
        self.table_width = bot.settings.table_width
        self.messages: list[Any] = []

    def _route(self, op: Op) -> tuple[MessageRoute, str | int]:
        """The message route an `op` request takes, and its major parameter."""
        raise NotImplementedError

    def budgets(self, op: Op) -> list[tuple[str, Rate]]:
        route, major = self._route(op)
        shared = self.bot.buckets.budgets(route, major)
        if op != "edit":
            return shared
        # Spread one reply's edits over the bucket's window instead of spending it in a burst:
        # otherwise a quick answer uses every slot on half-written frames and its final text
        # waits a whole window. It comes first: it is the budget that waits longest.
        spacing = self.bot.buckets.spacing(route, major)
        return [(f"discord:burst:{self.reply_id}", Rate(1, spacing)), *shared]

    def locate(self, handle: Any) -> dict[str, Any]:
        return {"channel": handle.channel.id, "message": handle.id}

    def message_key(self, handle: Any) -> str:
        return str(handle.id)

    def _view(self, frame: Frame) -> discord.ui.View | None:
        if frame.streaming:
            return stop_view(self.reply_id)
        if frame.final and frame.ended not in ("", "stopped"):  # the answer's last message
            return end_view(self.reply_id, feedback=self.feedback, human=self.human)
        return None

    async def hand_off(self, settings: Any, facts: Any) -> dict[str, Any]:
        """Ping the profile's role once (allowed_mentions lets exactly that role through), with
        a Resolved button; 🆘 on the answer marks the conversation as handed off."""
        role = getattr(settings, "discord_role", None)
        ping = f"<@&{role}> " if role else ""
        text = f"{ping}🆘 A person is needed here: {escape_mentions(facts.reason)}"[:2000]
        mentions = discord.AllowedMentions(
            everyone=False, users=False, replied_user=False, roles=[discord.Object(role)] if role else False
        )
        channel = self._handoff_channel()
        async with self._relayed():
            message = await channel.send(
                text, allowed_mentions=mentions, view=resolved_view(facts.conversation)
            )
        if self.messages:
            try:
                await self.messages[-1].add_reaction("🆘")
            except discord.HTTPException as exc:  # the ping went out: the mark is a nicety
                log.info("could not mark reply %s with 🆘: %s", self.reply_id, exc)
        return {"channel": message.channel.id, "message": message.id}

    def _handoff_channel(self) -> Any:
        raise NotImplementedError

    def _posted(self, message: Any) -> Any:
        self.messages.append(message)
        self.bot.remember(message.id, self.key)
        return message

    def _relayed(self) -> Any:
        """Around the relay's requests: one attempt each, bounded in time (see `relayed`)."""
        return relayed(self.bot.host.config.stream.final_deadline)

    async def edit(self, handle: Any, frame: Frame) -> None:
        async with self._relayed():
            await handle.edit(content=frame.text, allowed_mentions=NO_PINGS(), view=self._view(frame))


class ChannelTarget(_DiscordTarget):
    """A reply in a channel, thread or DM: the first page replies to the question, each
    continuation replies to the page before it (so pages of concurrent replies stay linked).
    With `in_thread`, the reply moves into a new thread on the question when it starts."""

    def __init__(
        self,
        bot: DiscordBot,
        reply_id: int,
        key: str,
        channel: Any,
        question: discord.Message | None,
        in_thread: bool = False,
    ) -> None:
        super().__init__(bot, reply_id, key)
        self.channel = channel
        self.question = question
        self.in_thread = in_thread
        self.typing = False

    def _route(self, op: Op) -> tuple[MessageRoute, str | int]:
        return ("edit" if op == "edit" else "create"), getattr(self.channel, "id", self.reply_id)

    def _handoff_channel(self) -> Any:
        return self.channel

    async def open(self) -> None:
        if self.in_thread and self.question is not None:
            if thread := await self.bot.open_thread(self.question):
                self.channel, self.question = thread, None  # a thread cannot reply to its parent
        self.typing = True
        self.bot.typing_start(self.channel)

    async def close(self) -> None:
        if self.typing:
            self.typing = False
            self.bot.typing_stop(self.channel)

    async def notice(self, text: str) -> None:
        with platform_errors():
            if self.question is not None:
                await self.question.reply(text, allowed_mentions=NO_PINGS(), mention_author=False)
            else:
                await self.channel.send(text, allowed_mentions=NO_PINGS())

    async def post(self, frame: Frame) -> discord.Message:
        ping = self.bot.settings.reply_ping
        refers_to = self.question if frame.index == 0 else (self.messages[-1] if self.messages else None)
        options: dict[str, Any] = {}
        if refers_to is not None:
            options["reference"] = refers_to.to_reference(fail_if_not_exists=False)
        mentions = discord.AllowedMentions(
            everyone=False, users=False, roles=False, replied_user=ping and frame.index == 0
        )
        # Discord may create the message and still answer 5xx or drop the connection; the
        # retried create then carries the same nonce, which Discord (enforce_nonce) answers with
        # the message it already made instead of posting it twice. That message shows the
        # first attempt's frame, so it is brought up to this one.
        nonce = f"{self.reply_id}:{frame.index}"  # at most 25 characters
        async with self._relayed():
            message = await self.channel.send(
                frame.text,
                allowed_mentions=mentions,
                nonce=nonce,
                view=self._view(frame) or MISSING,
                **options,
            )
            if message.content.strip() != frame.text.strip():
                await message.edit(content=frame.text, allowed_mentions=NO_PINGS(), view=self._view(frame))
        return self._posted(message)


class InteractionTarget(_DiscordTarget):
    """A reply to `/ask`: the deferred original response first, then follow-up messages.

    Interaction tokens last 15 minutes; a reply streaming longer than that cannot be edited.
    """

    def __init__(self, bot: DiscordBot, interaction: discord.Interaction, key: str) -> None:
        super().__init__(bot, interaction.id, key)
        self.interaction = interaction
        self._unsure: int | None = None  # a page whose follow-up failed but may have been posted

    def _route(self, op: Op) -> tuple[MessageRoute, str | int]:
        # The first "post" edits the deferred original response; notices and later pages are
        # follow-ups. Both go through the interaction's webhook.
        first = op == "post" and not self.messages
        return (
            "webhook-edit" if op == "edit" or first else "webhook-create",
            webhook_major(self.interaction.token),
        )

    def _handoff_channel(self) -> Any:
        return self.bot.get_partial_messageable(self.interaction.channel_id or 0)

    def locate(self, handle: Any) -> dict[str, Any]:
        # The response is the interaction's webhook message: only its token may edit it.
        return {
            **super().locate(handle),
            "application": self.interaction.application_id,
            "token": self.interaction.token,
        }

    async def open(self) -> None:
        await self.interaction.response.defer(thinking=True)  # "is thinking…" within 3 s

    async def notice(self, text: str) -> None:
        with platform_errors():
            if self.interaction.response.is_done():
                await self.interaction.followup.send(text, ephemeral=True)
            else:
                await self.interaction.response.send_message(text, ephemeral=True)

    async def post(self, frame: Frame) -> discord.Message:
        if frame.index == 0:  # the deferred response: an edit, safe to repeat
            async with self._relayed():
                message = await self.interaction.edit_original_response(
                    content=frame.text, allowed_mentions=NO_PINGS(), view=self._view(frame)
                )
            return self._posted(message)
        unsure = self._unsure == frame.index
        if unsure:  # the lookup is one more request towards the 50/s
            await self.bot.host.pacer.acquire(global_budget())
        try:
            async with self._relayed():
                message = await self._posted_before(frame) if unsure else None
                if message is None:
                    message = await self.interaction.followup.send(
                        frame.text, allowed_mentions=NO_PINGS(), view=self._view(frame) or MISSING, wait=True
                    )
        except TransientError:
            self._unsure = frame.index  # it may have been posted all the same
            raise
        self._unsure = None
        return self._posted(message)

    async def _posted_before(self, frame: Frame) -> discord.WebhookMessage | None:
        """The follow-up an attempt at this page that failed posted after all, brought up to
        `frame`; None if there is none.

        Follow-ups go through the interaction webhook, which takes no nonce: Discord may create
        the message and still answer 5xx (or the answer may be lost). The webhook cannot list
        its messages, so the channel's history after the previous page is searched for one made
        by this interaction: pages are posted one at a time, so any there is this page. Without
        access to the history (an app used where the bot is not a member) it is posted again.
        """
        channel = self.bot.get_partial_messageable(self.interaction.channel_id or 0)
        found = None
        try:
            async for message in channel.history(limit=100, after=self.messages[-1], oldest_first=True):
                made_by = message.interaction_metadata
                if made_by is not None and made_by.id == self.interaction.id:
                    found = message.id
                    break
        except (discord.Forbidden, discord.NotFound) as exc:
            log.info(
                "reply %s: cannot look for a follow-up already posted (%s); posting it again",
                self.reply_id,
                exc,
            )
        if found is None:
            return None
        log.info("reply %s: page %d was posted despite the error; using it", self.reply_id, frame.index)
        return await self.interaction.followup.edit_message(
            found, content=frame.text, allowed_mentions=NO_PINGS(), view=self._view(frame)
        )


# --- the Stop button -----------------------------------------------------------------------------


class StopButton(discord.ui.DynamicItem[discord.ui.Button], template=STOP_PREFIX + r"(?P<id>[0-9]+)"):
    """Stops the reply named in its custom_id. Matched by pattern, so a click is understood by
    any process (a button left by a crashed run is cleaned up instead of doing nothing)."""

    def __init__(self, reply_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                style=discord.ButtonStyle.secondary,
                label="Stop",
                emoji="⏹️",
                custom_id=f"{STOP_PREFIX}{reply_id}",
            )
        )
        self.reply_id = reply_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> StopButton:
        return cls(int(match["id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        if on_click := getattr(interaction.client, "on_stop_click", None):  # a DiscordBot
            await on_click(interaction, self.reply_id)


def stop_view(reply_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(StopButton(reply_id))
    return view


# --- under a finished answer: 👍/👎 and "Get a human"; on a handoff: Resolved ------------------------


class FeedbackButton(
    discord.ui.DynamicItem[discord.ui.Button], template=FEEDBACK_PREFIX + r"(?P<vote>up|down):(?P<id>[0-9]+)"
):
    """👍 or 👎 on the answer `reply_id`; any process understands a click (matched by pattern)."""

    def __init__(self, vote: str, reply_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                style=discord.ButtonStyle.secondary,
                emoji="👍" if vote == "up" else "👎",
                custom_id=f"{FEEDBACK_PREFIX}{vote}:{reply_id}",
            )
        )
        self.vote, self.reply_id = vote, reply_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> FeedbackButton:
        return cls(match["vote"], int(match["id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        if on_click := getattr(interaction.client, "on_feedback_click", None):
            await on_click(interaction, self.vote, self.reply_id)


class HumanButton(discord.ui.DynamicItem[discord.ui.Button], template=HUMAN_PREFIX + r"(?P<id>[0-9]+)"):
    def __init__(self, reply_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                style=discord.ButtonStyle.primary,
                label="Get a human",
                emoji="🙋",
                custom_id=f"{HUMAN_PREFIX}{reply_id}",
            )
        )
        self.reply_id = reply_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> HumanButton:
        return cls(int(match["id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        if on_click := getattr(interaction.client, "on_human_click", None):
            await on_click(interaction, self.reply_id)


class ResolvedButton(discord.ui.DynamicItem[discord.ui.Button], template=RESOLVED_PREFIX + r"(?P<c>.+)"):
    """On the handoff message: the conversation it names is answered by the bot again."""

    def __init__(self, conversation: str) -> None:
        super().__init__(
            discord.ui.Button(
                style=discord.ButtonStyle.success,
                label="Resolved",
                emoji="✅",
                custom_id=f"{RESOLVED_PREFIX}{conversation}"[:100],
            )
        )
        self.conversation = conversation

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> ResolvedButton:
        return cls(match["c"])

    async def callback(self, interaction: discord.Interaction) -> None:
        if on_click := getattr(interaction.client, "on_resolved_click", None):
            await on_click(interaction, self.conversation)


class ReasonModal(discord.ui.Modal, title="What was wrong?"):
    """Asked after a 👎: an optional reason, stored with the vote."""

    reason: discord.ui.TextInput[ReasonModal] = discord.ui.TextInput(
        label="What was missing or wrong (optional)",
        style=discord.TextStyle.paragraph,
        required=False,
        max_length=1000,
    )

    def __init__(self, reply_id: int) -> None:
        super().__init__(custom_id=f"streambot:reason:{reply_id}")
        self.reply_id = reply_id

    async def on_submit(self, interaction: discord.Interaction) -> None:
        if on_submit := getattr(interaction.client, "on_reason_submit", None):
            await on_submit(interaction, self.reply_id, self.reason.value or "")


def end_view(reply_id: int, *, feedback: bool, human: bool) -> discord.ui.View | None:
    if not (feedback or human):
        return None
    view = discord.ui.View(timeout=None)
    if feedback:
        view.add_item(FeedbackButton("up", reply_id))
        view.add_item(FeedbackButton("down", reply_id))
    if human:
        view.add_item(HumanButton(reply_id))
    return view


def resolved_view(conversation: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ResolvedButton(conversation))
    return view
