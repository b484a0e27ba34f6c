#!/usr/bin/env bash
# Make sure this machine can run the lab: a Docker engine that answers, and debootstrap.
# Installs Debian's docker.io and debootstrap when missing (needs root and apt), and starts the
# engine when none answers: through systemd where systemd runs, otherwise as a background dockerd.
set -euo pipefail

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v gpg >/dev/null 2>&1 || need+=(gnupg)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
if [ ${#need[@]} -gt 0 ]; then
  echo "lab: installing ${need[*]} (apt)" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
  exit 0
fi
if [ "$(ps -o comm= -p 1 2>/dev/null)" = systemd ]; then
  systemctl start docker
else
  echo "lab: starting dockerd (log: /var/log/gpufleet-dockerd.log)" >&2
  setsid nohup dockerd --host unix:///var/run/docker.sock >/var/log/gpufleet-dockerd.log 2>&1 < /dev/null &
fi
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "lab: the Docker engine did not start; see /var/log/gpufleet-dockerd.log" >&2
exit 1
