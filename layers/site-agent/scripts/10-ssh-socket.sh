# sshd started by its socket when an administrator connects, rather than at every boot: the
# service's start (a config test, then the daemon) sits on the boot's critical path for a
# second under emulation, for a login that comes rarely.
systemctl disable ssh.service
systemctl enable ssh.socket
