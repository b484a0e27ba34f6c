"""Regenerate the secrets.* operation cases: `.venv/bin/python tests/operations/make_secrets_cases.py` from the repo root.

The write command and the content digests come from operations/secrets.py; review the diff of the
JSON files before committing it (that review is the test). In every case the secret is in no
command: a write carries it only base64-encoded in ``_stdin`` (tests/unit/test_secrets.py checks).
"""
import base64
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, ".")
from operations import secrets  # noqa: E402

OUT = Path("tests/operations/secrets.env_file")
DEST = "/etc/gpufleet/vllm-api-key.env"
KEY = "tests/fixtures/vllm/api-key"
TOKEN = "tests/fixtures/vllm/hf-token"
KEY_VARS = {"VLLM_API_KEY": KEY}
TEXT = secrets.env_text(KEY_VARS)
OK = {"mode": 600, "user": "root", "group": "root"}


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


def write_cmd(dest, text, user="root", group="root", mode="600"):
    return {"_stdin": base64.b64encode(text.encode()).decode() + "\n", "_get_pty": False,
            "command": secrets.write_command(dest, user, group, mode)}


def write(name, case):
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(case, indent=2) + "\n")


write("missing_is_written_atomically_content_on_stdin", {
    "kwargs": {"dest": DEST, "variables": KEY_VARS},
    "facts": {"files.File": {f"path={DEST}": None}},
    "commands": [write_cmd(DEST, TEXT)]})
write("rotated_is_rewritten_old_never_read", {
    "kwargs": {"dest": DEST, "variables": KEY_VARS},
    "facts": {"files.File": {f"path={DEST}": OK},
              "files.Sha256File": {f"path={DEST}": sha256("VLLM_API_KEY=sk-old-key\n")}},
    "commands": [write_cmd(DEST, TEXT)]})
write("converged_is_noop", {
    "kwargs": {"dest": DEST, "variables": KEY_VARS},
    "facts": {"files.File": {f"path={DEST}": OK}, "files.Sha256File": {f"path={DEST}": sha256(TEXT)}},
    "commands": [], "noop_description": f"{DEST}: secret up to date (sha256 matches, root:root 600)"})
write("loose_mode_and_owner_fixed_without_rewriting", {
    "kwargs": {"dest": DEST, "variables": KEY_VARS},
    "facts": {"files.File": {f"path={DEST}": {"mode": 644, "user": "ubuntu", "group": "ubuntu"}},
              "files.Sha256File": {f"path={DEST}": sha256(TEXT)}},
    "commands": [f"chmod 600 {DEST}", f"chown root:root {DEST}"]})
both = {"HF_TOKEN": TOKEN, "HUGGING_FACE_HUB_TOKEN": TOKEN}
write("one_file_two_names_group_readable", {
    "kwargs": {"dest": "/etc/gpufleet/hf-token.env", "variables": both, "group": "docker", "mode": "0640"},
    "facts": {"files.File": {"path=/etc/gpufleet/hf-token.env": None}},
    "commands": [write_cmd("/etc/gpufleet/hf-token.env", secrets.env_text(both), "root", "docker", "640")]})
write("not_wanted_is_removed", {
    "kwargs": {"dest": DEST, "variables": None},
    "facts": {"files.File": {f"path={DEST}": OK}},
    "commands": [f"rm -f {DEST}"]})
write("not_wanted_and_absent_is_noop", {
    "kwargs": {"dest": DEST, "variables": {}},
    "facts": {"files.File": {f"path={DEST}": None}},
    "commands": [], "noop_description": f"{DEST}: absent"})
write("directory_in_the_way_is_refused", {
    "kwargs": {"dest": DEST, "variables": KEY_VARS},
    "facts": {"files.File": {f"path={DEST}": False}},
    "exception": {"name": "OperationError",
                  "message": f"{DEST} exists and is not a regular file; a secret file will not replace it"}})
write("unreadable_secret_file_is_refused", {
    "kwargs": {"dest": DEST, "variables": {"VLLM_API_KEY": "tests/fixtures/vllm/no-such-key"}},
    "facts": {"files.File": {f"path={DEST}": None}},
    "exception": {"name": "OperationValueError",
                  "message": "cannot read secret file tests/fixtures/vllm/no-such-key: No such file or directory"}})
write("bad_variable_name_is_refused", {
    "kwargs": {"dest": DEST, "variables": {"VLLM API KEY": KEY}},
    "facts": {"files.File": {f"path={DEST}": None}},
    "exception": {"name": "OperationValueError", "message": "'VLLM API KEY' is not an environment variable name"}})
write("relative_dest_is_refused", {
    "kwargs": {"dest": "etc/gpufleet/x.env", "variables": KEY_VARS},
    "facts": {},
    "exception": {"name": "OperationValueError", "message": "secret file 'etc/gpufleet/x.env': an absolute file path"}})
