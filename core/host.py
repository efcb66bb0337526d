"""The reply host: everything a reply needs that is not a platform call.

An adapter turns platform events into `answer`, `stop` and `deleted` calls and implements
`Target` for where each reply goes. The host does the rest, once for every platform: it admits
the question (shutdown, `[limits]`), runs the turns of one conversation in order, keeps the
registry that Stop buttons and deleted messages are matched against, logs one outcome line per
reply, shuts down with grace, and finishes the replies a dead process left streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from core import metrics
from core.attachments import Attachment, Turn
from core.config import DEFAULT_PROFILE, Config, HandoffConfig
from core.events import Event, ModelRun, Searched
from core.handoff import Handoffs, is_resolve_command
from core.ledger import AnswerFacts, HandoffFacts, Ledger, SqliteLedger, Vote
from core.limits import Gate, Refused, Slot
from core.logs import tag_reply
from core.pacing import ACK, Pacer
from core.paging import with_marker
from core.platform import Target
from core.profiles import Origin, pick, resolve
from core.relay import Outcome, Reply
from core.state import ReplyRecord, StateStore, repair_orphans
from core.usage import Spent, UsageStore

log = logging.getLogger("streambot.host")

RESTARTING = "I'm restarting: please ask again in a minute."  # questions during a shutdown
FINAL_GRACE = 15.0  # seconds a shutdown lets interrupted replies deliver their final text

StopResult = Literal["stopped", "not_yours", "unknown"]
HandoffResult = Literal["pinged", "already", "off"]  # "off": the profile has no handoff set up
RESOLVED = "✅ Resolved: I'm answering here again."
Finish = Callable[[dict[str, Any], str], Awaitable[None]]  # (record.place, final text)


class Brain(Protocol):
    """What the host needs of the model side (core/sources.py `Brain` is one)."""

    def start(self, prompt: str | Turn, conversation: str | None = None) -> ModelRun: ...


@dataclass(frozen=True)
class Question:
    """One question an adapter wants answered, in platform-neutral terms (ids as strings)."""

    reply_id: str  # names the reply: Stop buttons, records, log lines
    user: str  # who asked: per-person limits, and who may stop the answer
    channel: str  # where: per-channel limits
    conversation: str  # memory key; the turns of one conversation are answered in order
    prompt: str
    message: str = ""  # the question's message key: deleting it stops the reply
    limited: bool = True  # subject to `[limits]` (the local console is not)
    team: str = ""  # the workspace or server it was asked in ("" when there is none): routes
    dm: bool = False  # asked in a direct message: routes
    channels: tuple[str, ...] = ()  # more places it sits in (a thread's parent, a category): routes
    author: str = ""  # display name, in channels and shared threads: "Sam: …" for the model
    attachments: tuple[Attachment, ...] = ()  # pictures and files sent with it
    context: tuple[tuple[str, str], ...] = ()  # (author, text) of earlier thread messages not yet seen
    fresh: bool = False  # start the conversation over first (/ask new:true)

    def model_input(self) -> str | Turn:
        """What the brain is given: a plain question stays a string (any Brain takes that)."""
        if not (self.author or self.attachments or self.context):
            return self.prompt
        return Turn(self.prompt, self.author, self.attachments, self.context)


@dataclass(frozen=True)
class Finished:
    """Handed to `Host.on_finished` hooks when a reply ends (tests and embedders read it)."""

    question: Question
    platform: str
    outcome: Outcome
    profile: str = DEFAULT_PROFILE  # the profile that answered (reports group by it)
    sources: tuple[str, ...] = ()  # links the answer cites that came from knowledge search hits
    not_in_docs: bool = False  # the knowledge search ran and found nothing relevant


class _Searches:
    """A model run whose knowledge searches are noted on their way to the relay."""

    def __init__(self, run: ModelRun) -> None:
        self.run = run
        self.searches: list[Searched] = []

    async def events(self) -> AsyncIterator[Event]:
        async for ev in self.run.events():
            if isinstance(ev, Searched):
                self.searches.append(ev)
            yield ev

    def cancel(self) -> None:
        self.run.cancel()

    async def remember(self, shown: str) -> None:
        await self.run.remember(shown)

    def citations(self, text: str) -> tuple[tuple[str, ...], bool]:
        """(the search hits' links the answer cites, in order of appearance; whether it
        searched and found nothing at all)."""
        links = {link for s in self.searches for link in s.hits}
        found = ((re.search(re.escape(link) + r"(?![\w#/.-])", text), link) for link in links)
        cited = sorted((m.start(), link) for m, link in found if m)
        return tuple(link for _, link in cited), bool(self.searches) and not links


@dataclass
class _Running:
    question: Question
    reply: Reply | None = None  # None while waiting for its conversation's turn
    stopped: bool = False
    messages: set[str] = field(default_factory=set)  # its question's and pages' message keys
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self, marker: str | None = None) -> None:
        self.stopped = True
        if self.reply is not None:
            self.reply.stop(marker)


class Host:
    """One per process, shared by every adapter."""

    def __init__(
        self,
        config: Config,
        brain: Brain,
        pacer: Pacer | None = None,
        store: StateStore | None = None,
        gate: Gate | None = None,
        usage: UsageStore | None = None,
        brains: Callable[[str], Brain] | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.config = config
        self.brain = brain  # the default profile's (`[model]`)
        self._make_brain = brains  # profile name -> its Brain; None: `brain` answers everything
        self._brains: dict[str, Brain] = {DEFAULT_PROFILE: brain}
        self.pacer = pacer or Pacer()
        self.store = store
        self.gate = gate or Gate(config.limits, self.pacer.clock, usage)
        self.usage = usage if usage is not None else self.gate.usage  # where tokens are added up
        self.closing = False  # shutting down: no new questions
        self.on_finished: list[Callable[[Finished], None]] = []
        self._running: dict[str, _Running] = {}  # reply id -> the reply
        self._messages: dict[str, tuple[str, int | None]] = {}  # message key -> (reply, page)
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}  # conversation -> (lock, users)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._repairs: list[asyncio.Task[None]] = []
        self._shutdown: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._ledger = ledger
        self.handoffs = Handoffs(lambda: self.ledger)

    @property
    def ledger(self) -> Ledger:
        """Answers, votes and handoffs for the report: beside the state store (Redis, shared
        by replicas) or in the memory file. Opened on first use."""
        if self._ledger is None:
            redis = getattr(self.store, "redis", None)
            if redis is not None:
                from core.redis_ledger import RedisLedger

                self._ledger = RedisLedger(redis)
            else:
                self._ledger = SqliteLedger(self.config.memory.path)
        return self._ledger

    def handoff_for(self, profile: str) -> HandoffConfig | None:
        """The profile's `handoff` settings, or None when it hands nothing to people."""
        try:
            return resolve(self.config, profile).handoff
        except KeyError:  # a profile the config no longer has (a reply from before a restart)
            return None

    def start(self) -> None:
        """Hear stop and delete signals other replicas forward, and end this process's replies
        if it loses its lease (with the redis backend). Idempotent; adapters call it first."""
        if self.store is None or self._listener is not None:
            return
        self.store.on_lease_lost = self._lease_lost
        self._listener = asyncio.create_task(self.store.listen(self._signal))

    # --- questions in, replies out ------------------------------------------------------------

    def profile_for(self, question: Question, platform: str) -> str:
        """The profile `[[routes]]` pick for `question` asked on `platform`."""
        where = (question.channel, *question.channels) if question.channel else question.channels
        return pick(self.config.routes, Origin(platform, question.team, where, question.dm))

    def brain_for(self, profile: str) -> Brain:
        """The profile's Brain, built on first use and kept (one agent per profile)."""
        if profile not in self._brains:
            if self._make_brain is None:
                return self.brain
            self._brains[profile] = self._make_brain(profile)
        return self._brains[profile]

    async def answer(self, question: Question, target: Target) -> Outcome | None:
        """Stream the answer to `question` into `target`; None when it was not answered
        (refused, shutting down, or stopped before its turn came)."""
        if question.reply_id in self._running:  # the same event delivered twice: answer once
            log.info("reply %s is already running; ignoring the repeat", question.reply_id)
            return None
        profile = self.profile_for(question, target.platform)
        if await self._held(question, profile, target):
            return None
        target.feedback = self.config.feedback.enabled
        target.human = self.handoff_for(profile) is not None
        slot: Slot | None = None
        try:
            if self.closing:
                raise Refused(RESTARTING)
            if question.limited:
                slot = await self.gate.admit(question.user, question.channel, question.prompt)
        except Refused as exc:
            await self.notice(target, str(exc))
            return None
        running = self._running[question.reply_id] = _Running(question)
        if question.message:
            self._track(running, question.message, None)
        # Registered for other replicas' Stop clicks beside the reply, not before it: a slow
        # Redis must not hold up the placeholder.
        marking = asyncio.ensure_future(self._shared("mark_live", question.reply_id, question.user))
        try:
            try:
                await target.open()
            except Exception as exc:  # an acknowledgement must never cost the answer
                log.info("could not acknowledge reply %s: %s", question.reply_id, exc)
            async with self._turn(question.conversation):
                if running.stopped:  # stopped or deleted while waiting for its turn
                    await target.close()
                    return None
                if question.fresh and (forget := getattr(self.brain, "forget", None)):
                    await forget(question.conversation)  # in its turn: after the reply before it
                return await self._run(running, target)
        except Exception:
            log.exception("reply %s failed", question.reply_id)
            return None
        finally:
            await marking
            await self._shared("unmark_live", question.reply_id)
            del self._running[question.reply_id]
            for message in running.messages:
                self._messages.pop(message, None)
            if slot is not None:
                await self.gate.release(slot)
            running.done.set()

    async def _run(self, running: _Running, target: Target) -> Outcome:
        q = running.question
        tag_reply(reply_id=q.reply_id, conversation=q.conversation, platform=target.platform)

        def posted(index: int, handle: Any) -> None:
            if key := target.message_key(handle):
                self._track(running, key, index)

        profile = self.profile_for(q, target.platform)
        run = _Searches(self.brain_for(profile).start(q.model_input(), q.conversation))
        reply = Reply(
            run,
            target,
            self.pacer,
            self.config.stream,
            self.store,
            reply_id=q.reply_id,
            on_post=posted,
        )
        running.reply = reply
        outcome = await reply.run()
        log.info(
            "reply %s %s in %d message(s) (%d posts, %d edits, %d rate limited)",
            q.reply_id,
            outcome.status,
            len(outcome.pages),
            outcome.posts,
            outcome.edits,
            outcome.rate_limited,
            extra={
                "reply_id": q.reply_id,
                "conversation": q.conversation,
                "platform": target.platform,
                "profile": profile,
                "status": outcome.status,
                "placeholder_after": outcome.placeholder_after,
                "first_text_after": outcome.first_text_after,
                "input_tokens": outcome.usage.input_tokens if outcome.usage else None,
                "output_tokens": outcome.usage.output_tokens if outcome.usage else None,
            },
        )
        finished = Finished(q, target.platform, outcome, profile, *run.citations(outcome.text))
        self.spawn(self._record(finished))
        await self._count_usage(finished)
        if outcome.human is not None:
            await self.request_human(q.conversation, profile, "model", outcome.human, target)
        for hook in self.on_finished:
            hook(finished)
        return outcome

    # --- the support desk: facts for the report, feedback, handoffs --------------------------------

    async def _record(self, finished: Finished) -> None:
        """The reply's facts for `streambot report`."""
        q = finished.question
        facts = AnswerFacts(
            q.reply_id,
            finished.profile,
            finished.platform,
            q.conversation,
            q.prompt[:500],
            finished.outcome.status,
            cited=bool(finished.sources),
            not_in_docs=finished.not_in_docs,
        )
        try:
            await self.ledger.record_answer(facts)
        except Exception as exc:  # the report misses one answer; the reply is not affected
            log.warning("could not record reply %s for the report: %s", q.reply_id, exc)

    async def feedback(self, reply_id: str, user: str, vote: Vote, platform: str) -> None:
        """`user` clicked 👍 or 👎 under reply `reply_id` (their last click counts)."""
        answer = await self.ledger.answer(reply_id)
        await self.ledger.vote(reply_id, user, vote)
        profile = answer.profile if answer else "(unknown)"
        metrics.FEEDBACK.labels(platform, profile, vote).inc()
        log.info("%s voted %s on reply %s", user, vote, reply_id, extra={"reply_id": reply_id})

    async def feedback_reason(self, reply_id: str, user: str, reason: str) -> None:
        """Why `user` voted 👎 (optional; asked after the click)."""
        await self.ledger.give_reason(reply_id, user, reason.strip()[:1000])

    async def request_human(
        self, conversation: str, profile: str, by: str, reason: str, target: Target
    ) -> HandoffResult:
        """Hand `conversation` to a person: ping once (whoever asks, however often), then stay
        silent there until someone resolves it."""
        settings = self.handoff_for(profile)
        if settings is None:
            return "off"
        facts = HandoffFacts(conversation, profile, reason.strip()[:300] or "asked for a person", by)

        async def announce(facts: HandoffFacts) -> dict[str, Any]:
            await self.pacer.acquire(target.budgets("notice"))
            return await target.hand_off(settings, facts)

        try:
            pinged = await self.handoffs.request(facts, target.platform, announce)
        except Exception as exc:
            log.warning("could not hand %s to a person: %s", conversation, exc)
            return "off"
        return "pinged" if pinged else "already"

    async def resolve(self, conversation: str, by: str) -> bool:
        """A person resolved the handoff: the bot answers in `conversation` again."""
        return await self.handoffs.resolve(conversation, by) is not None

    async def _held(self, question: Question, profile: str, target: Target) -> bool:
        """True when a person has this conversation (the bot stays silent), or when the
        question was the command that resolves it."""
        if self.handoff_for(profile) is None:
            return False
        try:
            if not await self.handoffs.held(question.conversation):
                return False
            if is_resolve_command(question.prompt):
                await self.resolve(question.conversation, question.user)
                await target.resolved()
                await self.notice(target, RESOLVED)
                return True
        except Exception as exc:  # a store that is down: answering beats silence
            log.warning("could not check %s for a handoff (%s); answering", question.conversation, exc)
            return False
        log.info("conversation %s is with a person; not answering", question.conversation)
        return True

    async def _count_usage(self, finished: Finished) -> None:
        """Add the reply's tokens to the metrics and to its person's, channel's and profile's
        totals (which `[limits]` reads); a usage store that fails costs no reply."""
        usage, q = finished.outcome.usage, finished.question
        if usage is None:
            return
        metrics.TOKENS.labels(finished.platform, "input").inc(usage.input_tokens)
        metrics.TOKENS.labels(finished.platform, "output").inc(usage.output_tokens)
        if self.usage is None:
            return
        spent = Spent(
            q.user,
            q.channel,
            finished.platform,
            usage.input_tokens,
            usage.output_tokens,
            profile=finished.profile,
            name=q.author,
        )
        try:
            await self.usage.record(spent)
        except Exception as exc:
            log.warning("could not record the token usage of reply %s: %s", q.reply_id, exc)

    def _track(self, running: _Running, message: str, page: int | None) -> None:
        """Deleting `message` (the question: page None) stops `running`."""
        running.messages.add(message)
        self._messages[message] = (running.question.reply_id, page)

    @contextlib.asynccontextmanager
    async def _turn(self, conversation: str) -> AsyncIterator[None]:
        """One reply at a time per conversation, so memory holds the turns in order: in this
        process first (in order of arrival), then across replicas (the store's lock)."""
        if not conversation:  # no memory: nothing to keep in order
            yield
            return
        lock, users = self._turns.get(conversation, (asyncio.Lock(), 0))
        self._turns[conversation] = (lock, users + 1)
        try:
            async with lock, self.store.turn(conversation) if self.store else contextlib.nullcontext():
                yield
        finally:
            lock, users = self._turns[conversation]
            if users <= 1:
                del self._turns[conversation]
            else:
                self._turns[conversation] = (lock, users - 1)

    @property
    def remembers(self) -> bool:
        """Whether the brain keeps conversation memory (there is something to forget)."""
        return bool(getattr(self.brain, "remembers", False))

    def start_over(self, conversation: str) -> bool:
        """`forget` in the background, for commands that must answer at once (chat platforms
        want an answer within 3 s; a reply may be streaming in the conversation). The clearing
        takes its turn now, so it comes after that reply and before any later one."""
        if not (self.remembers and conversation):
            return False
        self.spawn(self.forget(conversation))
        return True

    async def forget(self, conversation: str) -> bool:
        """Start `conversation` over (/forget, /streambot new): its memory is cleared once the
        reply running in it, if any, has ended. False when the brain keeps no memory."""
        forget = getattr(self.brain, "forget", None)
        if forget is None or not conversation:
            return False
        async with self._turn(conversation):
            forgotten = bool(await forget(conversation))
        log.info("conversation %s started over", conversation)
        return forgotten

    async def notice(self, target: Target, text: str) -> None:
        """A short message that is not a model reply (a hint, a refusal), paced like the rest."""
        try:
            await self.pacer.acquire(target.budgets("notice"), ACK)
            await target.notice(text)
        except Exception as exc:  # a notice is best effort: it must never break the adapter
            log.info("could not send a notice: %s", exc)

    # --- what people do while a reply streams ---------------------------------------------------

    async def stop(self, reply_id: str, user: str, *, moderator: bool = False) -> StopResult:
        """Stop button: only the person who asked (or a moderator) may stop an answer. A reply
        that runs on another replica is stopped there."""
        running = self._running.get(reply_id)
        asker = running.question.user if running else await self._shared("live_user", reply_id)
        if asker is None:
            return "unknown"
        if user != asker and not moderator:
            log.info("ignoring Stop from %s on reply %s", user, reply_id)
            return "not_yours"
        log.info("%s pressed Stop on reply %s", user, reply_id, extra={"reply_id": reply_id})
        if running is not None:
            running.stop()
        else:
            await self._shared("publish", {"op": "stop", "reply": reply_id})
        return "stopped"

    async def deleted(self, message: str) -> bool:
        """The question or a page of a running reply was deleted: stop that reply, here or on
        whichever replica runs it."""
        if self._deleted_here(message):
            return True
        await self._shared("publish", {"op": "deleted", "message": message})
        return False

    def _signal(self, signal: dict[str, Any]) -> None:
        """Another replica forwarded a Stop or a deletion; act if the reply runs here."""
        if signal.get("op") == "stop" and (running := self._running.get(str(signal.get("reply")))):
            log.info("stopping reply %s for another replica", signal["reply"])
            running.stop()
        elif signal.get("op") == "deleted":
            self._deleted_here(str(signal.get("message")))

    def _lease_lost(self) -> None:
        """This process may soon count as dead: end every reply now, text kept, so none is
        still streaming when another replica repairs it."""
        for running in list(self._running.values()):
            running.stop(self.config.stream.interrupted_marker)

    async def _shared(self, method: str, *args: Any) -> Any:
        """Call the store's coordination `method`; a store that is down costs no reply."""
        if self.store is None:
            return None
        try:
            return await getattr(self.store, method)(*args)
        except Exception as exc:
            log.warning("could not reach the shared store (%s): %s", method, exc)
            return None

    def _deleted_here(self, message: str) -> bool:
        found = self._messages.pop(message, None)
        running = self._running.get(found[0]) if found else None
        if found is None or running is None:
            return False
        log.info("message %s deleted; stopping reply %s", message, found[0], extra={"reply_id": found[0]})
        if running.reply is not None and found[1] is not None:
            running.reply.forget(found[1])
        running.stop()
        return True

    def running(self) -> int:
        return len(self._running)

    # --- background work, restarts and crashes ---------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` in the background; shutdown waits for it (within the grace period)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def repair(self, platform: str, finish: Finish, page_limit: int) -> None:
        """Finish the messages of `platform` that a dead process left streaming: their text so
        far plus the interrupted marker, within `page_limit`. Runs until shutdown."""
        if self.store is None:
            return
        marker = self.config.stream.interrupted_marker

        async def one(record: ReplyRecord) -> None:
            try:
                await finish(record.place, with_marker(record.text, marker, page_limit))
            except Exception as exc:
                log.warning("%s: could not finish interrupted reply %s: %s", platform, record.reply_id, exc)

        self._repairs.append(asyncio.create_task(repair_orphans(self.store, platform, one)))

    async def shutdown(self) -> None:
        """Take no new questions, give running replies `shutdown_grace` seconds to finish, then
        stop the rest with the interrupted marker (their text kept) and let them show it.
        Every adapter calls this on its way out; the work is done once."""
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._shutdown)

    async def _shut_down(self) -> None:
        self.closing = True
        for task in [*self._repairs, self._listener]:
            if task is not None:
                task.cancel()
        stream = self.config.stream
        waiting: set[asyncio.Future[Any]] = {
            asyncio.ensure_future(r.done.wait()) for r in self._running.values()
        }
        waiting |= self._tasks
        if waiting:
            log.info("shutting down; waiting for %d reply(s)", len(self._running))
            waiting = await self._wait(waiting, stream.shutdown_grace)
        for running in list(self._running.values()):
            running.stop(stream.interrupted_marker)
        if waiting:
            await self._wait(waiting, FINAL_GRACE)

    async def _wait(self, tasks: set[asyncio.Future[Any]], timeout: float) -> set[asyncio.Future[Any]]:
        """Wait for `tasks` at most `timeout` seconds of the pacer's clock; the ones not done."""
        everything = asyncio.ensure_future(asyncio.wait(tasks))
        timer = asyncio.ensure_future(self.pacer.clock.sleep(timeout))
        await asyncio.wait({everything, timer}, return_when=asyncio.FIRST_COMPLETED)
        everything.cancel()  # stops the waiting, not the tasks
        timer.cancel()
        return {t for t in tasks if not t.done()}
