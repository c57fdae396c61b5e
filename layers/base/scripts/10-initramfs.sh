# The kernel's package built the initramfs before this layer's files (the hooks under
# /etc/initramfs-tools) were in place: build it again with them.
update-initramfs -u -k all
