#!/bin/sh
# Run once at image build (from images/base/Dockerfile): installs cubbi's
# units and runtime files and trims systemd for a system container.
# Expects the build context's runtime/ and systemd-units/ copied to
# /usr/local/lib/cubbi/{runtime,systemd-units}/.
set -eu
R=/usr/local/lib/cubbi/runtime
U=/usr/local/lib/cubbi/systemd-units
L=/usr/local/lib/cubbi
S=/etc/systemd/system

# --- cubbi programs
install -m 0755 "$R/init" "$R/cubbi-init" "$R/cubbi-project" "$R/cubbi-ssh-keygen" \
    "$R/cubbi-docker-storage" "$R/cubbi-activity" "$L/"
install -m 0644 "$R/cubbi-lib.sh" "$L/"

# --- units and drop-ins
for f in "$U"/*.service "$U"/*.timer; do install -m 0644 "$f" "$S/"; done
for d in "$U"/*.d; do
    [ -d "$d" ] || continue
    mkdir -p "$S/$(basename "$d")"
    install -m 0644 "$d"/*.conf "$S/$(basename "$d")/"
done
# The inner dockerd and containerd start on first use (docker.socket) or from the timer, never
# in the middle of the boot that the first login waits for. Disabled first: disabling a unit
# also disables what its [Install] section names with Also=.
systemctl disable docker.service containerd.service
systemctl enable cubbi-init.service cubbi-ssh-keygen.service cubbi-project.service \
    ssh.service docker.socket cubbi-docker-late.timer cubbi-activity.timer

# --- sshd: keys only; the session env file is loaded by PAM for every session
install -m 0644 "$R/sshd_config.d/cubbi.conf" /etc/ssh/sshd_config.d/cubbi.conf
if ! grep -q 'envfile=/etc/cubbi/env' /etc/pam.d/sshd; then
    cat >> /etc/pam.d/sshd <<'PAM'

# cubbi: session environment (API keys...) for interactive and `ssh host cmd`
# sessions. The file is 0640 root:agent; a missing file is ignored.
session    optional     pam_env.so readenv=1 user_readenv=0 envfile=/etc/cubbi/env
PAM
fi
# No motd noise on login.
: > /etc/motd
# The image's own environment (trusted CAs) for PAM sessions: /etc/environment.
cat "$R/environment" >> /etc/environment
install -d -m 0755 /etc/cubbi /var/lib/cubbi
# Defaults that cubbi-init would otherwise create at every first boot.
install -m 0640 -o root -g agent /dev/null /etc/cubbi/env
install -d -m 0755 -o agent -g agent /home/agent/workspace
# Validate the sshd config now (the unit skips `sshd -t` at boot); the
# throw-away host key never outlives this layer.
ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
mkdir -p /run/sshd
/usr/sbin/sshd -t
rm -f /etc/ssh/ssh_host_*

# --- journald: volatile; /usr/local/lib/cubbi/init copies it to docker logs
install -d /etc/systemd/journald.conf.d
install -m 0644 "$R/journald.conf.d/cubbi.conf" /etc/systemd/journald.conf.d/cubbi.conf

# --- inner dockerd
install -d /etc/docker
install -m 0644 "$R/docker/daemon.json" /etc/docker/daemon.json

# --- no /run/nologin at boot: sshd must accept the agent as soon as it runs
ln -sf /dev/null /etc/tmpfiles.d/systemd-nologin.conf

# --- mask what makes no sense in a container
systemctl mask \
    getty.target getty@.service serial-getty@.service console-getty.service \
    container-getty@.service getty-static.service \
    systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
    systemd-udev-trigger.service systemd-udev-settle.service systemd-hwdb-update.service \
    systemd-logind.service \
    systemd-firstboot.service systemd-machine-id-commit.service \
    systemd-modules-load.service systemd-remount-fs.service systemd-pstore.service \
    systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
    sys-fs-fuse-connections.mount dev-hugepages.mount \
    systemd-ask-password-console.path systemd-ask-password-wall.path \
    systemd-ask-password-console.service systemd-ask-password-wall.service \
    remote-fs.target remote-fs-pre.target cryptsetup.target \
    apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service \
    dpkg-db-backup.timer dpkg-db-backup.service \
    e2scrub_all.timer e2scrub_all.service e2scrub_reap.service \
    fstrim.timer fstrim.service \
    >/dev/null
# --- and what costs CPU while the first login waits, for nothing here: users come with the
#     image (sysusers), the journal is volatile (journal-flush), /run/nologin is never made
#     (user-sessions), utmp records serve only `who` and `last`
systemctl mask systemd-sysusers.service systemd-journal-flush.service \
    systemd-user-sessions.service systemd-update-utmp.service \
    systemd-update-utmp-runlevel.service >/dev/null
# --- and what only runs under Sysbox, where /proc/sys looks writable and CAP_SYS_MODULE is
#     held in the user namespace: kernel modules cannot be loaded from a container, and the
#     sysctl defaults are the host's business (the inner dockerd sets what it needs). Under
#     Sysbox they took 260 ms (sysctl) and 2 x 170 ms (modprobe@dm_mod, @loop) of the boot
#     the first login waits for on a 2-core host (bench/sessions.py, systemd-analyze).
systemctl mask systemd-sysctl.service modprobe@.service >/dev/null

# --- no generators: nothing for them to do in a container (fstab, gpt,
#     getty, sysv scripts...), and each one costs a fork+exec at every boot
install -d /etc/systemd/system-generators
for g in /lib/systemd/system-generators/*; do
    ln -sf /dev/null "/etc/systemd/system-generators/$(basename "$g")"
done

# --- every container gets its own machine id (systemd makes a transient one)
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
ln -s /etc/machine-id /var/lib/dbus/machine-id
