"""Docker's Engine API from a fact's shell: ``curl`` over the daemon's socket, not the docker CLI.

Why: the ``docker`` CLI is a large Go binary, and each call costs a process start of 15-30 ms of
CPU (32 ms per ``docker inspect`` on a lab node, measured at stop 22). A GPU node's converge asked
it about fifteen times. ``curl`` answers the same question from the same daemon in about 7 ms, and
asks for any number of paths in one process. What comes back is the API's JSON: the document
``docker inspect`` prints (the CLI prints what this API returns), parsed on the control side.

* **The socket** is Docker's default, ``/var/run/docker.sock``: gpufleet refuses a ``hosts`` key in
  daemon.json (gpufleet/settings_daemon.py), and Debian's docker.service listens there. ``curl`` is
  one of the base role's packages (group_data/all.py ``base_packages``); facts still wrap
  ``docker`` (no Docker installed reads as "missing", as before).
* **Secrets never leave the host.** An inspect document holds the container's environment
  (``Config.Env``: what ``--env-file`` passed, the HF token and API keys). The docker CLI's
  templates printed chosen fields; the whole document is printed here, so every answer goes through
  ``sed`` on the host first, which replaces each ``"Env":[…]`` with ``"Env":null`` (no fact reads
  it). pyinfra's ``-vvv`` output, drift's reports and this module's errors see no value.
* **Status.** Every answer is followed by a line of its own, ``__gpufleet_http=<status> <url>``:
  200, 404 (no such container or image) or anything else, and the URL it answers. A daemon that
  does not answer makes ``curl`` exit non-zero (7: nothing listens on the socket), so the read is
  "failed", never "no containers"; a list is asked with ``-f``, so an error status (``curl`` exits
  22) fails it too. :func:`read_answers` is the envelope of such a read (its error made of what is not
  a document: curl's own message, the answers' ``message``) and the documents it answered.
* **JSON as dockerd writes it**: compact (Go's encoder: ``"Id":"…"``, no space). The shell takes
  ids and references out of it with ``grep -o``, one process per list, never one per value.

Example (ContainerState's command and what it reads)::

    command = wrap("docker", get(path_of("containers", name)))
    result, found, body = read_answers(output)   # {"status": "ok", ...}, [{"Id": ..., "State": ...}], lines
"""

from __future__ import annotations

import json
import shlex
from urllib.parse import quote, urlencode

from pyinfra.api.exceptions import FactProcessError

from .util import MISSING, RC, envelope, wrap

SOCKET = "/var/run/docker.sock"
BASE = "http://docker"  # curl needs a host name; over a unix socket it is only the Host header
HTTP = "__gpufleet_http="
_CURL = f"curl -sS --unix-socket {SOCKET}"
# After each answer: its status and the path it answers (curl's effective URL), on a line of its own.
_WRITE_OUT = f"-w '\\n{HTTP}%{{http_code}} %{{url_effective}}\\n'"
# Each "Env":[…] of a document -> "Env":null (a JSON string: "…" with \-escapes inside).
_NO_ENV = """sed -E 's/"Env":\\[("([^"\\\\]|\\\\.)*",?)*\\]/"Env":null/g'"""
# Shell function `api URL…`: one curl for every URL, each answer without its Env, curl's exit status.
_API = (f'api() {{ a=$({_CURL} {_WRITE_OUT} "$@"); r=$?; printf \'%s\\n\' "$a" | {_NO_ENV}; return $r; }}; ')


def path_of(kind: str, name: str) -> str:
    """The inspect path of a container or an image by name, id or reference.

    >>> path_of("images", "gpufleet/vllm-rtx5090:ab12")
    '/images/gpufleet/vllm-rtx5090:ab12/json'
    """
    return f"/{kind}/{quote(name, safe='/:@')}/json"


def list_path(kind: str, all_states: bool = False, **filters: list[str]) -> str:
    """The list path of containers or images, with Docker's JSON filters.

    >>> list_path("containers", all_states=True, label=["io.gpufleet.spec"])
    '/containers/json?all=1&filters=%7B%22label%22%3A+%5B%22io.gpufleet.spec%22%5D%7D'
    """
    query = {**({"all": "1"} if all_states else {}), **({"filters": json.dumps(filters)} if filters else {})}
    return f"/{kind}/json" + (f"?{urlencode(query)}" if query else "")


