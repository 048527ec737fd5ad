package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The libvirt drill's domains. The names are the drill's own, so that it
// never touches a host's VMs; a domain of that name whose description is
// not drillDescription stops the drill.
const (
	drillVM          = "drfs-drill-vm1"
	drillDRVM        = "drfs-drill-vm1-dr"
	drillDescription = "drfs libvirt drill"
	// drillBoot bounds a guest's run, boot to power off, under TCG.
	drillBoot = 3 * time.Minute
)

// TestLibvirtDrill runs a VM under libvirt from the agent's mount and fails
// it over, with the real thing: libvirtd, QEMU (TCG, no KVM needed) as
// libvirt's own user, a Debian kernel. The guest writes files and their
// checksums on a raw and a qcow2 disk and powers off; the agent, started
// with --allow-other, has protected the VM and ships a point after that;
// then the agent stops, drfs failover materialises the VM's disks and its
// hook defines and starts a second domain on them, which checks every file.
// Only a missing root or /dev/fuse skips it: without libvirt, QEMU or the
// guest's packages (scripts/deps.sh installs them) it fails.
func TestLibvirtDrill(t *testing.T) {
	needFUSE(t)
	start := time.Now()
	startLibvirt(t)
	base := t.TempDir()
	letLibvirtIn(t, base)
	guest := buildGuest(t, filepath.Join(base, "guest"))
	for _, name := range []string{drillVM, drillDRVM} {
		removeDrillDomain(t, name, true)
		t.Cleanup(func() { removeDrillDomain(t, name, false) })
	}

	// The source host: vm1's disks, raw and qcow2, on the agent's mount.
	d := dirs{filepath.Join(base, "src"), filepath.Join(base, "mnt"), filepath.Join(base, "state")}
	for _, dir := range []string{filepath.Join(d.src, "vm1"), d.mnt} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	disks := []string{"data.img", "logs.qcow2"}
	for _, disk := range disks {
		if err := os.Rename(filepath.Join(guest, disk), filepath.Join(d.src, "vm1", disk)); err != nil {
			t.Fatal(err)
		}
	}
	tgt := "dir://" + filepath.Join(base, "target")
	socket := filepath.Join(base, "agent.sock")
	a := startAgent(t, d, socket, "--target", tgt, "--allow-other", "--resync-window", "always")
	serial := filepath.Join(base, "vm1-serial.log")
	drSerial := filepath.Join(base, "vm1-dr-serial.log")
	qemuLogs := []string{filepath.Join("/var/log/libvirt/qemu", drillVM+".log"), filepath.Join("/var/log/libvirt/qemu", drillDRVM+".log")}
	qemuLogSizes := make([]int64, len(qemuLogs))
	for i, f := range qemuLogs {
		if fi, err := os.Stat(f); err == nil {
			qemuLogSizes[i] = fi.Size()
		}
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, f := range []string{serial, drSerial} {
			if log, err := os.ReadFile(f); err == nil {
				t.Logf("serial console, %s:\n%s", filepath.Base(f), log)
			}
		}
		for i, f := range qemuLogs {
			if log, err := os.ReadFile(f); err == nil && int64(len(log)) > qemuLogSizes[i] {
				t.Logf("%s, this test's part:\n%s", f, log[qemuLogSizes[i]:])
			}
		}
		t.Logf("drfs agent:\n%s", a.stderr)
	})
	if out, err := drfsRun(t, "protect", "vm1", "--interval", "2s", "--wait", "--socket", socket); err != nil {
		t.Fatalf("drfs protect vm1: %v\n%s\n%s", err, out, a.stderr)
	}

	// The VM writes and powers off; a point cut after that is shipped.
	var onMount []string
	for _, disk := range disks {
		onMount = append(onMount, filepath.Join(d.mnt, "vm1", disk))
	}
	xml := filepath.Join(base, drillVM+".xml")
	if err := os.WriteFile(xml, []byte(drillDomain(drillVM, guest, "write", serial, onMount)), 0o644); err != nil {
		t.Fatal(err)
	}
	virshOK(t, "define", xml)
	boot := time.Now()
	virshOK(t, "start", drillVM)
	waitShutOff(t, drillVM)
	t.Logf("%s wrote and powered off in %v", drillVM, time.Since(boot).Round(time.Millisecond))
	if log, _ := os.ReadFile(serial); !strings.Contains(string(log), "DRFS-WRITE OK") {
		t.Fatalf("%s did not write its files (no DRFS-WRITE OK on its console)", drillVM)
	}
	gen := waitCut(t, d.state, "vm1", time.Now())
	t.Logf("recovery point %d cut after the power off", gen)
	a.stop(t)

	// The recovery site: fail over, and the hook starts the VM there.
	dr := filepath.Join(base, "dr")
	hook := filepath.Join(base, "failover-hook.sh")
	if err := os.WriteFile(hook, []byte(drillHook(drillDRVM, guest, drSerial)), 0o755); err != nil {
		t.Fatal(err)
	}
	boot = time.Now()
	out := failover(t, "vm1", "--type", "unplanned", "--target", tgt, "--to", dr, "--hook", hook)
	if !strings.Contains(out, "started") {
		t.Errorf("the failover hook did not say it started %s:\n%s", drillDRVM, out)
	}
	waitShutOff(t, drillDRVM)
	t.Logf("%s failed over, booted and checked in %v", drillDRVM, time.Since(boot).Round(time.Millisecond))
	log, _ := os.ReadFile(drSerial)
	for _, want := range []string{"DRFS-CHECK vda OK", "DRFS-CHECK vdb OK", "DRFS-CHECK OK"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("the failed-over VM's console does not say %q", want)
		}
	}
	if strings.Contains(string(log), "FAILED") {
		t.Errorf("the failed-over VM found files that differ from what the VM wrote")
	}
	// What the guest sees of each disk is the source's, byte for byte.
	for _, disk := range disks {
		f := "raw"
		if strings.HasSuffix(disk, ".qcow2") {
			f = "qcow2"
		}
		src, fo := filepath.Join(d.src, "vm1", disk), filepath.Join(dr, disk)
		if out, err := exec.Command("qemu-img", "compare", "-f", f, "-F", f, src, fo).CombinedOutput(); err != nil {
			t.Errorf("qemu-img compare %s %s: %v\n%s", src, fo, err, out)
		}
	}
	t.Logf("the libvirt drill took %v", time.Since(start).Round(time.Second))
}

