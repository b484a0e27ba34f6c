"""files/nccl_acceptance.py: the gloo path for real on CPU, the verdict against real and published
topologies, the capture from a lent H200, and `gpufleet verify --nccl` reading its output."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet.settings import HostSettings
from gpufleet.verify import (check_nccl_acceptance, nccl_acceptance_command, parse_acceptance_output,
                             run_ladder)
from operations.facts.gpu import parse_topology

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "files/nccl_acceptance.py"
H200_X2 = REPO / "tests/fixtures/gpu/h200-x2"
H200_X1 = REPO / "tests/fixtures/gpu/h200-x1/nccl"
RTX5090 = REPO / "tests/fixtures/gpu/rtx5090-x2-published"
GIB = 1 << 30


def _load():
    spec = importlib.util.spec_from_file_location("nccl_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


na = _load()


def run_script(*args: str, timeout: int = 180) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    return proc.returncode, json.loads(proc.stdout)


# ------------------------------------------------------------------- the gloo path, for real ----
def test_gloo_two_ranks_sums_are_exact_and_bandwidth_is_nccl_tests_math():
    rc, report = run_script("--backend", "gloo", "--world-size", "2", "--max-bytes", "4MiB", "--iters", "3",
                            "--warmup", "1")
    assert rc == 0 and report["ok"] and report["exit_code"] == 0, report.get("verdict")
    assert [r["bytes"] for r in report["results"]] == [1 << 20, 2 << 20, 4 << 20]
    for r in report["results"]:
        assert r["wrong"] == 0 and r["count"] == r["bytes"] // 4
        assert r["algbw_gbps"] == pytest.approx(r["bytes"] / (r["time_us"] * 1e-6) / 1e9, rel=1e-3)
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * 2 * (2 - 1) / 2)  # n = 2: busbw = algbw
    v = report["verdict"]
    assert v["class"] == "cpu" and v["status"] == "pass" and v["floor_gbps"] is None
    assert report["versions"]["torch"] and report["env"].get("NCCL_DEBUG") is None


def test_a_corrupted_element_is_caught_and_exits_2_with_three_ranks():
    rc, report = run_script("--backend", "gloo", "--world-size", "3", "--max-bytes", "1MiB", "--iters", "2",
                            "--warmup", "0", "--inject-fault")
    assert rc == 2 and not report["ok"]
    (r,) = report["results"]
    assert r["wrong"] == 3  # one element, wrong on each of the three ranks
    algbw = r["bytes"] / (r["time_us"] * 1e-6) / 1e9
    assert r["busbw_gbps"] == pytest.approx(algbw * 2 * (3 - 1) / 3, rel=1e-3)
    assert report["verdict"]["status"] == "fail"
    assert report["verdict"]["problems"] == ["wrong sum: 3 elements at 1048576 B"]
    assert any("corruption" in c for c in report["verdict"]["causes"])


def test_nccl_without_a_gpu_could_not_run_exit_1():
    rc, report = run_script("--backend", "nccl", "--world-size", "0")
    assert rc == 1 and report["verdict"]["status"] == "error"


# ------------------------------------------------------------------------------- parsers ----
@pytest.mark.parametrize("path", [H200_X2 / "nvidia-smi-topo-m.txt", RTX5090 / "nvidia-smi-topo-m.txt",
                                  H200_X1 / "nvidia-smi-topo-m.txt"])
def test_the_scripts_topology_parser_agrees_with_the_fact_parser(path):
    text = path.read_text()
    facts = parse_topology(text.splitlines())
    assert na.parse_topo_m(text) == {g: facts["links"][g] for g in facts["gpus"]}


def test_p2p_matrices_published_5090_and_real_h200():
    assert na.parse_p2p((RTX5090 / "nvidia-smi-topo-p2p-rw.txt").read_text()) == {
        "GPU0": {"GPU1": "GNS"}, "GPU1": {"GPU0": "GNS"}}
    assert na.parse_p2p((H200_X1 / "nvidia-smi-topo-p2p-r.txt").read_text()) == {"GPU0": {}}


def test_nccl_log_transports_version_and_warnings():
    log = na.parse_nccl_log("\n".join([
        "h:1:1 [0] NCCL INFO NCCL version 2.27.7+cuda12.9",
        "h:1:2 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read",
        "h:1:2 [1] NCCL INFO Channel 01 : 1[1] -> 0[0] via SHM/direct/direct",
        "h:1:2 [1] NCCL INFO Channel 00/0 : 1[1] -> 0[0] [send] via NET/Socket/0",
        "h:1:2 [1] NCCL WARN Error while creating shared memory segment /dev/shm/nccl-x (size 9637888)",
    ]))
    assert log["transports"] == {"P2P": 1, "SHM": 1, "NET": 1}
    assert log["version"] == "2.27.7+cuda12.9" and len(log["warnings"]) == 1
    real = na.parse_nccl_log((H200_X1 / "nccl-ws1.nccl-debug.log").read_text())
    assert real["version"] == "2.28.9+cuda13.0" and real["transports"] == {}  # one rank: no connections


def test_sizes_double_from_1mib_to_1gib():
    sizes = na.sizes_between(na.parse_size("1MiB"), na.parse_size("1G"))
    assert len(sizes) == 11 and sizes[0] == 1 << 20 and sizes[-1] == GIB


# ------------------------------------------------------------------- verdicts on topologies ----
def pcie(*gpus):
    return [{"index": i, "name": "x", "compute_cap": cap, "gen_current": gen, "gen_max": gen,
             "width_current": width, "width_max": top} for i, (cap, gen, width, top) in enumerate(gpus)]


def report(topo_file: Path, busbw: float, *, p2p_file: Path | None = None, pcie_info=None, env=None,
           transports=None, size=GIB, **extra) -> dict:
    topology = {"source": "nvidia-smi", "links": na.parse_topo_m(topo_file.read_text()),
                "p2p": na.parse_p2p(p2p_file.read_text()) if p2p_file else {}, "pcie": pcie_info or []}
    log = {"transports": {t: 2 for t in (transports or [])},
           "details": [f"{t}/direct" for t in (transports or [])], "warnings": []}
    return {"backend": "nccl", "world_size": 2, "gpus": [0, 1], "topology": topology, "env": env or {},
            "nccl_log": log, "results": [{"bytes": size, "busbw_gbps": busbw, "wrong": 0}], **extra}


H200_PCIE = pcie((9.0, 5, 16, 16), (9.0, 5, 16, 16))


def test_h200_nvlink_is_judged_against_nv18():
    v = na.judge(report(H200_X2 / "nvidia-smi-topo-m.txt", 328.0, pcie_info=H200_PCIE, transports=["P2P"]))
    assert v["class"] == "nvlink" and v["bound_gbps"] == 450.0 and v["floor_gbps"] == 270.0
    assert v["status"] == "pass"
    low = na.judge(report(H200_X2 / "nvidia-smi-topo-m.txt", 200.0, pcie_info=H200_PCIE, transports=["P2P"]))
    assert low["status"] == "fail" and "below the floor 270.0" in low["problems"][0]


def test_nvlink_machine_whose_nccl_went_through_host_memory_names_the_transport():
    v = na.judge(report(H200_X2 / "nvidia-smi-topo-m.txt", 28.0, pcie_info=H200_PCIE, transports=["SHM"]))
    assert v["status"] == "fail"
    assert any(c.startswith("transport:") and "not P2P" in c for c in v["causes"])


def test_h200_with_p2p_disabled_is_judged_against_host_memory_issue_15s_second_mode():
    v = na.judge(report(H200_X2 / "nvidia-smi-topo-m.txt", 28.0, pcie_info=H200_PCIE,
                        env={"NCCL_P2P_DISABLE": "1"}, transports=["SHM"]))
    assert v["class"] == "host_memory" and v["why"] == ["NCCL_P2P_DISABLE=1 in the environment"]
    assert v["bound_gbps"] == pytest.approx(63.0, abs=0.1) and v["floor_gbps"] == pytest.approx(18.9, abs=0.01)
    assert v["status"] == "pass"


def test_rtx5090_pcie_without_p2p_is_judged_against_host_memory():
    five = pcie((12.0, 5, 16, 16), (12.0, 5, 16, 16))
    args = dict(p2p_file=RTX5090 / "nvidia-smi-topo-p2p-rw.txt", pcie_info=five, transports=["SHM"])
    v = na.judge(report(RTX5090 / "nvidia-smi-topo-m.txt", 22.0, **args))
    assert v["class"] == "host_memory" and v["expected_transport"] == "SHM" and v["status"] == "pass"
    assert v["why"] == ["GPU0-GPU1 PHB, P2P GNS"]
    low = na.judge(report(RTX5090 / "nvidia-smi-topo-m.txt", 9.0, **args))
    assert low["status"] == "fail" and not any(c.startswith("transport") for c in low["causes"])


def test_a_narrow_link_is_named_and_lowers_the_bound():
    narrow = pcie((12.0, 5, 16, 16), (12.0, 5, 8, 16))
    v = na.judge(report(RTX5090 / "nvidia-smi-topo-m.txt", 8.0, p2p_file=RTX5090 / "nvidia-smi-topo-p2p-rw.txt",
                        pcie_info=narrow, transports=["SHM"]))
    assert v["bound_basis"].startswith("GPU1 Gen5 x8") and v["status"] == "fail"
    assert any(c.startswith("link width: GPU1 PCIe link runs x8 of x16") for c in v["causes"])


def test_pcie_with_p2p_and_a_network_fallback():
    ok = {"GPU0": {"GPU1": "OK"}, "GPU1": {"GPU0": "OK"}}
    r = report(RTX5090 / "nvidia-smi-topo-m.txt", 5.0, pcie_info=pcie((12.0, 5, 16, 16), (12.0, 5, 16, 16)),
               transports=["NET"])
    r["topology"]["p2p"] = ok
    v = na.judge(r)
    assert v["class"] == "pcie_p2p" and v["floor_gbps"] == pytest.approx(37.8, abs=0.01)
    assert any("/dev/shm" in c for c in v["causes"])


def test_what_cannot_be_judged_is_not_passed():
    unknown_link = na.judge(report(RTX5090 / "nvidia-smi-topo-m.txt", 22.0,
                                   p2p_file=RTX5090 / "nvidia-smi-topo-p2p-rw.txt"))
    assert unknown_link["status"] == "unjudged" and na.EXIT["unjudged"] == 1
    small = na.judge(report(H200_X2 / "nvidia-smi-topo-m.txt", 1.0, pcie_info=H200_PCIE, size=4 << 20))
    assert small["status"] == "unjudged"
    assert na.judge(report(H200_X2 / "nvidia-smi-topo-m.txt", 1.0, pcie_info=H200_PCIE, size=4 << 20,
                           floor_override_gbps=0.5))["status"] == "unjudged"


def test_a_hang_is_an_error_that_points_at_acs():
    v = na.judge(report(RTX5090 / "nvidia-smi-topo-m.txt", 0, results=[], run_errors=["timed out after 600 s"],
                        timed_out=True))
    assert v["status"] == "error" and any("ACS" in c for c in v["causes"])


def test_every_expectation_names_its_sources():
    for name, exp in na.EXPECTATIONS.items():
        assert exp["applies"]
        if exp["floor_fraction"] is not None:
            assert exp["sources"] and exp["transport"], name


# ------------------------------------------------------------- the capture from a lent H200 ----
@pytest.mark.parametrize("name", ["nccl-ws1.json", "gloo-ws2.json"])
def test_the_committed_capture_rejudges_to_the_verdict_it_recorded(name):
    recorded = json.loads((H200_X1 / name).read_text())
    again = na.judge(recorded)
    for key in ("status", "class", "bound_gbps", "floor_gbps", "judged_bytes", "busbw_gbps", "problems"):
        assert again[key] == recorded["verdict"][key], key
    assert recorded["exit_code"] == na.EXIT[again["status"]] == 0
    assert all(r["wrong"] == 0 for r in recorded["results"])


def test_the_h200_capture_ran_nccl_on_the_gpu_from_1mib_to_1gib():
    recorded = json.loads((H200_X1 / "nccl-ws1.json").read_text())
    assert recorded["backend"] == "nccl" and recorded["devices"] == ["NVIDIA H200"]
    assert [r["bytes"] for r in recorded["results"]] == na.sizes_between(1 << 20, GIB)
    assert all(r["busbw_gbps"] == 0 for r in recorded["results"])  # one rank: busbw is 0 by definition
    assert recorded["nccl_version"] == "2.28.9" == recorded["versions"]["nccl_torch"]
    assert na.parse_topo_m(recorded["topology"]["raw"]["topo_m"]) == recorded["topology"]["links"]
    assert recorded["topology"]["pcie"][0]["gen_max"] == 5 and recorded["topology"]["pcie"][0]["width_max"] == 16
    assert (H200_X1 / "nccl-ws1.txt").read_text().splitlines()[-2] == "# verdict: PASS"


# ------------------------------------------------------------------------- verify --nccl ----
FLEET = HostSettings(gpu_count=2, gpu_memory_gib=31.84)


class AcceptanceProbe:
    def __init__(self, output: str, ok: bool = True, acs=None):
        self.output, self.ok = output, ok
        self._acs = acs or {"status": "ok", "acs_enabled": False, "gpus": [{}], "caps_readable": True}

    def nccl_acceptance(self):
        return self.ok, self.output

    def acs(self):
        return self._acs


def scripted(r: dict) -> str:
    """What `docker run` prints: the script's JSON report, after whatever docker said first."""
    r = {**r, "world_size": 2, "nccl_version": "2.27.7", "verdict": na.judge(r)}
    return "WARNING: some docker notice\n" + json.dumps(r, indent=2)


