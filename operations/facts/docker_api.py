"""Docker's Engine API from a fact's shell: ``curl`` over the daemon's socket, not the docker CLI.

Why: the ``docker`` CLI is a large Go binary, and each call costs a process start of 15-30 ms of
CPU (32 ms per ``docker inspect`` on a lab node, measured at stop 22). A GPU node's converge asked
it about fifteen times. ``curl`` answers the same question from the same daemon in about 7 ms, and
asks for any number of paths in one process. What comes back is the API's JSON: the document
``docker inspect`` prints (the CLI prints what this API returns), parsed on the control side.

The socket is Docker's default, ``/var/run/docker.sock``: gpufleet refuses a ``hosts`` key in
daemon.json (gpufleet/settings_daemon.py), and Debian's docker.service listens on that socket.
``curl`` is one of the base role's packages (group_data/all.py ``base_packages``); facts still
wrap ``docker`` (no Docker installed reads as "missing", as before).

Every answer is followed by a line of its own, ``__gpufleet_http=<status> <url>``: 200, 404 (no
such container or image) or anything else, and the URL it answers. A daemon that does not answer makes ``curl`` exit non-zero
(7: nothing listens on the socket), so the read is "failed", never "no containers".

Example (ContainerState's command and what it reads)::

    command = wrap("docker", get(f"/containers/{name}/json"))
    code, path, document = responses(body)[0]   # (200, "/containers/milvus/json", {"Id": ...})
"""

from __future__ import annotations

import json
import shlex
from urllib.parse import quote, urlencode

SOCKET = "/var/run/docker.sock"
BASE = "http://docker"  # curl needs a host name; over a unix socket it is only the Host header
HTTP = "__gpufleet_http="
_CURL = f"curl -sS --unix-socket {SOCKET}"
# After each answer: its status and the path it answers (curl's effective URL), on a line of its own.
_WRITE_OUT = f"-w '\\n{HTTP}%{{http_code}} %{{url_effective}}\\n'"


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
    """Shell: one ``curl`` that asks for every path (fixed at plan time), each answer followed by
    its status line.

    >>> print(get("/containers/milvus/json"))
    curl -sS --unix-socket /var/run/docker.sock -w '\\n__gpufleet_http=%{http_code} %{url_effective}\\n' http://docker/containers/milvus/json
    """
    return f"{_CURL} {_WRITE_OUT} " + " ".join(shlex.quote(BASE + p) for p in paths)


def _each_quoted(text_var: str, key: str, then: str) -> str:
    # Shell: for each '"<key>":"<value>"' in $<text_var> (JSON), $v is the value and `then` runs.
    # One grep over the text: the shell's own ${x#*pattern} over tens of kB of JSON took longer
    # than the docker CLI this module replaces.
    # dockerd writes compact JSON ('"Id":"…"'); a space after the colon is matched too.
    return (f"for v in $(printf '%s' \"${text_var}\" | grep -o '\"{key}\": *\"[^\"]*\"'); do "
            f"v=${{v%'\"'}}; v=${{v##*'\"'}}; {then}; done; ")


def _listed(list_query: str, then: str) -> str:
    # Shell: list containers and run `then` for each one's id ($v). '"Id":"<hex>"' is the list's
    # only key so spelled. A list that fails (daemon down: curl exits 7; an error status: -f exits
    # 22) ends the read with that status: "failed", never "no containers".
    return (f"list=$({_CURL} -f {shlex.quote(BASE + list_query)}) || exit $?; set --; "
            + _each_quoted("list", "Id", then))


def _urls_of_listed(list_query: str) -> str:
    # Shell: "$@" holds each listed container's inspect URL.
    return _listed(list_query, f'set -- "$@" "{BASE}/containers/$v/json"')


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
            "for v in $(printf '%s' \"$list\" | grep -o '\"Names\": *\\[ *\"/[^\"]*\"'); do "
            "v=${v%'\"'}; echo \"${v##*'\"/'}\"; done")


def ping() -> str:
    """Shell: a command that succeeds when the daemon answers (``GET /_ping``), as ``docker info``."""
    return f"{_CURL} -f {BASE}/_ping >/dev/null 2>&1"


def ids_listed(query_shell: str) -> str:
    """Shell: the ids of the containers a list names, one per line, where the list's query is
    shell text (curl ``-G`` arguments, e.g. a filter built from shell variables, which curl's
    ``--data-urlencode`` encodes). Prints nothing when the daemon does not answer."""
    return (f"{_CURL} -f -G {query_shell} {BASE}/containers/json 2>/dev/null | grep -o '\"Id\": *\"[^\"]*\"' "
            "| sed 's/.*\"\\([^\"]*\\)\"$/\\1/'")


def started_at(container_shell: str) -> str:
    """Shell: when a container (shell text: a name or id) last started, as Docker writes it."""
    return (f"{_CURL} -f {BASE}/containers/{container_shell}/json 2>/dev/null | "
            "grep -o '\"StartedAt\": *\"[^\"]*\"' | sed 's/.*\"\\([^\"]*\\)\"$/\\1/'")


def inspect_listed(list_query: str) -> str:
    """Shell: list containers (``list_query``, a :func:`list_path`), then inspect each one: two
    ``curl`` processes whatever the number of containers. A container removed between the two
    answers 404."""
    return _urls_of_listed(list_query) + f'[ $# -eq 0 ] || {_CURL} {_WRITE_OUT} "$@"'


def inspect_listed_and_their_images(list_query: str) -> str:
    """Shell: :func:`inspect_listed`, then the image each container's reference (``Config.Image``)
    names now, in a third ``curl``. The references are cut out of the inspects' JSON by the shell
    ('"Image":"<ref>"', skipping the top-level ``"Image":"sha256:…"``); each answer's status line
    names the path it answers, so the control side matches images to containers by reference."""
    return (_urls_of_listed(list_query)
            + f'[ $# -eq 0 ] && exit 0; out=$({_CURL} {_WRITE_OUT} "$@") || exit $?; printf \'%s\\n\' "$out"; set --; '
            + _each_quoted("out", "Image", f'case $v in sha256:*) ;; *) set -- "$@" "{BASE}/images/$v/json" ;; esac')
            + f'[ $# -eq 0 ] || {_CURL} {_WRITE_OUT} "$@"')


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
