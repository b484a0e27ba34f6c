"""An alert end to end in the lab: a replica stops answering, lb-1's Prometheus sees it down, the rule
fires, Alertmanager posts it to a webhook.

Everything is the real part: Debian's Prometheus and prometheus-alertmanager on lb-1, configured by
deploy.py (``alertmanager_webhook_url_file``, a control-side secret file), the shipped rules
(files/prometheus/alerts.yml) with one hold time tuned by data (``alert_hold_for``: the shipped 5
minutes would make this test wait 5 minutes; the hold time itself is promtool-tested in
tests/unit/test_alert_rules.py). The replica is stopped only once Prometheus scrapes both replicas
and no VllmReplicaDown is active: right after a lab's first deploy the 2-core machine can be so busy
that /metrics misses the scrape timeout for minutes, and an alert that is already firing (or pending
under the old hold time) when Alertmanager starts is not the one this test is about. Nor may one
that fired and resolved be awaiting its resolved notice: Alertmanager tells a resolution at the
group's next send (``group_interval``), and an alert that fires again before that is the firing
alert the receiver already has, not told again for 4 hours (CI saw this: a blip after the deploy,
then the freeze, and no page). So the group interval is 10 s by data, the freeze waits until
the webhook has the resolved notice of any VllmReplicaDown it was told of, and after the thaw the
test waits for (and asserts) the resolved notice of its own. The webhook receiver stands in for the on-call's endpoint (a
chat or paging service's URL): a few lines of Python on lb-1's loopback that write each POST to a
file, so no traffic leaves the lab. Then lb-1 goes back to the lab's data (no Alertmanager in the
Prometheus config) and the replica answers again.

The replica is frozen (``docker pause``: the cgroup freezer), not stopped: to the rule both are
``up == 0`` (a scrape that times out instead of one refused), and a frozen engine answers again the
moment it is thawed, where a stopped one takes minutes to load its model again on the lab's CPUs,
which the alert path does not need (the stopped case is the doctor's: tests/lab/test_doctor.py).
"""

from __future__ import annotations

import json
import shlex
import time

from tests.lab.conftest import deploy

NODE = "gpu-node-2"
REPLICA = f"{NODE}-vllm-0"
WEBHOOK_PORT = 9099
RECEIVED = "/run/lab-alert-webhook.jsonl"
RECEIVER = f"""
import http.server

class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with open("{RECEIVED}", "ab") as out:
            out.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(200)
        self.end_headers()

http.server.HTTPServer(("127.0.0.1", {WEBHOOK_PORT}), Receiver).serve_forever()
"""


def _notifications(lb) -> list[dict]:
    text = lb.run(f"cat {RECEIVED} 2>/dev/null").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _prometheus(lb, query: str) -> list[dict]:
    """An instant query to lb-1's Prometheus, from lb-1 (it listens on the lab network and loopback)."""
    out = lb.run(f"curl -sf -G http://127.0.0.1:9090/api/v1/query --data-urlencode {shlex.quote('query=' + query)}")
    return json.loads(out.stdout)["data"]["result"] if out.rc == 0 else [{"unreadable": out.stderr}]


def _told(notifications: list[dict], alertname: str) -> dict[str, str]:
    """The last status the webhook was told for each replica's ``alertname``: firing or resolved."""
    return {a["labels"].get("replica"): a.get("status") for n in notifications for a in n.get("alerts", [])
            if a["labels"].get("alertname") == alertname}


