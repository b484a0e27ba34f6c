"""Read the facts a host's plan will ask for in one round trip, before deploy.py asks them.

pyinfra 3 reads every fact with a command of its own over SSH and keeps no cache: a GPU node's
plan asks about 60 facts, one after the other, ~50 ms each on a LAN (3 s of every deploy, drift
check and rollout step). A host's plan asks the same facts run after run, so the control host
remembers, per host, which facts (class and arguments) its plans asked, and the next plan runs
all their commands in one shell command before deploy.py starts. While pyinfra *prepares* the
deploy, ``host.get_fact`` answers from those outputs.

That command runs the reads in ``READ_LANES`` concurrent lanes (operations/read_lanes.py, each
lane under one time limit): most of a read's time is a process starting and waiting on a daemon
(dockerd, dpkg's database, apt's cache), so one after another they cost a GPU node ~1.7 s
(`make bench-reads`). Each read's output goes to a file in a
private temporary directory on the host (``mktemp -d`` under ``$TMPDIR``, mode 0700, removed when
the command ends or is killed), and the files are printed in order: each read's output, exit
status and stderr (dropped) are as when pyinfra reads it alone. Facts only read: running them side
by side changes no answer. A host where the directory cannot be made answers nothing, and its
facts are read one by one, as without a prefetch.

Reads of one kind share one process where a tool answers many at once (operations/fact_batches.py):
pyinfra's file facts of plain paths from one ``stat``, one ``sha1sum`` and one ``sha256sum``; every
package list from one ``dpkg-query``; every single container or image inspect from one ``curl``;
every unit state from one ``systemctl show``.
Each read's answer is cut out of its batch's output as its own command would print it, and a batch
that did not work answers none of its reads, which pyinfra then reads one by one.

At execution pyinfra runs each operation again and re-reads its facts, so that an operation sees
what earlier operations changed. Until the first command runs on the host in this run (an
operation's command or upload, or one a callback runs over the host's connection; a callback that
changes only a service's API, Milvus's users, changes no fact) nothing has changed it since the
snapshot, so execution keeps answering from it: a no-op converge reads the host once. From that command on
every read is pyinfra's own. The snapshot is the plan's moment, as pyinfra's own plan is; the deploy
lock (operations/deploy_lock.py) keeps other gpufleet runs off the host between the two.

Facts about services whose health depends on other hosts (``read_live_at_execution = True``: a
health URL, an upstream's probes) are covered by no lock: another host's operation may start or
recreate the service in this run, a callback may change it through its API, and a service may
come up or go down by itself. At execution they answer from the snapshot only while nothing has
run on *any* host in this run (:func:`anything_executed`) and the snapshot is at most
``LIVE_SNAPSHOT_MAX_AGE_S`` old (not after a confirmation prompt, or a wait for another host's
lock); otherwise they are read live.

Anything else reads as pyinfra does:

* after the first command of the execution on this host (above);
* a fact not prefetched (new in deploy.py, or its arguments changed: a new image tag), which is
  then remembered for the next plan;
* a prefetched command that failed, printed pyinfra's "command missing" marker, or ran with other
  privileges than the fact now asks for (``_sudo``...): read again, so errors are pyinfra's own;
* facts with preconditions and short facts.

Each kind of run prefetches what its own last ``KEEP_RUNS`` runs on the host asked: a deploy
(every plan of deploy.py: ``pyinfra``, rollouts, ``drift --fix``) and a drift check, which adds
the runtime reads a deploy does not need (the kind is the State's ``gpufleet_reads_kind``,
default ``deploy``; gpufleet/drift.py sets ``drift``). Facts that no kind's last ``KEEP_RUNS``
runs asked, or none asked for ``FORGET_AFTER_DAYS``, are dropped from the list: each costs the host a process in every plan,
and a week of them (reads only a change asks, old image tags, hosts since removed) had a lab
node read 121 facts in a no-op converge that asks 84 (README: "Speed"). A read dropped too
early is only read by pyinfra when asked, and remembered again. A fact class with a
``prefetch_kwargs(host_name)`` static method is remembered once, whatever its arguments, and
prefetched with the arguments that returns: for a read whose arguments are the answers the
control host has (VllmNcclVersions' ``known``), the remembered ones are a run old and would redo
the work. The list lives in ``$GPUFLEET_CACHE_DIR`` (default ``~/.cache/gpufleet``)
``/fact-reads/<host>.json``; deleting it only makes the next plan of each kind slower.
A run counts once it asked a remembered read, also when its plan stopped early (a refusal): the
reads past that point age, at worst into one slower plan. A drift prefetches what drifts asked:
after a deploy with new arguments (a new image tag), its plan reads them one by one, once.

Uses pyinfra's fact-command helpers (``_handle_fact_kwargs``, ``_make_command``): pyinfra is
pinned exactly (pyproject.toml), and tests/unit/test_fact_prefetch.py compares every answer
with pyinfra's own read.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import secrets
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gevent
import gevent.event
from pyinfra import config as current_config
from pyinfra import host as current_host
from pyinfra import state as current_state
from pyinfra.api import FactBase, OperationError, StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.api.facts import _MISSING_COMMAND_MARKER, _handle_fact_kwargs, _make_command
from pyinfra.api.state import BaseStateCallback, StateStage
from pyinfra.api.util import get_kwargs_str, log_error_or_warning
from pyinfra.context import ctx_config, ctx_host

from operations import pyinfra_speedups
from operations.fact_batches import Batch, Batches
from operations.facts.util import ReadTimedOut
from operations.read_lanes import concurrent_reads, read_output

FORGET_AFTER_DAYS = 7
# Runs of the host of one kind (plans, with their execution) that a remembered read is still
# prefetched for without being asked (a read asked only by some runs: one that a change asks).
KEEP_RUNS = 3
# The State attribute naming the kind of run (above), and the kind when it is not set.
READS_KIND_ATTRIBUTE = "gpufleet_reads_kind"
DEFAULT_READS_KIND = "deploy"
DRIFT_READS_KIND = "drift"
# Concurrent reads per host in the prefetch: enough to overlap the waits on the daemons; more only
# crowd the host's cores (a lab node has two).
READ_LANES = 4
# How old the snapshot may be for a fact about other hosts' services to be answered from it at
# execution (above): a no-op converge of the lab executes ~0.2 s after its snapshot.
LIVE_SNAPSHOT_MAX_AGE_S = 5.0
# Arguments that change what a fact's command sees; the others (timeouts, retries) do not.
_PRIVILEGE_KEYS = ("_sudo", "_sudo_user", "_use_sudo_login", "_preserve_sudo_env", "_su_user", "_use_su_login",
                   "_preserve_su_env", "_su_shell", "_doas", "_doas_user", "_dzdo", "_dzdo_user",
                   "_shell_executable", "_chdir", "_env")


def cache_root() -> Path:
    """What gpufleet remembers to go faster: ``$GPUFLEET_CACHE_DIR``, else ``~/.cache/gpufleet``."""
    return Path(os.environ.get("GPUFLEET_CACHE_DIR") or Path.home() / ".cache" / "gpufleet")


def cache_file(host_name: str) -> Path:
    return cache_root() / "fact-reads" / f"{host_name}.json"


def write_cache_file(path: Path, text: str) -> None:
    """Write ``text`` to a file under :func:`cache_root`: 0600 from its first byte in a 0700
    directory (like everything gpufleet keeps about the fleet: gpufleet/private_files.py),
    replaced atomically. OSError propagates: a caller that only goes faster with it ignores it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def prefetch_facts(reads_ahead: Callable[[], None] | None = None, first: Any = None) -> int:
    """Prefetch the current host's remembered facts for this plan; how many were read.

    Call it at the top of deploy.py (pyinfra's Prepare stage, once per host). ``reads_ahead``, if
    given, starts the plan's slow reads from the control host (:func:`read_ahead`) beside the
    snapshot's round trip; the facts those read before the snapshot is in are read by pyinfra.

    ``first``, if given, is a command that must run on the host before any read: the deploy lock
    (operations/deploy_lock.DeployLock). It leads the snapshot's one command, in a subshell, and
    the reads after it run only when it exits 0, so the lock costs no round trip of its own. What
    it printed goes to ``first.answer(lines, exit status)``, which raises to refuse the host. It
    runs alone first (``first.take()``) where it cannot lead: ``first.lead_command()`` is None (no
    SSH), no snapshot is read, the command did not start. Until it has answered, the reads ahead
    run no command on the host (they wait for it, and fail if it refused the host): they start
    beside the snapshot's command, and their host reads then answer from the snapshot.
    Example::

        from operations.fact_prefetch import prefetch_facts
        prefetch_facts()
    """
    pyinfra_speedups.install()
    state, host = current_state._get_module(), current_host._get_module()
    if state.current_stage != StateStage.Prepare or isinstance(host.__dict__.get("get_fact"), _PrefetchedFacts):
        if first is not None:
            first.take()
        return 0
    watch_what_runs(state)  # for the facts about other hosts' services (above)
    facts = _PrefetchedFacts(state, host)
    host.get_fact = facts  # an instance attribute: this Host only, this State only
    for method in ("run_shell_command", "put_file", "get_file"):
        setattr(host, method, facts.noting_changes(getattr(host, method)))
    host.disconnect = facts.saving_at_the_end(host.disconnect)
    if first is not None:
        facts.hold_commands()  # reads ahead start now and must not touch the host before it
    if reads_ahead is not None:
        try:
            reads_ahead()
            # Their greenlets start now, up to their first wait (the lead, a Popen): their first
            # fact reads get no operation's arguments, even when the snapshot below has nothing to
            # read and so never waits (read() lets them go on before the plan's first operation).
            gevent.sleep(0)
        except BaseException as exc:
            facts.lead_answered(exc)  # what waits for the lead must not wait for ever
            raise
    return facts.read(first)


