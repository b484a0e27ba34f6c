#!/usr/bin/env python3
"""gpufleet on-host GPU monitor: a terminal dashboard and Prometheus metrics from NVML.

Reads every GPU through nvidia-ml-py (`import pynvml`): name, temperature, utilisation, memory,
power, clocks, clock-throttle reasons, ECC error counts and XID errors. A field the GPU does not
support (GeForce cards lack ECC and some power fields) is shown as "n/a" and left out of the
metrics; it never stops the monitor.

    gpu_monitor.py --once                 # print one dashboard and exit
    gpu_monitor.py --port 9401 --interval 5   # serve /metrics on :9401, redraw every 5 s
    gpu_monitor.py --port 0               # dashboard only, no metrics server
    gpu_monitor.py --port 9401 --quiet    # metrics only (the systemd service)

Without NVML (no driver loaded yet, or no libnvidia-ml at all) the metrics server stays up,
reports gpufleet_nvml_up 0 and retries every interval, so a service never crash-loops; --once
exits 1.
"""

from __future__ import annotations

import argparse
import sys
import time

import pynvml

METRIC_PREFIX = "gpufleet_gpu_"
LABELS = ("gpu", "uuid", "name")

# name, help, sample key
GAUGES = (
    ("temperature_celsius", "GPU core temperature", "temperature_c"),
    ("utilization_ratio", "GPU utilisation, 0..1", "util"),
    ("memory_utilization_ratio", "Memory controller utilisation, 0..1", "mem_util"),
    ("memory_used_bytes", "Frame buffer memory in use", "mem_used"),
    ("memory_total_bytes", "Frame buffer memory in total", "mem_total"),
    ("power_watts", "Power draw", "power_w"),
    ("power_limit_watts", "Enforced power limit", "power_limit_w"),
    ("sm_clock_hertz", "SM clock", "sm_clock_hz"),
    ("memory_clock_hertz", "Memory clock", "mem_clock_hz"),
    ("fan_speed_ratio", "Fan speed, 0..1", "fan"),
    ("throttle_reasons", "Bitmask of current clock throttle (clocks event) reasons", "throttle_mask"),
    ("ecc_errors_corrected_total", "Volatile corrected ECC errors", "ecc_corrected"),
    ("ecc_errors_uncorrected_total", "Volatile uncorrected ECC errors", "ecc_uncorrected"),
    ("xid_errors_total", "XID critical errors seen by this monitor", "xid_count"),
    ("last_xid", "Most recent XID error code seen by this monitor", "last_xid"),
)

THROTTLE_NAMES = {
    "GpuIdle": "idle",
    "ApplicationsClocksSetting": "app-clocks",
    "SwPowerCap": "sw-power",
    "HwSlowdown": "hw-slowdown",
    "SyncBoost": "sync-boost",
    "SwThermalSlowdown": "sw-thermal",
    "HwThermalSlowdown": "hw-thermal",
    "HwPowerBrakeSlowdown": "power-brake",
    "DisplayClockSetting": "display",
}


def _try(fn, *args):
    """Call an NVML function; None when the GPU or driver does not support it."""
    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None
    except (AttributeError, TypeError):  # older bindings lack the function
        return None