def test_verify_runs_the_script_in_the_nodes_vllm_image_with_servings_nccl_env():
    from operations.vllm import image_tag

    s = HostSettings(gpu_count=2, gpu_memory_gib=31.84, vllm_env={"NCCL_P2P_DISABLE": "1", "VLLM_X": "1"})
    cmd = nccl_acceptance_command(s, "/tmp/pyinfra-abc")
    assert cmd.startswith("docker run --rm --gpus all --shm-size 16g -e NCCL_P2P_DISABLE=1 ")
    assert "VLLM_X" not in cmd
    assert f"--entrypoint python3 {image_tag(s.vllm_image, s.nccl_version, s.pip_install_args)} " in cmd
    assert cmd.endswith("/opt/gpufleet/nccl_acceptance.py --json --world-size 2")


def test_verify_passes_on_the_real_h200_capture():
    probe = AcceptanceProbe((H200_X1 / "nccl-ws1.json").read_text())
    (check,) = check_nccl_acceptance(FLEET, probe)
    assert check.status == "pass" and "NCCL 2.28.9" in check.detail and "single_gpu" in check.detail


def test_verify_names_acs_and_the_transport_when_a_5090_node_is_slow():
    slow = report(RTX5090 / "nvidia-smi-topo-m.txt", 4.0, p2p_file=RTX5090 / "nvidia-smi-topo-p2p-rw.txt",
                  pcie_info=pcie((12.0, 5, 16, 16), (12.0, 5, 8, 16)), transports=["NET"])
    acs = {"status": "ok", "acs_enabled": True, "redirecting": ["0000:00:01.1"], "gpus": [{}], "caps_readable": True}
    (check,) = check_nccl_acceptance(FLEET, AcceptanceProbe(scripted(slow), ok=False, acs=acs))
    assert check.status == "fail" and "below the floor" in check.detail and "host_memory" in check.detail
    assert check.fix.startswith("ACS: PCIe ACS redirects P2P traffic on bridges 0000:00:01.1")
    assert "link width: GPU1 PCIe link runs x8 of x16" in check.fix and "/dev/shm" in check.fix


