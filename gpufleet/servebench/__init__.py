"""`gpufleet bench serve`: a serving benchmark of the fleet (throughput, TTFT, inter-token latency).

- :mod:`gpufleet.servebench.client` streams completions and times them (its own client: vLLM's
  benchmark client needs the vLLM image and the model's tokenizer, which a control host lacks);
- :mod:`gpufleet.servebench.run` picks the targets from the inventory and runs the levels;
- :mod:`gpufleet.servebench.results` summarises, flags slow targets, keeps and compares runs.
"""