def _throttle_reasons(mask: int | None) -> list[str]:
    if mask is None:
        return []
    names = []
    for suffix, label in THROTTLE_NAMES.items():
        bit = getattr(pynvml, f"nvmlClocksEventReason{suffix}", None)
        if bit is None:
            bit = getattr(pynvml, f"nvmlClocksThrottleReason{suffix}", None)
        if bit and mask & bit:
            names.append(label)
    return names


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class XidWatcher:
    """Collects XID critical errors through an NVML event set, where the platform supports it."""

    def __init__(self, handles):
        self.counts = {i: 0 for i in range(len(handles))}
        self.last = {i: None for i in range(len(handles))}
        self.supported = {i: False for i in range(len(handles))}
        self._index = {}
        self.event_set = _try(pynvml.nvmlEventSetCreate)
        if self.event_set is None:
            return
        for i, handle in enumerate(handles):
            supported = _try(pynvml.nvmlDeviceGetSupportedEventTypes, handle)
            if supported and supported & pynvml.nvmlEventTypeXidCriticalError:
                try:
                    pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, self.event_set)
                    self.supported[i] = True
                except pynvml.NVMLError:
                    pass
            uuid = _try(pynvml.nvmlDeviceGetUUID, handle)
            if uuid is not None:
                self._index[_decode(uuid)] = i

    def poll(self):
        if self.event_set is None:
            return
        for _ in range(1000):
            try:
                data = pynvml.nvmlEventSetWait_v2(self.event_set, 0)
            except pynvml.NVMLError:
                return  # timeout: no more events
            uuid = _decode(_try(pynvml.nvmlDeviceGetUUID, data.device) or "")
            i = self._index.get(uuid)
            if i is not None:
                self.counts[i] += 1
                self.last[i] = int(data.eventData)