def read_once(key: str, read):
    """``read()`` for a read that is not a pyinfra fact (an API asked from the control host), under
    the snapshot rule above: at execution, the value found while planning is used again as long as
    nothing has run on the current host; otherwise, and without a prefetch, ``read()`` again. A
    read started by :func:`read_ahead` under the same key is waited for instead of asked again.

    Example (operations/milvus_users.py)::

        found = read_once(f"milvus-users:{uri}", lambda: check(uri))
    """
    host = current_host._get_module()
    facts = host.__dict__.get("get_fact")
    if not isinstance(facts, _PrefetchedFacts):
        return read()
    stage = facts.state.current_stage
    holds = stage == StateStage.Prepare or not facts.commands_ran
    found = facts.planned_reads.get(key, _NOT_READ)
    if isinstance(found, _ReadAhead):
        del facts.planned_reads[key]
        if holds:
            value = found.result()  # what it raised is raised here, and nothing kept: asked again next time
            facts.planned_reads[key] = value
            return value
        found.cancel()  # a command ran on the host since it started: its answer may be out of date
        found = _NOT_READ
    if stage == StateStage.Execute and holds and found is not _NOT_READ:
        return found
    value = read()
    if stage == StateStage.Prepare:
        facts.planned_reads[key] = value
    return value


