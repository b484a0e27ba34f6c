"""What a newcomer has after `make deploy` on the lab: URLs on 127.0.0.1 and what to try next."""

from __future__ import annotations

import json

from gpufleet.lab.topology import LabHost, current_or_default_hosts, lab_group_data


def welcome_text(hosts: list[LabHost] | None = None, data: dict | None = None) -> str:
    hosts = hosts if hosts is not None else current_or_default_hosts()
    data = data if data is not None else lab_group_data()
    lbs = [h for h in hosts if h.group == "lb"]
    nodes = [h for h in hosts if h.group == "gpu_nodes"]
    lines = ["", "The lab is serving. Try it:"]
    if lbs:
        lb_url = f"http://127.0.0.1:{lbs[0].service_ports()[80]}"
        body = json.dumps({"model": data["vllm_served_model_name"], "prompt": "The fleet", "max_tokens": 16})
        lines += [
            f"  vLLM behind nginx ({lbs[0].name}):  {lb_url}/v1",
            f"    curl -s {lb_url}/v1/completions -H 'Content-Type: application/json' -d '{body}'",
            f"  Prometheus ({lbs[0].name}):         http://127.0.0.1:{lbs[0].service_ports()[9090]}/api/v1/targets"
            "  (Debian builds Prometheus without its web UI: the HTTP API answers)",
        ]
    if nodes and data.get("app_image"):
        app_url = f"http://127.0.0.1:{nodes[0].service_ports()[8080]}"
        lines += [
            f"  RAG app ({nodes[0].name}):      {app_url}/health",
            f"    curl -s {app_url}/query -H 'Content-Type: application/json' -d '{{\"question\": \"What is NCCL?\"}}'",
        ]
    lines += [
        "The model is a tiny random Qwen3 on vLLM's CPU engine: the text is noise, the API is real.",
        "Next:",
        "  .venv/bin/gpufleet verify inventory/lab.py     # driver -> toolkit -> NCCL -> topology, per node",
        "  .venv/bin/gpufleet drift inventory/lab.py      # what differs from the repository (exit 0 clean)",
        "  make deploy                                    # again: changes nothing",
    ]
    return "\n".join(lines)