def _wait_calm(lb, timeout: float = 600) -> None:
    """Until every vLLM replica is scraped up, no VllmReplicaDown is pending or firing, and the webhook
    has the resolved notice of every VllmReplicaDown it was told of."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        up = _prometheus(lb, 'up{job="vllm"}')
        active = _prometheus(lb, 'ALERTS{alertname="VllmReplicaDown"}')
        unresolved = {r: status for r, status in _told(_notifications(lb), "VllmReplicaDown").items()
                      if status != "resolved"}
        if up and all(r.get("value", [0, "0"])[1] == "1" for r in up) and not active and not unresolved:
            return
        seen = (up, active, unresolved)
        time.sleep(5)
    raise AssertionError(f"the lab was not calm within {timeout:.0f} s (up, alerts, told firing): {seen}")


def _alert_states(lb) -> list[tuple]:
    return [(r.get("metric", r).get("alertname"), r.get("metric", r).get("replica") or r.get("metric", r).get("node"),
             r.get("metric", r).get("alertstate")) for r in _prometheus(lb, "ALERTS")]


def _received(lb, since: int) -> list[tuple]:
    return [(n.get("status"), [(a["labels"].get("alertname"), a["labels"].get("replica"), a.get("startsAt"))
                               for a in n.get("alerts", [])]) for n in _notifications(lb)[since:]]


def _firing(notifications: list[dict], alertname: str) -> list[dict]:
    return [a for n in notifications for a in n.get("alerts", [])
            if a.get("status") == "firing" and a["labels"].get("alertname") == alertname]


def test_a_replica_that_stops_answering_reaches_the_webhook_through_alertmanager(deployed, hosts, tmp_path):
    lb, node = hosts["lb-1"], hosts[NODE]
    url_file = tmp_path / "alert-webhook-url"
    url_file.write_text(f"http://127.0.0.1:{WEBHOOK_PORT}/gpufleet-alerts\n")
    url_file.chmod(0o600)
    lb.run(f"rm -f {RECEIVED}; systemctl stop lab-alert-webhook 2>/dev/null; "
           f"cat > /run/lab-alert-webhook.py <<'EOF'\n{RECEIVER}\nEOF")
    started = lb.run("systemd-run --unit=lab-alert-webhook --collect python3 /run/lab-alert-webhook.py")
    assert started.rc == 0, started.stderr
    # Shorter waits than production's, by data only: a scrape every 5 s (15), the rule's hold 10 s
    # (5 minutes), Alertmanager's group_wait 5 s (30 s) and group_interval 10 s (5 minutes).
    on = deploy("--limit", "lb-1", "--data", f"alertmanager_webhook_url_file={url_file}",
                "--data", 'alert_hold_for={"VllmReplicaDown": "10s"}', "--data", "prometheus_scrape_interval_s=5",
                "--data", "alertmanager_group_wait=5s", "--data", "alertmanager_group_interval=10s")
    try:
        assert on["rc"] == 0, on["stderr"][-3000:]
        assert "127.0.0.1:9099" not in on["stderr"]  # the webhook URL is a secret: never printed
        assert lb.run("systemctl is-active prometheus-alertmanager").stdout.strip() == "active"
        assert lb.run("grep -c 'for: 10s' /etc/prometheus/gpufleet-alerts.yml").stdout.strip() == "1"
        assert lb.run("grep -cE 'group_(wait: 5s|interval: 10s)$' /etc/prometheus/alertmanager.yml").stdout.strip() == "2"
        _wait_calm(lb)
        received_before = len(_notifications(lb))

        stopped_at = time.monotonic()
        assert node.run(f"docker pause vllm-{REPLICA}").rc == 0
        # Scrape and its timeout (5 s) + the rule's 10 s + evaluation (5 s) + Alertmanager's group_wait
        # (5 s) or, in a group that has notified, its next send (group_interval, 10 s): about a minute.
        deadline = stopped_at + 240
        fired: list[dict] = []
        while not fired and time.monotonic() < deadline:
            time.sleep(5)
            fired = [a for a in _firing(_notifications(lb)[received_before:], "VllmReplicaDown")
                     if a["labels"].get("replica") == REPLICA]
        # Short enough to survive a CI log's cut: who is alerting, and what the webhook got when.
        assert fired, (f"no VllmReplicaDown for {REPLICA} reached the webhook within 240 s; Prometheus ALERTS: "
                       f"{_alert_states(lb)}; received since the freeze: {_received(lb, received_before)}")
        alert = fired[0]
        assert alert["labels"]["node"] == NODE and alert["labels"]["severity"] == "warning"
        assert REPLICA in alert["annotations"]["summary"] and "runbook" in alert["annotations"]
        print(f"VllmReplicaDown reached the webhook {time.monotonic() - stopped_at:.0f} s after the freeze")
    finally:
        node.run(f"docker unpause vllm-{REPLICA}")
        # The on-call hears that it is back, and Alertmanager's log (which outlives this test) holds
        # the resolution: otherwise a re-fire within 4 h would not be told (see the module's docstring).
        thawed, told = time.monotonic(), None
        while time.monotonic() - thawed < 120 and told != "resolved":
            time.sleep(5)
            told = _told(_notifications(lb), "VllmReplicaDown").get(REPLICA)
        lb.run(f"systemctl stop lab-alert-webhook; rm -f /run/lab-alert-webhook.py {RECEIVED}")
        off = deploy("--limit", "lb-1")
        # The same container again: the next test finds the lab as it was once it answers.
        ready = node.run("for i in $(seq 1 300); do curl -sf -o /dev/null http://127.0.0.1:8000/health && exit 0; "
                         "sleep 1; done; exit 1")
    assert off["rc"] == 0, off["stderr"][-3000:]
    assert ready.rc == 0, f"vllm-{REPLICA} did not answer /health within 300 s after docker unpause"
    assert told == "resolved", f"no resolved VllmReplicaDown for {REPLICA} reached the webhook within 120 s of the thaw"
    assert "alerting" not in lb.run("cat /etc/prometheus/prometheus.yml").stdout
