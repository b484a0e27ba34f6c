"""pyinfra config for `make bench-scale`: none. The repository's config.py validates the fleet
before connecting, and the scale bench's light hosts are in no role group on purpose
(lab/bench/base_role.py builds their settings itself)."""