def get(*paths: str) -> str:
    """Shell: one ``curl`` that asks for every path (fixed at plan time), each answer (without its
    Env) followed by its status line; the exit status is curl's.

    >>> get("/containers/milvus/json").endswith("api http://docker/containers/milvus/json")
    True
    """
    return _API + "api " + " ".join(shlex.quote(BASE + p) for p in paths)


def _each(text_var: str, key: str, then: str) -> str:
    # Shell: for each '"<key>":"<value>"' in $<text_var> (compact JSON), $v is the value and `then`
    # runs. One grep over the text: the shell's own ${x#*pattern} over tens of kB of JSON took
    # longer than the docker CLI this module replaces.
    return (f"for v in $(printf '%s' \"${text_var}\" | grep -o '\"{key}\":\"[^\"]*\"'); do "
            f"v=${{v%'\"'}}; v=${{v##*'\"'}}; {then}; done; ")


def _listed(list_query: str, then: str) -> str:
    # Shell: list containers and run `then` for each one's id ($v): '"Id":"<hex>"' is the only key
    # of a listed container so spelled. A list that fails (daemon down: curl exits 7; an error
    # status: -f exits 22) ends the read with that status: "failed", never "no containers".
    return (f"list=$({_CURL} -f {shlex.quote(BASE + list_query)}) || exit $?; set --; "
            + _each("list", "Id", then))


def for_listed_ids(list_query: str) -> str:
    """Shell prefix for a read over containers: ``$ids`` holds the ids the list (a
    :func:`list_path`) names, and the rest of the command runs only when there are some. A list
    that fails ends the read with its exit status ("failed", never "no containers").

    >>> for_listed_ids("/containers/json").endswith('[ -z "$ids" ] || ')
    True
    """
    return "ids=; " + _listed(list_query, 'ids="$ids $v"') + '[ -z "$ids" ] || '


def names_listed(list_query: str) -> str:
    """Shell: the names of the containers a list (a :func:`list_path`) names, one per line (what
    ``docker ps --format '{{.Names}}'`` prints), from one ``curl``. A list that fails ends the
    read with its exit status."""
    return (f"list=$({_CURL} -f {shlex.quote(BASE + list_query)}) || exit $?; "
            "for v in $(printf '%s' \"$list\" | grep -o '\"Names\":\\[\"/[^\"]*\"'); do "
            "v=${v%'\"'}; echo \"${v##*'\"/'}\"; done")


def inspect_listed(list_query: str) -> str:
    """Shell: list containers (``list_query``, a :func:`list_path`), then inspect each one: two
    ``curl`` processes whatever the number of containers. A container removed between the two
    answers 404."""
    return _API + _listed(list_query, f'set -- "$@" "{BASE}/containers/$v/json"') + '[ $# -eq 0 ] || api "$@"'


def inspect_listed_and_their_images(list_query: str) -> str:
    """Shell: :func:`inspect_listed`, then the image each container's reference (``Config.Image``)
    names now, in a third ``curl``. The references are cut out of the inspects' JSON by the shell
    ('"Image":"<ref>"', skipping the top-level ``"Image":"sha256:…"``); each answer's status line
    names the path it answers, so the control side matches images to containers by reference."""
    return (_API + _listed(list_query, f'set -- "$@" "{BASE}/containers/$v/json"')
            + '[ $# -eq 0 ] && exit 0; out=$(api "$@") || exit $?; printf \'%s\\n\' "$out"; set --; '
            # An id, or a value that is no reference (a label *named* Image on any container: curl
            # would read [ or { as a URL glob and fail the whole read), is not asked.
            + _each("out", "Image", 'case $v in sha256:*|*[!A-Za-z0-9._/:@-]*) ;; '
                    f'*) set -- "$@" "{BASE}/images/$v/json" ;; esac')
            + '[ $# -eq 0 ] || api "$@"')


