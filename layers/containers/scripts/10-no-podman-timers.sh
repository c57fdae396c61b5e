# podman's own services would pull newer images on a timer (auto-update) and restart containers
# podman started (restart): the appliance's images are fixed at build time and its containers
# belong to systemd units.
systemctl mask podman-auto-update.service podman-auto-update.timer podman-restart.service
