"""`gpufleet doctor`: walk the troubleshooting tree on each GPU node and say what is wrong and why.

One module per job:

- :mod:`gpufleet.doctor.evidence` reads a node into an evidence dict (two SSH round trips, each
  with a timeout; the commands and parsers are operations/facts/doctor.py);
- :mod:`gpufleet.doctor.rules` turns evidence into findings (pure; the troubleshooting tree);
- :mod:`gpufleet.doctor.logs` classifies a crashed replica's last log lines;
- :mod:`gpufleet.doctor.runner` connects, reads and judges a fleet (exit codes 0 / 2 / 1);
- :mod:`gpufleet.doctor.render` prints text, JSON and the Markdown report;
- :mod:`gpufleet.doctor.redact` hides secrets, host names and addresses.

Example::

    from gpufleet.doctor.runner import diagnose
    run, fleet = diagnose("inventory/prod.py", limit=("gpu-node-03",))
"""