def run_keys() -> str:
    """Shell: for each container id in ``$ids`` (:func:`for_listed_ids`), the line
    ``<id>@<image id>@<started at> /<name>``, what ``docker inspect --format
    '{{.Id}}@{{.Image}}@{{.State.StartedAt}} {{.Name}}'`` prints, from one ``curl`` for them all.

    Each key's first non-empty value in a document is the top-level one (dockerd writes ``Id``,
    ``State.StartedAt``, ``Image`` and ``Name`` before ``HostConfig``, ``Mounts`` and ``Config``,
    which hold keys of the same names); a JSON string cannot hold ``"Name":"`` unescaped, so no
    argument or variable of the container can pose as one. Only these four values are printed:
    nothing of the environment leaves the host. A container removed meanwhile (404) prints nothing.
    """
    return ('set --; for c in $ids; do set -- "$@" "' + BASE + '/containers/$c/json"; done; '
            f"{_CURL} -w '\\n{HTTP}%{{http_code}}\\n' \"$@\" 2>/dev/null | "
            # The status line starts a line (curl -w); the same text inside a document does not.
            f"grep -o -E '^{HTTP}[0-9]+|\"(Id|Image|StartedAt|Name)\":\"[^\"]*\"' | "
            "{ i= m= s= n=; while read -r f; do v=${f%'\"'}; v=${v##*'\"'}; case $f in "
            f'{HTTP}200) [ -z "$i" ] || echo "$i@$m@$s $n"; i= m= s= n= ;; {HTTP}*) i= m= s= n= ;; '
            """'"Id"'*) [ -n "$i" ] || i=$v ;; '"Image"'*) [ -n "$m" ] || m=$v ;; """
            """'"StartedAt"'*) [ -n "$s" ] || s=$v ;; '"Name"'*) [ -n "$n" ] || n=$v ;; esac; done; }""")


def ping() -> str:
    """Shell: a command that succeeds when the daemon answers (``GET /_ping``), as ``docker info``."""
    return f"{_CURL} -f {BASE}/_ping >/dev/null 2>&1"


def list_containers(query_shell: str) -> str:
    """Shell: the containers' list (JSON) where its query is shell text: curl ``-G`` arguments,
    e.g. a filter built from shell variables, which ``--data-urlencode`` encodes. Exits non-zero
    when the daemon does not answer or answers an error (``-f``)."""
    return f"{_CURL} -f -G {query_shell} {BASE}/containers/json 2>/dev/null"


def ids_in(text_var: str) -> str:
    """Shell: the container ids in a list held in ``$<text_var>``, one per line."""
    return f"printf '%s' \"${text_var}\" | grep -o '\"Id\":\"[^\"]*\"' | cut -d'\"' -f4"


def started_at(container_shell: str) -> str:
    """Shell: when a container (shell text: a name or id) last started, as Docker writes it;
    nothing when it cannot be asked."""
    return (f"{_CURL} -f {BASE}/containers/{container_shell}/json 2>/dev/null | "
            "grep -o '\"StartedAt\":\"[^\"]*\"' | cut -d'\"' -f4")


class InspectBatch:
    """Many single inspects, ``wrap("docker", get(path_of(kind, name)))`` each (``ContainerState``,
    ``ImageState``), asked in one ``curl`` (operations/fact_batches.py). The batch prints each
    answer followed by its status line, in the order asked, as each read alone prints its own;
    each read's stdout is its answer's lines and the batch's exit status line. Only when every
    path got an HTTP answer (404s included) and curl exited 0: a daemon that does not answer or a
    transfer that failed answer nothing, and each read runs alone. (A batch killed at its time limit
    is answered by fact_batches.Batch.answers: each read as timed out.)

    Example::

        batch_reader = InspectBatch("containers", "container")   # ContainerState(container=...)
    """

    def __init__(self, kind: str, argument: str):
        self.kind, self.argument = kind, argument

    def batch_accepts(self, fact_kwargs: dict) -> bool:
        return set(fact_kwargs) == {self.argument} and isinstance(fact_kwargs[self.argument], str)

    def _paths(self, kwargs_list: list[dict]) -> list[str]:
        return [path_of(self.kind, kwargs[self.argument]) for kwargs in kwargs_list]

    def batch_command(self, kwargs_list: list[dict]) -> str:
        return wrap("docker", get(*dict.fromkeys(self._paths(kwargs_list))))

    def batch_outputs(self, lines: list[str], kwargs_list: list[dict], exit_code: int = 0) -> list[list[str]] | None:
        # exit_code: the wrapped command's, always 0 (wrap); curl's is the RC line.
        if lines == [MISSING]:
            return [[MISSING] for _ in kwargs_list]  # no Docker: what each read alone prints
        if not lines or lines[-1] != f"{RC}0":
            return None
        answers: dict[str, list[str]] = {}
        answer_lines: list[str] = []
        for line in lines[:-1]:
            answer_lines.append(line)
            if line.startswith(HTTP):
                code, _, url = line[len(HTTP):].partition(" ")
                # curl exits with its last transfer's status: one that failed before it (000, no
                # HTTP answer) left its error on stderr, printed at the top of the first answer.
                if not code.isdigit() or code == "000":
                    return None
                answers[url.removeprefix(BASE)] = answer_lines
                answer_lines = []
        if answer_lines or any(path not in answers for path in self._paths(kwargs_list)):
            return None
        return [[*answers[path], lines[-1]] for path in self._paths(kwargs_list)]


