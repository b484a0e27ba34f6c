"""operations/fact_batches.py: batched file reads answer as pyinfra's own reads do, on this machine."""

from __future__ import annotations

import os
import subprocess

import pytest
from pyinfra.facts.files import Directory, File, Link, Sha1File, Sha256File
from pyinfra.facts.server import Command

from operations import fact_prefetch
from operations.fact_batches import Batch, Batches, reader_of
from operations.facts.apt import PackageStates
from tests.unit.test_fact_prefetch import _count_commands, _remember, _without_atime, preparing  # noqa: F401


def _tree(tmp_path):
    """A file, a directory, a link to each, a dangling link, a missing path, an unplain path."""
    base = tmp_path / "tree"
    base.mkdir()
    (base / "daemon.json").write_text('{"a": 1}\n')
    (base / "conf.d").mkdir()
    (base / "to-file").symlink_to(base / "daemon.json")
    (base / "to-dir").symlink_to(base / "conf.d")
    (base / "dangling").symlink_to(base / "gone")
    (base / "with space").write_text("x\n")
    return [str(base / name) for name in ("daemon.json", "conf.d", "to-file", "to-dir", "dangling", "missing",
                                          "with space")]


def _asked(paths):
    return [(cls, {"path": path}) for path in paths for cls in (File, Directory, Link, Sha1File, Sha256File)]


def test_batched_answers_are_pyinfras_and_each_tool_runs_once(preparing, tmp_path, monkeypatch):  # noqa: F811
    state, host = preparing
    asked = _asked(_tree(tmp_path))
    _remember(host, *[(cls, kwargs, None) for cls, kwargs in asked])
    runs = _count_commands(host, monkeypatch)

    assert fact_prefetch.prefetch_facts() == len(asked)
    prefetched = [host.get_fact(cls, **kwargs) for cls, kwargs in asked]
    assert len(runs) == 1  # every answer from the one command
    sent = str(runs[0])
    # One process per tool for the plain paths (only the batch's stat prints "%n " first: quoted here
    # inside its lane's sh -c); the path with a space is read by its own commands.
    assert sent.count("%n ") == 1 and sent.count("stat -c '\"'\"'%n ") == 1
    assert sent.count("sha1sum --") == 1 and sent.count("sha256sum --") == 1
    assert "cat 0 1 2 3 4 5 6 7 lane-0" in sent  # 5 reads of its own + 3 batches
    own = [type(host).get_fact(host, cls, **kwargs) for cls, kwargs in asked]
    assert [_without_atime(v) for v in prefetched] == [_without_atime(v) for v in own]
    answers = dict(zip([(c.__name__, os.path.basename(k["path"])) for c, k in asked], prefetched, strict=True))
    # What each kind of path reads as, so that a batch answering "nothing" everywhere cannot pass.
    assert answers["File", "daemon.json"]["size"] == 9 and answers["Directory", "daemon.json"] is False
    assert answers["Directory", "conf.d"]["mode"] and answers["Sha1File", "conf.d"] is None
    assert answers["Link", "to-file"]["link_target"].endswith("daemon.json")
    assert answers["Link", "dangling"]["link_target"].endswith("gone") and answers["Sha256File", "dangling"] is None
    assert answers["File", "missing"] is None and answers["Sha1File", "missing"] is None
    assert len(answers["Sha256File", "daemon.json"]) == 64 and len(answers["Sha1File", "to-file"]) == 40


# A `stat` that is not GNU's (it prints nothing for `-c`), and one killed after its first line
# (the OOM killer): neither may make every path read as missing.
NOT_GNU_STAT = '#!/bin/sh\n[ "$1" = -c ] && [ "$2" != "${2#%n }" ] && exit 1\nexec /usr/bin/stat "$@"\n'
KILLED_STAT = ('#!/bin/sh\nif [ "$1" = -c ] && [ "$2" != "${2#%n }" ]; then /usr/bin/stat "$1" "$2" -- /; '
               'kill -KILL $$; fi\nexec /usr/bin/stat "$@"\n')


@pytest.mark.parametrize("stand_in_stat", [NOT_GNU_STAT, KILLED_STAT], ids=["not-gnu", "killed-part-way"])
def test_a_host_whose_tool_did_not_answer_every_path_has_those_reads_read_by_pyinfra(
        preparing, tmp_path, monkeypatch, stand_in_stat):  # noqa: F811
    """The batch answers nothing, and pyinfra reads each path with its own command."""
    state, host = preparing
    paths = _tree(tmp_path)[:2]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "stat").write_text(stand_in_stat)
    (bin_dir / "stat").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    asked = [(File, {"path": paths[0]}), (Directory, {"path": paths[1]}), (Sha1File, {"path": paths[0]})]
    _remember(host, *[(cls, kwargs, None) for cls, kwargs in asked])
    runs = _count_commands(host, monkeypatch)

    fact_prefetch.prefetch_facts()
    prefetched = [host.get_fact(cls, **kwargs) for cls, kwargs in asked]
    assert len(runs) == 3  # the prefetch, then pyinfra's own File and Directory reads; the hash from its batch
    assert prefetched[0]["size"] == 9 and prefetched[1]["mode"] and len(prefetched[2]) == 40


def test_reads_whose_commands_come_out_empty_send_nothing(preparing, monkeypatch):  # noqa: F811
    state, host = preparing
    _remember(host, (Command, {"command": ""}, None))
    runs = _count_commands(host, monkeypatch)
    assert fact_prefetch.prefetch_facts() == 0
    assert runs == []


