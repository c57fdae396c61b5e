# podman's own services would pull newer images on a timer (auto-update) and restart containers
# podman started (restart): the appliance's images are fixed at build time and its containers
# belong to systemd units.
systemctl mask podman-auto-update.service podman-auto-update.timer podman-restart.service
# The API service (podman.service) is enabled by the package to start at every boot, where it
# ran beside the stack's first container, took podman's locks and 1.5 s of CPU under emulation,
# and stopped 5 s later, idle: nothing on the appliance uses the API. Its socket stays, so a
# client that connects still starts it.
systemctl disable podman.service