def responses(body: list[str]) -> list[tuple[int, str, object]]:
    """The answers of a read, in the order asked: ``(http status, path, parsed JSON or None)``.

    >>> responses(['{"Id": "a1"}', "", "__gpufleet_http=200 http://docker/containers/a1/json",
    ...            '{"message":"No such container: b2"}', "", "__gpufleet_http=404 http://docker/containers/b2/json"])
    [(200, '/containers/a1/json', {'Id': 'a1'}), (404, '/containers/b2/json', {'message': 'No such container: b2'})]
    """
    found, lines = [], []
    for line in body:
        if not line.startswith(HTTP):
            lines.append(line)
            continue
        code, _, url = line[len(HTTP):].strip().partition(" ")
        text = "\n".join(lines).strip()
        try:
            document = json.loads(text) if text else None
        except ValueError:
            document = None
        found.append((int(code) if code.isdigit() else 0, url.removeprefix(BASE), document))
        lines = []
    return found


def documents(body: list[str], under: str = "/") -> tuple[list[dict], list[str]]:
    """The 200 answers (JSON objects) to paths ``under`` a prefix, and an error for each answer
    there that is neither one nor a 404 (a container or image that is not there, or was removed
    meanwhile).

    >>> documents(["{}", "__gpufleet_http=200 http://docker/x", '{"message":"boom"}', "__gpufleet_http=500 http://docker/y"])
    ([{}], ['/y: 500 boom'])
    """
    found, errors = [], []
    for code, path, document in responses(body):
        if not path.startswith(under):
            continue
        if code == 200 and isinstance(document, dict):
            found.append(document)
        elif code != 404:
            message = document.get("message") if isinstance(document, dict) else None
            errors.append(f"{path}: {code} {message or 'no answer'}")
    return found, errors


def read_result(output: list[str]) -> tuple[dict, list[str]]:
    """The envelope of an API read (operations/facts/util.envelope), whose error, when it failed,
    is made of curl's own words and the answers' messages, never of the documents it printed
    before it failed (they can be tens of kB).

    A host with Docker but without ``curl`` (exit 127: the shell found no such command) is no
    answer at all: FactProcessError, so pyinfra fails the host before anything runs there. Read as
    "failed", ContainerState and ImageState would say "not there" and the deploy would plan to
    create what exists.

    >>> read_result(['{"Id":"a1"}', "", "__gpufleet_http=200 http://docker/containers/a1/json",
    ...              "curl: (7) Failed to connect to docker port 80: Couldn't connect to server", "__gpufleet_rc=7"])[0]
    {'status': 'failed', 'exit_code': 7, 'error': "curl: (7) Failed to connect to docker port 80: Couldn't connect to server"}
    """
    result, body = envelope(output)
    if result["status"] == "failed" and result["exit_code"] == 127:
        raise FactProcessError(f"{result['error']}: gpufleet asks Docker through its API with curl, which this "
                               "host lacks. Install curl (it is in group_data's base_packages) and deploy again")
    if result["status"] == "failed":
        _, errors = documents(body)
        words = [line.strip() for line in body if line.strip() and not line.startswith(("{", "[", HTTP, '"'))]
        result = {**result, "error": " ".join(words + errors) or "no output"}
    return result, body


def read_answers(output: list[str], under: str = "/") -> tuple[dict, list[dict], list[str]]:
    """What every API fact starts with: ``(status, the 200 documents under a prefix, the body)``.
    The status is :func:`read_result`'s, failed too when an answer there was an error (not a
    404) although the shell's exit status says nothing went wrong.

    >>> read_answers(['{"message":"boom"}', "__gpufleet_http=500 http://docker/containers/a1/json", "__gpufleet_rc=0"])[0]
    {'status': 'failed', 'exit_code': 0, 'error': '/containers/a1/json: 500 boom'}
    """
    result, body = read_result(output)
    found, errors = documents(body, under)
    if result["status"] == "ok" and errors:
        result = {"status": "failed", "exit_code": result["exit_code"], "error": "; ".join(errors)}
    return result, found, body
