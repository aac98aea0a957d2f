#!/bin/sh
# PID 1 of the supermachine lab (busybox sh). The host shares its root
# file system as 9p tag "hostroot" and a per-run control directory as
# "labctl" (holding cmd.sh; we write stdout, stderr and exit there).
# Anything this script prints goes to the console (ttyS0), which the host
# keeps in a log and shows only when the lab fails. Do not `exit`: PID 1
# exiting panics the kernel, which the host reports as "no exit code".
export PATH=/bin

fail() {
	echo "supermachine-lab init: $*"
	poweroff -f
	sleep 10
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# Order matters: busybox insmod does not resolve dependencies.
for m in @MODULES@; do
	insmod "/lib/modules/$m.ko" || fail "insmod $m failed"
done

# The control share stays uncached so every write (output, exit code)
# reaches the host before the write returns. The root share is cached
# (loose): exec-heavy commands start ~1.7x faster, and nothing else writes
# to the host while the lab runs.
opts=trans=virtio,version=9p2000.L,msize=524288
mount -t 9p -o "$opts,cache=none" labctl /ctl || fail "cannot mount the control share"

# The heartbeat: a counter rewritten every second on the uncached control
# share. The host calls the lab frozen only when it stops (a slow lab on a
# busy host still beats about once a second), so it tells "the emulated
# machine stopped" from "the command is slow".
(
	n=0
	while :; do
		n=$((n + 1))
		echo $n >/ctl/heartbeat
		sleep 1
	done
) &
heartbeat=$!
mount -t 9p -o "$opts,cache=loose" hostroot /host || fail "cannot mount the host root"

# Fresh kernel file systems inside the chroot; tmpfs where the runtime puts
# Unix sockets, which do not work on 9p.
mount -t proc proc /host/proc || fail "cannot mount /proc"
mount -t sysfs sysfs /host/sys || fail "cannot mount /sys"
mount -t devtmpfs devtmpfs /host/dev || fail "cannot mount /dev"
mkdir -p /host/dev/pts /host/dev/shm
# udev makes these on the host; devtmpfs does not.
ln -s /proc/self/fd /host/dev/fd
ln -s fd/0 /host/dev/stdin
ln -s fd/1 /host/dev/stdout
ln -s fd/2 /host/dev/stderr
mount -t devpts -o ptmxmode=0666 devpts /host/dev/pts
for d in dev/shm run; do
	mount -t tmpfs -o mode=1777 tmpfs "/host/$d" || fail "cannot mount /$d"
done
# The host's /tmp stays visible (a caller may well work under it, a fresh
# clone from mktemp for one); new temporary files and sockets go to a tmpfs
# through TMPDIR, which the command script sets.
mkdir -p /host/run/lab-tmp && chmod 1777 /host/run/lab-tmp
# For the lab's own test of the heartbeat, which stops it on purpose.
echo $heartbeat >/host/run/lab-heartbeat.pid
# Directories the caller shares uncached (LabOptions::shares), at their own
# paths: what the command writes there reaches the host at once, so it
# survives a freeze or a crash of the lab.
while read -r tag dir; do
	mkdir -p "/host$dir"
	mount -t 9p -o "$opts,cache=none" "$tag" "/host$dir" || fail "cannot mount the shared directory $dir"
done </ctl/shares
ip link set lo up
# QEMU's user network (restricted: nothing leaves the host): passt, the
# guest network's backend, needs an interface with a default route. These
# are QEMU's fixed user-network addresses.
if [ -e /sys/class/net/eth0 ]; then
	ip link set eth0 up &&
		ip addr add 10.0.2.15/24 dev eth0 &&
		ip route add default via 10.0.2.2 ||
		echo "supermachine-lab init: eth0 setup failed"
fi
hostname supermachine-lab

# The command gets pipes, as it would on the host; relays copy them into
# files on the control share. (Given the 9p files directly, a command's
# `echo x >/dev/stderr` would reopen them with O_TRUNC and wipe them.)
mkfifo /stdout.pipe /stderr.pipe
cat /stdout.pipe >/ctl/stdout &
out=$!
cat /stderr.pipe >/ctl/stderr &
err=$!
sh /ctl/cmd.sh </dev/null >/stdout.pipe 2>/stderr.pipe
code=$?
# The relays end when the command's last process closes the pipes; one it
# left running in the background gets two seconds to finish.
(sleep 2; kill $out $err) 2>/dev/null &
dog=$!
wait $out $err
kill $dog 2>/dev/null
echo $code >/ctl/exit
sync
poweroff -f
sleep 10
