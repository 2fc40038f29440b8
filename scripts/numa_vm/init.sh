#!/bin/busybox sh
# numa-vm guest /init (busybox). The host's / arrives read-only over virtio-9p (tag "host") and
# gets a tmpfs overlay; the output directory arrives read-write (tag "out") and is bound at its
# host path. The command (out/.numa-vm/cmd.sh) runs in a chroot of that root; its output goes to
# the second serial port (the host's stdout), its exit status to out/.numa-vm/rc. Messages from
# here go to the console (first serial port: the host keeps it as out/.numa-vm/console.log).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "numa-vm guest: $*" > /dev/console; }
die() { say "$*"; poweroff -f; sleep 10; }

for m in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$m.ko" || die "insmod $m failed"
done
o9p=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$o9p,cache=none" out /out || die "cannot mount the output directory"
mount -t 9p -o "$o9p,cache=loose,ro" host /lower || die "cannot mount the host root"
mount -t tmpfs -o size=50%,mode=755 tmpfs /up && mkdir /up/upper /up/work
mount -t overlay -o lowerdir=/lower,upperdir=/up/upper,workdir=/up/work overlay /newroot \
    || die "cannot mount the overlay root"
r=/newroot
mount -t proc proc $r/proc
mount -t sysfs sysfs $r/sys
mount -t devtmpfs devtmpfs $r/dev
mkdir -p $r/dev/shm $r/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $r/dev/shm
mount -t devpts devpts $r/dev/pts
outdir=$(cat /out/.numa-vm/guest-path) || die "no guest-path in the output directory"
mkdir -p "$r$outdir" && mount --bind /out "$r$outdir" || die "cannot bind $outdir"

stty -F /dev/ttyS1 raw -echo
say "ready at $(cut -d' ' -f1 /proc/uptime) s; nodes $(cat /sys/devices/system/node/online)"
set -o pipefail
chroot $r /bin/sh "$outdir/.numa-vm/cmd.sh" < /dev/null 2>&1 | cat > /dev/ttyS1
echo $? > /out/.numa-vm/rc
say "exit status $(cat /out/.numa-vm/rc) at $(cut -d' ' -f1 /proc/uptime) s"
sync
umount "$r$outdir"
umount /out
poweroff -f