def sample(index: int, handle, xid: XidWatcher | None = None) -> dict:
    """One reading of one GPU; unsupported fields are None."""
    mem = _try(pynvml.nvmlDeviceGetMemoryInfo, handle)
    util = _try(pynvml.nvmlDeviceGetUtilizationRates, handle)
    power_mw = _try(pynvml.nvmlDeviceGetPowerUsage, handle)
    limit_mw = _try(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    sm_mhz = _try(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM)
    mem_mhz = _try(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_MEM)
    fan = _try(pynvml.nvmlDeviceGetFanSpeed, handle)
    mask = _try(pynvml.nvmlDeviceGetCurrentClocksEventReasons, handle)
    if mask is None:
        mask = _try(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, handle)
    ecc = {}
    for key, kind in (("ecc_corrected", pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                      ("ecc_uncorrected", pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)):
        ecc[key] = _try(pynvml.nvmlDeviceGetTotalEccErrors, handle, kind, pynvml.NVML_VOLATILE_ECC)
    return {
        "index": index,
        "name": _decode(_try(pynvml.nvmlDeviceGetName, handle) or "unknown"),
        "uuid": _decode(_try(pynvml.nvmlDeviceGetUUID, handle) or ""),
        "temperature_c": _try(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU),
        "util": util.gpu / 100 if util is not None else None,
        "mem_util": util.memory / 100 if util is not None else None,
        "mem_used": mem.used if mem is not None else None,
        "mem_total": mem.total if mem is not None else None,
        "power_w": power_mw / 1000 if power_mw is not None else None,
        "power_limit_w": limit_mw / 1000 if limit_mw is not None else None,
        "sm_clock_hz": sm_mhz * 1_000_000 if sm_mhz is not None else None,
        "mem_clock_hz": mem_mhz * 1_000_000 if mem_mhz is not None else None,
        "fan": fan / 100 if fan is not None else None,
        "throttle_mask": mask,
        "throttle": _throttle_reasons(mask),
        **ecc,
        "xid_count": xid.counts[index] if xid and xid.supported[index] else None,
        "last_xid": xid.last[index] if xid and xid.supported[index] else None,
    }


def _fmt(value, spec="{}", scale=1.0) -> str:
    if value is None:
        return "n/a"
    return spec.format(value * scale if scale != 1.0 else value)


def render(samples: list[dict], driver: str | None = None) -> str:
    """The dashboard text for one round of samples."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"gpufleet gpu monitor  {stamp}  driver {driver or 'n/a'}  gpus {len(samples)}"]
    for s in samples:
        mem = (f"{_fmt(s['mem_used'], '{:.0f}', 1 / 2**20)} / {_fmt(s['mem_total'], '{:.0f}', 1 / 2**20)} MiB")
        lines += [
            f"GPU {s['index']}  {s['name']}  {s['uuid']}",
            f"  temp {_fmt(s['temperature_c'], '{}C')}   util {_fmt(s['util'], '{:.0f}%', 100)}"
            f"   mem {mem}   fan {_fmt(s['fan'], '{:.0f}%', 100)}",
            f"  power {_fmt(s['power_w'], '{:.1f}')} / {_fmt(s['power_limit_w'], '{:.0f}')} W"
            f"   clocks sm {_fmt(s['sm_clock_hz'], '{:.0f}', 1e-6)} MHz mem {_fmt(s['mem_clock_hz'], '{:.0f}', 1e-6)} MHz",
            f"  throttle {', '.join(s['throttle']) or ('none' if s['throttle_mask'] is not None else 'n/a')}"
            f"   ecc corrected {_fmt(s['ecc_corrected'])} uncorrected {_fmt(s['ecc_uncorrected'])}"
            f"   xid {_fmt(s['xid_count'])} last {_fmt(s['last_xid'])}",
        ]
    return "\n".join(lines)


class Exporter:
    """Prometheus gauges named gpufleet_gpu_<metric>{gpu,uuid,name}."""

    def __init__(self, registry=None):
        from prometheus_client import REGISTRY, Gauge

        registry = registry if registry is not None else REGISTRY
        self.gauges = {
            key: Gauge(METRIC_PREFIX + name, doc, LABELS, registry=registry) for name, doc, key in GAUGES
        }
        self.nvml_up = Gauge("gpufleet_nvml_up", "1 when NVML answers (driver loaded), else 0", registry=registry)
        self.gpu_count = Gauge("gpufleet_nvml_gpus", "GPUs NVML reports", registry=registry)

    def set_nvml(self, up: bool, gpus: int = 0) -> None:
        self.nvml_up.set(1 if up else 0)
        self.gpu_count.set(gpus)

    def update(self, samples: list[dict]) -> None:
        for s in samples:
            labels = (str(s["index"]), s["uuid"], s["name"])
            for key, gauge in self.gauges.items():
                if s.get(key) is not None:
                    gauge.labels(*labels).set(s[key])
                    continue
                try:
                    gauge.remove(*labels)  # the field became unsupported: drop the stale series
                except KeyError:
                    pass


def init_nvml(report=None) -> bool:
    """nvmlInit(); False (after reporting the error once per distinct message) when NVML is unavailable."""
    try:
        pynvml.nvmlInit()
        return True
    except pynvml.NVMLError as error:
        if report is not None:
            report(str(error))
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="print one dashboard and exit")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--port", type=int, default=9401, help="metrics port (0: no metrics server)")
    parser.add_argument("--addr", default="0.0.0.0", help="metrics listen address")
    parser.add_argument("--quiet", action="store_true", help="no dashboard on stdout (metrics only)")
    args = parser.parse_args(argv)

    last_error = []

    def report(message: str) -> None:
        if not last_error or last_error[-1] != message:
            print(f"gpu_monitor: NVML unavailable: {message}", file=sys.stderr, flush=True)
            last_error.append(message)

    if args.once:
        if not init_nvml(report):
            return 1
    exporter = None
    if args.port and not args.once:
        from prometheus_client import start_http_server

        exporter = Exporter()
        start_http_server(args.port, addr=args.addr)
    try:
        if not args.once:
            # No driver (yet): serve gpufleet_nvml_up 0 and retry, rather than exit and crash-loop.
            while not init_nvml(report):
                if exporter:
                    exporter.set_nvml(False)
                time.sleep(max(args.interval, 5.0))
            print("gpu_monitor: NVML initialised", file=sys.stderr, flush=True)
        try:
            driver = _try(pynvml.nvmlSystemGetDriverVersion)
            driver = _decode(driver) if driver is not None else None
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            xid = XidWatcher(handles)
            if args.once:
                xid.poll()
                print(render([sample(i, h, xid) for i, h in enumerate(handles)], driver))
                return 0
            if exporter:
                exporter.set_nvml(True, count)
            while True:
                xid.poll()
                samples = [sample(i, h, xid) for i, h in enumerate(handles)]
                if exporter:
                    exporter.update(samples)
                if not args.quiet:
                    if sys.stdout.isatty():
                        print("\x1b[2J\x1b[H", end="")
                    print(render(samples, driver), flush=True)
                time.sleep(args.interval)
        finally:
            pynvml.nvmlShutdown()
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