// drillDomain returns the definition of a drill domain: the guest's kernel
// and initramfs booted directly in mode (write or check), disks as virtio
// disks in order, the serial console logged to serial. cache='none'
// io='native' (O_DIRECT and Linux AIO): every write of the guest reaches
// the mount before the guest sees it done, and the guest's flushes are
// honoured (docs/libvirt.md).
func drillDomain(name, guest, mode, serial string, disks []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `<domain type='qemu'>
  <name>%s</name>
  <description>%s</description>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>console=ttyS0 panic=-1 drfs.mode=%s</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
`, name, drillDescription, filepath.Join(guest, "vmlinuz"), filepath.Join(guest, "initrd.img"), mode)
	for i, disk := range disks {
		f := "raw"
		if strings.HasSuffix(disk, ".qcow2") {
			f = "qcow2"
		}
		fmt.Fprintf(&b, `    <disk type='file' device='disk'>
      <driver name='qemu' type='%s' cache='none' io='native'/>
      <source file='%s'/>
      <target dev='vd%c' bus='virtio'/>
    </disk>
`, f, disk, 'a'+i)
	}
	fmt.Fprintf(&b, `    <serial type='file'>
      <source path='%s'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
`, serial)
	return b.String()
}

// drillHook returns the failover hook of the drill, a shell script: the
// definition of domain name on the disks drfs failover materialised
// ($DRFS_DISKS, in $DRFS_DIR), written next to them, virsh define, virsh
// start. It is the hook of docs/libvirt.md, with the drill's guest.
func drillHook(name, guest, serial string) string {
	return fmt.Sprintf(`#!/bin/sh
# drfs failover --hook: define and start %[1]s on the failed-over disks.
set -eu
xml=$DRFS_DIR/%[1]s.xml
{
	cat <<EOF
<domain type='qemu'>
  <name>%[1]s</name>
  <description>%[2]s</description>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>%[3]s</kernel>
    <initrd>%[4]s</initrd>
    <cmdline>console=ttyS0 panic=-1 drfs.mode=check</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
EOF
	i=0
	for disk in $DRFS_DISKS; do
		i=$((i + 1))
		case $disk in
		*.qcow2) format=qcow2 ;;
		*) format=raw ;;
		esac
		cat <<EOF
    <disk type='file' device='disk'>
      <driver name='qemu' type='$format' cache='none' io='native'/>
      <source file='$disk'/>
      <target dev='vd$(echo abcdefghijklmnopqrstuvwxyz | cut -c $i)' bus='virtio'/>
    </disk>
EOF
	done
	cat <<EOF
    <serial type='file'>
      <source path='%[5]s'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
} >"$xml"
virsh -c qemu:///system define "$xml"
virsh -c qemu:///system start %[1]s
`, name, drillDescription, filepath.Join(guest, "vmlinuz"), filepath.Join(guest, "initrd.img"), serial)
}

