"""pyinfra's config file: loaded from the repository root before the inventory, for every pyinfra run here.

It installs gpufleet's pre-connect gate (gpufleet/deploying.py): the whole inventory is validated
when pyinfra is about to connect, so a bad inventory stops `pyinfra inventory/prod.py deploy.py`
(with or without -y) with the table of host, key, value and expectation, and no host contacted.
"""

from pyinfra import state

from gpufleet.deploying import gate_before_connect

gate_before_connect(state)