def test_verify_says_why_the_test_did_not_run():
    (check,) = check_nccl_acceptance(FLEET, AcceptanceProbe(
        "Unable to find image 'gpufleet/vllm-rtx5090:abc' locally\ndocker: Error response from daemon: pull denied",
        ok=False))
    assert check.status == "fail" and "did not run" in check.detail and "run the deploy" in check.fix


def test_unjudged_bandwidth_is_a_warning():
    r = report(RTX5090 / "nvidia-smi-topo-m.txt", 22.0, p2p_file=RTX5090 / "nvidia-smi-topo-p2p-rw.txt")
    (check,) = check_nccl_acceptance(FLEET, AcceptanceProbe(scripted(r), ok=False))
    assert check.status == "warn" and "not judged" in check.detail


def test_parse_acceptance_output_skips_noise_and_foreign_json():
    assert parse_acceptance_output('{"status": "Pulling"}\nnot json\n') is None
    assert parse_acceptance_output(scripted(report(H200_X2 / "nvidia-smi-topo-m.txt", 330.0,
                                                   pcie_info=H200_PCIE)))["verdict"]["status"] == "pass"


def test_the_ladder_runs_the_acceptance_test_last_and_only_when_asked(monkeypatch):
    from gpufleet import verify as ladder

    passing = [lambda s, p, step=step: [ladder.Check(step, "pass", "ok")] for step, _ in ladder.LADDER]
    monkeypatch.setattr(ladder, "LADDER", [(name, f) for (name, _), f in zip(ladder.LADDER, passing)])
    probe = AcceptanceProbe((H200_X1 / "nccl-ws1.json").read_text())
    assert [c.step for c in run_ladder("n", FLEET, probe).checks] == list(ladder.STEPS[:-1])
    checks = run_ladder("n", FLEET, probe, nccl=True).checks
    assert [c.step for c in checks] == list(ladder.STEPS) and checks[-1].status == "pass"
