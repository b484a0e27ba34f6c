"""gpufleet: provision and operate bare-metal dual-RTX-5090 LLM inference hosts with pyinfra."""

from pathlib import Path

# The repository root: deploy.py, inventory/, group_data/, files/ and lab/ live here.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