def read_ahead(key: str, read) -> None:
    """Start ``read()`` now, on a greenlet of its own, for a later ``read_once(key, read)`` of the
    current host's plan: a slow read from the control host (a child process, an API) then runs
    while the rest of the plan is made, instead of after it. While nothing has run on the host,
    read_once waits for it and returns its answer, or raises what it raised (and the next
    read_once asks again); once a command ran, read_once cancels it and asks again. A read ahead
    that nobody waited for (the plan stopped before it got there) is cancelled when the host
    disconnects. Nothing happens outside a prefetched plan's Prepare stage, or when the key was
    read already. Its fact reads must not depend on an operation's context: it runs beside the
    plan, and pyinfra gives a fact read the arguments of the operation in progress on its host
    (prefetch_facts starts it before any operation). Example::

        prefetch_facts(reads_ahead=lambda: read_ahead(f"milvus-users:{uri}", lambda: check(uri)))
    """
    host = current_host._get_module()
    facts = host.__dict__.get("get_fact")
    if (not isinstance(facts, _PrefetchedFacts) or facts.state.current_stage != StateStage.Prepare
            or key in facts.planned_reads):
        return
    facts.planned_reads[key] = _ReadAhead(host, current_config._get_module(), read)


_NOT_READ = object()


class _ReadAhead:
    """A read running on its own greenlet, with the host and config contexts of the plan that
    started it (pyinfra keeps both per greenlet); :meth:`result` waits for it."""

    def __init__(self, host, config, read):
        def run():
            with ctx_host.use(host), ctx_config.use(config):
                try:
                    return True, read()
                except Exception as exc:  # noqa: BLE001 - raised where read_once waits for it
                    return False, exc
        self.greenlet = gevent.spawn(run)

    def result(self):
        ok, value = self.greenlet.get()
        if not ok:
            raise value
        return value

    def cancel(self, wait_s: float | None = None) -> None:
        """Stop it (GreenletExit inside it: a child process it waits for is killed, a tunnel it
        holds closed); ``wait_s``: wait that long for it to be gone."""
        self.greenlet.kill(block=wait_s is not None, timeout=wait_s)


