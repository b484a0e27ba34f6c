"""files/gpu_monitor.py against a fake NVML: a GeForce-like GPU that lacks ECC, fan and XID events
must render and export without crashing, and unsupported fields must stay out of the metrics."""

import importlib.util
import sys
import types
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

MONITOR = Path(__file__).resolve().parents[2] / "files/gpu_monitor.py"


class NVMLError(Exception):
    pass


def _fake_pynvml():
    m = types.ModuleType("pynvml")
    m.NVMLError = NVMLError
    for i, n in enumerate(["NVML_CLOCK_SM", "NVML_CLOCK_MEM", "NVML_TEMPERATURE_GPU", "NVML_VOLATILE_ECC",
                           "NVML_MEMORY_ERROR_TYPE_CORRECTED", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED"]):
        setattr(m, n, i)
    m.nvmlClocksEventReasonGpuIdle, m.nvmlClocksEventReasonSwPowerCap = 1, 4
    m.nvmlEventTypeXidCriticalError = 8

    def unsupported(*_):
        raise NVMLError("Not Supported")

    m.nvmlDeviceGetName = lambda h: "NVIDIA GeForce RTX 5090"
    m.nvmlDeviceGetUUID = lambda h: f"GPU-{h}"
    m.nvmlDeviceGetTemperature = lambda h, s: 41
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=37, memory=12)
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2 * 2**20, total=32607 * 2**20)
    m.nvmlDeviceGetPowerUsage = lambda h: 123456
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: 575000
    m.nvmlDeviceGetClockInfo = lambda h, c: 2407
    m.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 4
    m.nvmlDeviceGetFanSpeed = unsupported
    m.nvmlDeviceGetTotalEccErrors = unsupported
    m.nvmlEventSetCreate = unsupported
    return m


@pytest.fixture
def monitor(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    spec = importlib.util.spec_from_file_location("gpu_monitor_under_test", MONITOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_geforce_sample_renders_with_unsupported_fields(monitor):
    xid = monitor.XidWatcher([0])
    s = monitor.sample(0, 0, xid)
    assert (s["temperature_c"], s["power_w"], s["throttle"]) == (41, 123.456, ["sw-power"])
    assert s["fan"] is None and s["ecc_corrected"] is None and s["xid_count"] is None
    text = monitor.render([s], "580.95.05")
    assert "NVIDIA GeForce RTX 5090" in text and "temp 41C" in text and "util 37%" in text
    assert "ecc corrected n/a" in text and "power 123.5 / 575 W" in text


def test_metrics_exported_only_for_supported_fields(monitor):
    registry = CollectorRegistry()
    exporter = monitor.Exporter(registry)
    exporter.update([monitor.sample(0, 0)])
    text = generate_latest(registry).decode()
    assert 'gpufleet_gpu_temperature_celsius{gpu="0",name="NVIDIA GeForce RTX 5090",uuid="GPU-0"} 41.0' in text
    assert "gpufleet_gpu_power_watts{" in text
    assert "gpufleet_gpu_ecc_errors_corrected_total{" not in text
    assert "gpufleet_gpu_fan_speed_ratio{" not in text


def test_without_nvml_init_reports_and_metrics_say_down(monitor):
    def no_library():
        raise NVMLError("NVML Shared Library Not Found")

    monitor.pynvml.nvmlInit = no_library
    seen = []
    assert monitor.init_nvml(seen.append) is False and seen == ["NVML Shared Library Not Found"]
    registry = CollectorRegistry()
    exporter = monitor.Exporter(registry)
    exporter.set_nvml(False)
    assert "gpufleet_nvml_up 0.0" in generate_latest(registry).decode()
