"""Lab images and wheels for monitoring. STAND-INS, lab only: production pulls NVIDIA's image.

- ``gpufleet-lab/dcgm-exporter:4.5.3-4.8.2``: a stand-in for ``nvcr.io/nvidia/k8s/dcgm-exporter``
  (lab/images/dcgm-exporter/dcgm-exporter-standin): a small python3 HTTP server on :9400 serving
  DCGM_FI_DEV_* gauges read from the lab's stand-in nvidia-smi, and /health. group_data/lab.py
  points ``dcgm_exporter_image`` at ``lab-registry:5000/gpufleet-lab/dcgm-exporter:4.5.3-4.8.2``.
- gpu_monitor's wheels: ``download_wheels()`` puts the exact wheels of ``gpu_monitor_requirements``
  into the lab repository's ``wheels/`` folder (served as http://lab-repo/wheels/), for
  ``monitor_pip_install_args = ["--no-index", "--find-links", "http://lab-repo/wheels/",
  "--trusted-host", "lab-repo"]``.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path

from gpufleet.lab.progress import say, step
from gpufleet.lab.topology import LAB_DIR, REPO_DIR

STANDIN = LAB_DIR / "images" / "dcgm-exporter" / "dcgm-exporter-standin"
DCGM_NAME = "gpufleet-lab/dcgm-exporter:4.5.3-4.8.2"
LOCAL_REPO = "gpufleet-lab/dcgm-exporter-standin"
WHEELS_DIR = REPO_DIR / "wheels"


def _dockerfile(base_image: str) -> str:
    return (
        f"FROM {base_image}\n"
        "LABEL io.gpufleet.lab.standin=dcgm-exporter\n"
        "COPY dcgm-exporter-standin /usr/local/bin/dcgm-exporter-standin\n"
        "EXPOSE 9400\n"
        'CMD ["/usr/bin/python3", "/usr/local/bin/dcgm-exporter-standin"]\n'
    )


def build(client, base_image: str) -> list[tuple[str, str]]:
    """Build the stand-in DCGM exporter (cached by input digest); return [(local tag, lab name)].

    Also serves gpu_monitor's wheels to the hosts (http://lab-repo/wheels/).
    """
    import docker

    download_wheels()

    dockerfile = _dockerfile(base_image)
    script = STANDIN.read_bytes()
    tag = f"{LOCAL_REPO}:{hashlib.sha256(dockerfile.encode() + script).hexdigest()[:12]}"
    try:
        client.images.get(tag)
        say(f"stand-in dcgm-exporter image {tag} cached")
        return [(tag, DCGM_NAME)]
    except docker.errors.ImageNotFound:
        pass
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data, mode in (("Dockerfile", dockerfile.encode(), 0o644), ("dcgm-exporter-standin", script, 0o755)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    with step(f"build {tag} (STAND-IN dcgm-exporter)"):
        client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, network_mode="bridge")
    return [(tag, DCGM_NAME)]


def wheel_requirements() -> list[str]:
    """The exact pins gpu_monitor's venv installs (gpufleet.settings_edge defaults)."""
    from gpufleet.settings_edge import EdgeSettings

    return list(EdgeSettings().gpu_monitor_requirements)


def download_wheels(dest: Path = WHEELS_DIR, requirements: list[str] | None = None) -> list[Path]:
    """Download the exact wheels (pure Python, no dependencies) into ``dest``; skip ones present."""
    requirements = requirements or wheel_requirements()
    dest.mkdir(parents=True, exist_ok=True)
    with step(f"wheels for gpu_monitor -> {dest}"):
        subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
                        "--only-binary=:all:", "--no-deps", "-d", str(dest), *requirements], check=True)
    return sorted(dest.glob("*.whl"))