// virsh runs virsh on the system connection, for a minute at most, and
// returns its output.
func virsh(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "virsh", append([]string{"-c", "qemu:///system"}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// virshOK runs virsh and fails the test if it fails.
func virshOK(t *testing.T, args ...string) string {
	t.Helper()
	out, err := virsh(args...)
	if err != nil {
		t.Fatalf("virsh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// waitShutOff waits until domain name has shut off, for drillBoot at most.
func waitShutOff(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(drillBoot)
	for {
		state, err := virsh("domstate", name)
		if err == nil && state == "shut off" {
			return
		}
		if time.Now().After(deadline) {
			virsh("destroy", name)
			t.Fatalf("%s has not shut off after %v (state %q, %v)", name, drillBoot, state, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// removeDrillDomain destroys and undefines domain name if it is the
// drill's; one of another description fails the test when before is set
// (the drill would replace it), and is left alone.
func removeDrillDomain(t *testing.T, name string, before bool) {
	t.Helper()
	xml, err := virsh("dumpxml", name)
	if err != nil {
		return // no such domain
	}
	if !strings.Contains(xml, "<description>"+drillDescription+"</description>") {
		if before {
			t.Fatalf("a domain %s that is not the drill's exists already: the drill would replace it", name)
		}
		return
	}
	virsh("destroy", name)
	if out, err := virsh("undefine", name); err != nil {
		t.Errorf("virsh undefine %s: %v\n%s", name, err, out)
	}
}

// buildGuest builds the drill's guest into dir with
// scripts/libvirt-guest.sh, and returns dir.
func buildGuest(t *testing.T, dir string) string {
	t.Helper()
	script, err := filepath.Abs(filepath.Join("..", "..", "scripts", "libvirt-guest.sh"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if out, err := exec.Command("sh", script, dir).CombinedOutput(); err != nil {
		t.Fatalf("building the guest (scripts/deps.sh installs what it needs): %v\n%s", err, out)
	}
	t.Logf("guest built in %v", time.Since(start).Round(time.Millisecond))
	return dir
}

// letLibvirtIn lets libvirt's QEMU user reach dir: the test's temporary
// directories are made 0755, and every directory above them must let
// others through already.
func letLibvirtIn(t *testing.T, dir string) {
	t.Helper()
	root := filepath.Dir(dir) // the test's own temporary directory
	for _, p := range []string{root, dir} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p := filepath.Dir(root); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			t.Fatalf("libvirt's QEMU user cannot reach %s: %s is %v; set TMPDIR to a directory others can traverse", dir, p, fi.Mode().Perm())
		}
		if p == "/" {
			return
		}
	}
}

// startLibvirt makes sure virtlogd and libvirtd run, starting those that
// do not (without systemd, as in CI), stopped again at the end of the test;
// and that libvirtd answers on qemu:///system.
func startLibvirt(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("virsh"); err != nil {
		t.Fatal("the libvirt drill needs virsh, libvirtd and QEMU: install libvirt-daemon-system and qemu-system-x86 (scripts/deps.sh)")
	}
	for _, name := range []string{"virtlogd", "libvirtd"} {
		if processRunning(name) {
			continue
		}
		startDaemon(t, name)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := virsh("uri")
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("libvirtd does not answer on qemu:///system after 30s: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startDaemon starts the libvirt daemon name in the foreground, as a child
// of the test, and stops it (SIGTERM) at the end; its output is shown if the
// test fails.
func startDaemon(t *testing.T, name string) {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if path, err = exec.LookPath(filepath.Join("/usr/sbin", name)); err != nil {
			t.Fatalf("the libvirt drill needs %s: install libvirt-daemon-system (scripts/deps.sh)", name)
		}
	}
	cmd := exec.Command(path)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second // if a child of the daemon holds its output
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Logf("started %s (pid %d)", name, cmd.Process.Pid)
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() && out.String() != "" {
			t.Logf("%s:\n%s", name, out)
		}
	})
	select {
	case <-exited:
		t.Fatalf("%s exited at once: %v\n%s", name, waitErr, out)
	case <-time.After(500 * time.Millisecond):
	}
}

// processRunning reports whether a process of that command name runs.
func processRunning(name string) bool {
	comms, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, c := range comms {
		if b, err := os.ReadFile(c); err == nil && strings.TrimSpace(string(b)) == name {
			return true
		}
	}
	return false
}