def test_only_plain_absolute_paths_of_the_listed_facts_are_batched():
    batches = Batches()
    assert batches.add("a", File, {"path": "/etc/docker/daemon.json"})
    assert batches.add("b", Directory, {"path": "/etc/docker/daemon.json"})
    assert not batches.add("c", File, {"path": "etc/relative"})
    assert not batches.add("d", File, {"path": "~/.ssh/config"})
    assert not batches.add("e", File, {"path": "/etc/it's"})
    assert not batches.add("f", Sha1File, {"path": "/tmp/with\nnewline"})

    class NotPyinfras(File):
        pass

    assert not batches.add("g", NotPyinfras, {"path": "/etc/hosts"})
    [batch] = list(batches)
    assert batch.reader.name == "stat" and list(batch.members) == ["a", "b"]
    assert str(batch.command()).endswith("-- / /etc/docker/daemon.json")  # each path once


ROOT_LINE = "/ user=root group=root mode=drwxr-xr-x atime=1 mtime=2 ctime=3 size=4096 '/'"
HOSTS_LINE = "/etc/hosts user=root group=root mode=-rw-r--r-- atime=1 mtime=2 ctime=3 size=9 '/etc/hosts'"


@pytest.mark.parametrize("lines, exit_code, expected", [
    ([ROOT_LINE], 1, {"k": [], "h": []}),  # /missing and /etc/hosts are not there: stat exits 1
    ([ROOT_LINE, HOSTS_LINE], 0, {"k": [], "h": [HOSTS_LINE.partition(" ")[2]]}),
    ([], 1, {}),  # not even "/": the tool did not work, nothing is answered
    ([ROOT_LINE], 137, {}),  # killed after its first line: the rest would read as missing
    ([ROOT_LINE, HOSTS_LINE, HOSTS_LINE], 0, {}),  # a path twice: not one line per path asked
    ([ROOT_LINE, "/etc/passwd user=root group=root mode=x atime=1 mtime=2 ctime=3 size=1 'x'"], 0, {}),  # not asked
])
def test_a_batch_answers_only_when_the_tool_answered_for_every_path(lines, exit_code, expected):
    batch = Batch(reader_of(File), {"k": {"path": "/missing"}, "h": {"path": "/etc/hosts"}})
    assert batch.answers(lines, exit_code) == expected


def _run_here(command) -> list[str]:
    return subprocess.run(["sh", "-c", str(command)], capture_output=True, text=True, check=True).stdout.splitlines()


PACKAGE_LISTS = [["curl", "bash"], ["zlib1g", "no-such-package-gpufleet"], ["libc6"], ["bash"]]


def test_package_lists_answered_by_one_dpkg_query_print_what_each_prints_alone():
    """Byte for byte: the batch's answer for each list is its own command's stdout on this machine
    (sorted by dpkg, the exit status 1 only for the list with a package dpkg does not know)."""
    kwargs_list = [{"packages": packages} for packages in PACKAGE_LISTS]
    batch_lines = _run_here(PackageStates.batch_reader.batch_command(kwargs_list))
    outputs = PackageStates.batch_reader.batch_outputs(batch_lines, kwargs_list)
    own = [_run_here(PackageStates().command(**kwargs)) for kwargs in kwargs_list]
    assert outputs == own
    assert [o[-1] for o in outputs] == ["__gpufleet_rc=0", "__gpufleet_rc=1", "__gpufleet_rc=0", "__gpufleet_rc=0"]
    assert PackageStates().process(outputs[0])["bash"]["version"]


def test_package_lists_in_a_prefetch_are_one_read_and_answer_as_pyinfras(preparing, monkeypatch):  # noqa: F811
    state, host = preparing
    asked = [(PackageStates, {"packages": packages}) for packages in PACKAGE_LISTS]
    asked.append((PackageStates, {"packages": ["libc6:amd64"]}))  # an architecture: read alone
    _remember(host, *[(cls, kwargs, None) for cls, kwargs in asked])
    runs = _count_commands(host, monkeypatch)

    assert fact_prefetch.prefetch_facts() == len(asked)
    prefetched = [host.get_fact(cls, **kwargs) for cls, kwargs in asked]
    assert len(runs) == 1 and str(runs[0]).count("dpkg-query") == 2
    assert prefetched == [type(host).get_fact(host, cls, **kwargs) for cls, kwargs in asked]


@pytest.mark.parametrize("tail", [["__gpufleet_rc=2"], []])
def test_a_dpkg_query_that_did_not_answer_answers_no_list(tail):
    assert PackageStates.batch_reader.batch_outputs(["pkg\tbash\t5.2\tii ", *tail], [{"packages": ["bash"]}]) is None


def test_a_dpkg_query_killed_at_its_limit_answers_each_list_as_timed_out():
    from operations.facts.util import ReadTimedOut

    lines = ["pkg\tbash\t5.2\tii ", "__gpufleet_timeout=60", "__gpufleet_rc=124"]
    batch = Batch(reader_of(PackageStates), {"a": {"packages": ["bash"]}, "b": {"packages": ["curl"]}})
    outputs = list(batch.answers(lines).values())
    assert outputs == [["__gpufleet_timeout=60", "__gpufleet_rc=124"]] * 2
    with pytest.raises(ReadTimedOut):
        PackageStates().process(outputs[1])
