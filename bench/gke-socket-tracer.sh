#!/bin/sh
# The original GKE containerd socket tracer's pipeline, rebuilt for bench/original.py.
#
#   gke-socket-tracer.sh PROGRAM.bt CTR ADDRESS NODE
#
# GoogleCloudPlatform/k8s-node-tools (containerd/socket-tracer) pipes bpftrace's "PID COMM"
# lines into a shell loop that names each caller, one event at a time, with a new CRI client
# process per step: `crictl inspect` over every running container, keeping the one whose
# init PID is the caller's; on a miss it asks `ps` for the parent and tries again, until PID 1.
# This script does the same with what this machine has: containerd's `ctr` (a Go gRPC client
# like crictl, and a command the probe skips, as it skips crictl) lists the running tasks with
# their init PIDs and, on a hit, reads that container's spec for the pod's annotations. Like
# the original it takes the time with `date` at every step and writes its lines unescaped.
# Unlike it: no `nsenter -at 1` (this runs in the host's namespaces already), and one more line
# per event, "event pid=P comm=C", so the benchmark can count the events it handled.
set -u

program=$1 ctr=$2 address=$3 node=$4

# The container whose running init process is $1, as one log line with the caller's name $2;
# nothing on a miss. Sandboxes are skipped: `crictl inspect` lists containers only.
lookup() {
	now=$(date -u +'%Y-%m-%dT%H:%M:%SZ')
	"$ctr" --address "$address" -n k8s.io tasks ls | while read -r id pid status; do
		[ "$pid" = "$1" ] && [ "$status" = RUNNING ] || continue
		"$ctr" --address "$address" -n k8s.io containers info "$id" | {
			kind='' namespace='' name='' container=''
			while read -r key value; do
				value=${value%,}
				value=${value#\"}
				value=${value%\"}
				case $key in
				'"io.kubernetes.cri.container-type":') kind=$value ;;
				'"io.kubernetes.cri.sandbox-namespace":') namespace=$value ;;
				'"io.kubernetes.cri.sandbox-name":') name=$value ;;
				'"io.kubernetes.cri.container-name":') container=$value ;;
				esac
			done
			[ "$kind" = container ] || exit 0
			printf 'time="%s" msg="containerd socket connection opened" node="%s" pod="%s/%s" container="%s" comm="%s"\n' \
				"$now" "$node" "$namespace" "$name" "$container" "$2"
		}
	done
}

bpftrace "$program" | {
	read -r _ # bpftrace's "Attaching 1 probe..."
	while read -r pid comm; do
		echo "event pid=$pid comm=$comm"
		current=$pid
		while true; do
			output=$(lookup "$current" "$comm")
			if [ -n "$output" ]; then
				echo "$output"
				break
			fi
			# Not a container's init process: try its parent, as the original does.
			if ! ppid=$(ps -o ppid= -p "$current" 2>/dev/null | tr -d ' '); then
				break
			fi
			if [ -z "$ppid" ] || [ "$ppid" -eq 1 ]; then
				break
			fi
			current=$ppid
		done
	done
}