def _run_numbers(value) -> dict[str, int]:
    """``{kind: run number}`` from the list (written by this module; anything else reads as none)."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}


def _asked_lately(asked_in: dict[str, int], kind: str, runs: dict[str, int]) -> bool:
    """Whether one of the last KEEP_RUNS runs of ``kind`` on the host asked a read (``asked_in``:
    the read's last run of each kind; ``runs``: the host's last run of each kind, before this one)."""
    return kind in asked_in and asked_in[kind] > runs.get(kind, 0) - KEEP_RUNS


def _fact_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _key(name: str, fact_kwargs: dict[str, Any]) -> str:
    return json.dumps([name, fact_kwargs], sort_keys=True, default=str)


def _privileges(global_kwargs: dict[str, Any]) -> str:
    return json.dumps({k: global_kwargs.get(k) for k in _PRIVILEGE_KEYS}, sort_keys=True, default=str)


class _PrefetchedFacts:
    """``host.get_fact`` for one plan: prefetched answers while preparing, pyinfra's reads otherwise."""

    def __init__(self, state, host):
        self.state, self.host = state, host
        self.read_fact = type(host).get_fact.__get__(host)  # pyinfra's own
        self.path = cache_file(host.name)
        self.kind = getattr(state, READS_KIND_ATTRIBUTE, None) or DEFAULT_READS_KIND
        self.runs, self.remembered = self._load()  # {kind: its last run's number on the host}; the list
        self.run = self.runs.get(self.kind, 0) + 1  # this run's number among its kind
        self.marked = False  # a remembered read was asked again in this run: saved when it ends
        self.answers: dict[str, tuple[str, int, list[str]]] = {}  # key -> (privileges, exit code, stdout)
        self.readers: set = set()  # greenlets inside a fact read of ours or pyinfra's: not a change
        self.commands_ran = False  # a command, upload or download ran on the host since the snapshot
        self.planned_reads: dict[str, Any] = {}  # read_once(): what a non-fact read found while planning
        # (or a _ReadAhead still reading it)
        self.lead_pending: tuple[Any, gevent.event.Event] | None = None  # hold_commands(): (its greenlet, answered)
        self.lead_refused: BaseException | None = None
        self.snapshot_at: float | None = None  # time.monotonic() when the (first) snapshot came back

    def noting_changes(self, method):
        """``method`` (the host's run_shell_command, put_file, get_file), noting that the snapshot
        may be out of date once anything but a fact read went through it."""
        def noted(*args, **kwargs):
            self._after_the_lead()
            if gevent.getcurrent() not in self.readers:
                self.commands_ran = True
            return method(*args, **kwargs)
        return noted

    @contextmanager
    def _reading(self):
        """A fact read on this greenlet, which is not a change (a read ahead may run beside an
        operation's command on another greenlet, which is one)."""
        me = gevent.getcurrent()
        self.readers.add(me)
        try:
            yield
        finally:
            self.readers.discard(me)

    def _read_live(self, cls, *args, **kwargs):
        with self._reading():
            return self.read_fact(cls, *args, **kwargs)

    def _load(self) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
        try:
            saved = json.loads(self.path.read_text())
            entries, runs = saved["facts"], _run_numbers(saved.get("runs"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}, {}
        oldest = (datetime.date.today() - datetime.timedelta(days=FORGET_AFTER_DAYS)).isoformat()
        kept = {}
        for e in entries:
            if not isinstance(e, dict) or e.get("asked", "") < oldest:
                continue
            # A list from before runs were counted per kind: its reads count as asked by run 0 of each.
            asked_in = (_run_numbers(e.get("runs")) if isinstance(e.get("runs"), dict)
                        else {kind: 0 for kind in (DEFAULT_READS_KIND, DRIFT_READS_KIND, self.kind)})
            if any(_asked_lately(asked_in, kind, runs) for kind in asked_in):
                kept[_key(e["fact"], e["kwargs"])] = {"fact": e["fact"], "kwargs": e["kwargs"], "asked": e["asked"],
                                                      "runs": asked_in}
        return runs, kept

    def _save(self) -> None:
        entries = sorted(self.remembered.values(), key=lambda e: _key(e["fact"], e["kwargs"]))
        runs = {**self.runs, self.kind: self.run}
        write_cache_file(self.path, json.dumps({"runs": runs, "facts": entries}, indent=1) + "\n")
        self.marked = False

    def saving_at_the_end(self, disconnect):
        """``disconnect`` (the host's), first cancelling reads ahead nobody waited for and saving
        which remembered reads this run asked again (pyinfra disconnects every host at the end of
        a run: its CLI, gpufleet's runs)."""
        def saved_then_disconnected(*args, **kwargs):
            self.cancel_reads_ahead()  # the plan stopped before it needed their answers
            if self.marked:
                try:
                    self._save()
                except OSError:
                    pass  # a read-only home only costs speed
            return disconnect(*args, **kwargs)
        return saved_then_disconnected

    def hold_commands(self) -> None:
        """Until the lead (the deploy lock) has answered (:meth:`lead_answered`), a fact read or
        command on this host from any other greenlet (a read ahead) waits for it, and fails if it
        refused the host: nothing reads the host before the lock is held. This greenlet's own
        commands (the prefetch's) go."""
        self.lead_pending = (gevent.getcurrent(), gevent.event.Event())

    def _after_the_lead(self) -> None:
        if self.lead_pending is None:
            return
        leader, answered = self.lead_pending
        if gevent.getcurrent() is not leader:
            answered.wait()
            if self.lead_refused is not None:
                raise OperationError(f"{self.host.name}: not read: {self.lead_refused}")

    def lead_answered(self, refused: BaseException | None = None) -> None:
        """Let what waits for the lead go on (or fail with ``refused``), before the plan goes on."""
        if self.lead_pending is not None:
            self.lead_refused = refused
            self.lead_pending[1].set()
            if refused is None:
                self.lead_pending = None
                # The reads ahead's next steps (their fact reads, from the snapshot) run now, outside
                # any operation: pyinfra gives a fact read the arguments of the operation in progress.
                gevent.sleep(0)

    def take_alone(self, first) -> None:
        """``first.take()``: its own command, which only reads and locks (not a change to the host:
        execution still answers from the snapshot)."""
        with self._reading():
            first.take()

    def cancel_reads_ahead(self) -> None:
        for key, pending in list(self.planned_reads.items()):
            if isinstance(pending, _ReadAhead):
                pending.cancel(wait_s=5)
                del self.planned_reads[key]  # a later read_once (after a reboot) asks again

    # ------------------------------------------------------------------ one round trip -----------
    def read(self, first: Any = None) -> int:
        """Run the remembered reads (led by ``first``: :func:`prefetch_facts`); how many answered."""
        try:
            count = self._read(first)
        except BaseException as exc:
            self.lead_answered(exc)  # commands waiting for the lead fail as it did
            raise
        self.lead_answered()  # the lock is held (or there was none): the other commands go
        return count

    def _read(self, first: Any = None) -> int:
        lead = first.lead_command() if first is not None else None
        if first is not None and lead is None:
            self.take_alone(first)
        # privileges -> ([(key, command)], the batched reads, the global arguments they share)
        groups: dict[str, tuple[list[tuple[str, Any]], Batches, dict[str, Any]]] = {}
        for key, entry in self.remembered.items():
            if not _asked_lately(entry["runs"], self.kind, self.runs):
                continue
            cls = remembered_fact_class(entry["fact"])
            if cls is None or not _prefetchable(cls):
                continue
            try:
                fact_kwargs, global_kwargs = _fact_kwargs(self.state, self.host, cls, [],
                                                          prefetch_arguments(cls, entry["kwargs"], self.host.name))
                command = _fact_command(cls(), dict(fact_kwargs))  # also checks the arguments still fit
            except Exception:  # noqa: BLE001 - remembered by another gpufleet (an argument renamed since):
                continue  # left out, never a plan that fails; pyinfra reads it if this version asks it
            if hasattr(cls, "prefetch_kwargs"):
                key = _key(entry["fact"], fact_kwargs)
            items, batches, _ = groups.setdefault(_privileges(global_kwargs), ([], Batches(), global_kwargs))
            if batches.add(key, cls, fact_kwargs):
                continue  # answered by its batch's one process (operations/fact_batches.py)
            if command is not None:
                items.append((key, command))
        if lead is not None:  # the lead's privileges' command goes first, whatever it reads
            led = _privileges(first.global_kwargs)
            groups = {led: groups.get(led, ([], Batches(), first.global_kwargs)),
                      **{k: v for k, v in groups.items() if k != led}}
        for privileges, (items, batches, global_kwargs) in groups.items():
            if items or batches or lead is not None:  # reads whose commands came out empty: nothing to send
                self._run(privileges, items, list(batches), global_kwargs, first if lead is not None else None)
                lead = None  # led once: by the first command
        return len(self.answers)

    def _run(self, privileges: str, items: list, batches: list[Batch], global_kwargs: dict[str, Any],
             first: Any = None) -> None:
        """One command: ``first``'s lead, then the reads ``items`` ([(key, command)]) and ``batches``,
        each in a lane."""
        mark = f"__gpufleet_fact_{secrets.token_hex(4)}"
        commands = [command for _, command in items] + [batch.command() for batch in batches]
        executor_kwargs = {k: v for k, v in global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS}
        lead = first.lead_command() if first is not None else None
        try:
            with self._reading():
                ok, output = self.host.run_shell_command(concurrent_reads(commands, mark, READ_LANES, lead=lead),
                                                         print_output=False, print_input=False, **executor_kwargs)
        except Exception as exc:  # noqa: BLE001 - a failed prefetch only means the facts are read one by one
            if first is not None:  # the connection failed, perhaps after the lock was taken: refused
                first.answer([f"{type(exc).__name__}: {exc}"], None)
            return
        if self.snapshot_at is None:
            self.snapshot_at = time.monotonic()
        stdout = list(output.stdout_lines)
        if first is not None:
            lead_lines, lead_rc, stdout = _lead_answer(stdout, mark)
            if lead_rc is None and not ok and not lead_lines:
                self.take_alone(first)  # the command did not start (too long for the host...): the lock alone
            else:
                first.answer(lead_lines if lead_rc is not None else [*lead_lines, *output.stderr_lines], lead_rc)
        if not ok:
            return
        for i, (rc, lines) in read_output(stdout, mark).answers(commands, READ_LANES).items():
            if i < len(items):
                self.answers[items[i][0]] = (privileges, rc, lines)
            elif i - len(items) < len(batches):
                for key, answer in batches[i - len(items)].answers(lines, rc).items():
                    self.answers[key] = (privileges, 0, answer)

    # ------------------------------------------------------------------ host.get_fact ------------
    def __call__(self, cls, *args, **kwargs):
        self._after_the_lead()  # a read ahead's read: then from the snapshot, which came with it
        stage = self.state.current_stage
        if not _prefetchable(cls):
            return self._read_live(cls, *args, **kwargs)
        fact_kwargs, global_kwargs = _fact_kwargs(self.state, self.host, cls, args, kwargs)
        key = _key(_fact_name(cls), fact_kwargs)
        # Remembered at either stage: `pyinfra -y` (and every run of tests, rollouts and drift that
        # does not ask) skips running operations while preparing, so most reads happen at execution.
        self._remember(key, _fact_name(cls), fact_kwargs, latest_only=hasattr(cls, "prefetch_kwargs"))
        if not (stage == StateStage.Prepare or self._snapshot_holds(cls, stage)):
            return self._read_live(cls, *args, **kwargs)
        answer = self.answers.get(key)
        if answer is not None:
            privileges, rc, lines = answer
            if rc == 0 and privileges == _privileges(global_kwargs) and lines != [_MISSING_COMMAND_MARKER]:
                fact = cls()
                try:
                    _make_command(fact.command, dict(fact_kwargs))  # some facts keep their arguments for process()
                    return fact.process(lines) if lines else fact.default()
                except ReadTimedOut as exc:
                    return self._timed_out(fact, fact_kwargs, global_kwargs, exc)
                except Exception:  # noqa: BLE001 - pyinfra's own read reports it properly
                    pass
        return self._read_live(cls, *args, **kwargs)

    def _timed_out(self, fact, fact_kwargs, global_kwargs, exc: ReadTimedOut):
        """A read the host killed at its time limit (operations/facts/util.py: wrap) is not read
        again: a hung tool would hold the run for that limit a second time. Reported as pyinfra
        reports a fact it cannot process (``_get_fact``): the error logged, the host failed."""
        log_error_or_warning(self.host, global_kwargs["_ignore_errors"],
                             description=f"could not process fact: {fact.name} {get_kwargs_str(fact_kwargs)}",
                             exception=exc)
        if not global_kwargs["_ignore_errors"]:
            self.state.fail_hosts({self.host})
        return fact.default()

    def _snapshot_holds(self, cls, stage) -> bool:
        if stage != StateStage.Execute or self.commands_ran:
            return False
        if not getattr(cls, "read_live_at_execution", False):
            return True
        fresh = self.snapshot_at is not None and time.monotonic() - self.snapshot_at <= LIVE_SNAPSHOT_MAX_AGE_S
        return fresh and not anything_executed(self.state)

    def _remember(self, key: str, name: str, fact_kwargs: dict[str, Any], latest_only: bool = False) -> None:
        today = datetime.date.today().isoformat()
        known = self.remembered.get(key)
        if known is not None and known.get("asked") == today and known["runs"].get(self.kind) == self.run:
            return
        try:
            json.dumps(fact_kwargs)
        except TypeError:
            return  # arguments that do not survive a round trip through JSON are not remembered
        runs = dict(known["runs"]) if known is not None else {}
        if latest_only:  # prefetched with prefetch_kwargs(): older arguments would be the same read twice
            for older in [e for e in self.remembered.values() if e["fact"] == name]:
                for kind, n in older["runs"].items():  # which kinds asked it stays known
                    runs[kind] = max(n, runs.get(kind, n))
            self.remembered = {k: e for k, e in self.remembered.items() if e["fact"] != name}
        runs[self.kind] = self.run
        self.remembered[key] = {"fact": name, "kwargs": fact_kwargs, "asked": today, "runs": runs}
        if known is not None:
            self.marked = True  # saved once, when the run ends: not a file write per read
            return
        try:
            self._save()  # a read new to the list: kept even if this run ends badly
        except OSError:
            pass  # a read-only home only costs speed


class _RunWatch(BaseStateCallback):
    """Whether any operation on any host of one State has yielded a command in this run. pyinfra
    starts every host operation with ``operation_host_start``, in every execution mode; the watch
    then wraps that operation's command generator, and ``ran`` goes up as the first command is
    yielded, before pyinfra runs it: a shell command, an upload, or a Python callback (which may
    change a service through its API without a command on the host). What a plan's generators
    yield while planning (``will_change``) does not go through it."""

    def __init__(self):
        self.ran = False

    def operation_host_start(self, state, host, op_hash):
        op_data = state.ops[host].get(op_hash)
        if op_data is None:
            return  # not this host's operation: pyinfra skips it
        generator = op_data.command_generator

        def watched():
            for command in generator():
                self.ran = True
                yield command
        op_data.command_generator = watched


def watch_what_runs(state) -> None:
    """Give ``state`` a :class:`_RunWatch`, once: :func:`prefetch_facts` and gpufleet's execution
    (gpufleet/deploy_run.py) do. Example::

        watch_what_runs(state)
        ...  # pyinfra executes
        something_ran(state)
    """
    if not any(isinstance(handler, _RunWatch) for handler in state.callback_handlers):
        state.add_callback_handler(_RunWatch())


def something_ran(state) -> bool:
    """Whether an operation on any host has yielded a command in this run (:func:`watch_what_runs`;
    False on a State without a watch)."""
    return any(isinstance(handler, _RunWatch) and handler.ran for handler in state.callback_handlers)


def anything_executed(state) -> bool:
    """Whether anything has run on any host since this run's snapshots: an operation that yielded
    a command (:func:`something_ran`), or a command, upload or download on a prefetched host
    outside an operation.

    A read at execution comes after every operation that pyinfra ordered before it: the earlier
    operations of every host by default and with ``_serial`` or ``_parallel`` batches, the earlier
    hosts' operations with ``--serial``. Reads in one operation on several hosts run side by side,
    unordered, live or not, as do all of ``--no-wait``'s. Example::

        if anything_executed(state):
            ...
    """
    if something_ran(state):
        return True
    for host in state.inventory:
        facts = host.__dict__.get("get_fact")
        if isinstance(facts, _PrefetchedFacts) and facts.commands_ran:
            return True
    return False


def _lead_answer(stdout: list[str], mark: str) -> tuple[list[str], int | None, list[str]]:
    """What the lead printed (stdout and stderr), its exit status (None: it never finished), and
    the reads' lines after it."""
    if f"{mark}:lead" not in stdout:  # not always the first line: a login file may print before it
        return [], None, []
    start = stdout.index(f"{mark}:lead") + 1
    for i in range(start, len(stdout)):
        if stdout[i].startswith(f"{mark}:lead-rc:"):
            return stdout[start:i], int(stdout[i].rsplit(":", 1)[1] or 1), stdout[i + 1:]
    return stdout[start:], None, []


def prefetch_arguments(cls, remembered: dict[str, Any], host_name: str) -> dict[str, Any]:
    """The arguments a remembered read is prefetched with: its own, or, for a fact whose arguments
    are what the control host knows now (``prefetch_kwargs``: VllmNcclVersions' known answers),
    today's."""
    hook = getattr(cls, "prefetch_kwargs", None)
    return hook(host_name) if hook is not None else dict(remembered)


def _fact_kwargs(state, host, cls, args, kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
    """pyinfra's ``(fact arguments, global arguments)`` for a read, without the ``self`` it binds."""
    fact_kwargs, global_kwargs = _handle_fact_kwargs(state, host, cls, args, kwargs)
    return {k: v for k, v in fact_kwargs.items() if k != "self"}, global_kwargs


def remembered_fact_class(name: str) -> type | None:
    """The fact class a remembered read names (``module.Class``), or None where this version has
    no such class (remembered by another gpufleet: it is left out, never a failed plan)."""
    module, _, attribute = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError):
        return None


def _prefetchable(cls) -> bool:
    # ShortFactBase is not a FactBase: short facts read their base fact through pyinfra directly.
    return (isinstance(cls, type) and issubclass(cls, FactBase)
            and cls.check_preconditions is FactBase.check_preconditions)


def _fact_command(fact: FactBase, fact_kwargs: dict[str, Any]):
    """The command pyinfra's ``_get_fact`` would run for it (with its missing-command guard)."""
    command = _make_command(fact.command, dict(fact_kwargs))
    requires = _make_command(fact.requires_command, dict(fact_kwargs))
    if not command:
        return None
    if requires:
        return StringCommand("if", "command", "-v", requires, ">/dev/null", "2>&1;", "then", "(", command, ");",
                             "else", "echo", f"'{_MISSING_COMMAND_MARKER}';", "fi")
    return command
