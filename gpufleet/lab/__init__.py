"""The fleet lab: stand-in bare-metal hosts (systemd + sshd containers) on this machine.

``up`` builds or reuses the cached images, builds the stand-in NVIDIA apt repository, starts the
support services (apt repository, image registry) and one container per inventory host, and
writes the connection data that inventory/lab.py reads. ``down`` removes everything ``up``
created except the cached images (``--purge`` removes those too). See lab/README.md.
"""
