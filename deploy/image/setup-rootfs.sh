#!/bin/sh
# Runs as root inside the image's root filesystem, in both builds: as a RUN step of the
# Containerfile, and in a chroot by scripts/build-image. Keep every change to the image's
# Debian side here, so that the two builds give the same content.
#
# Expects /opt/ociresolve/lib to hold the Python dependencies already (it compiles them).
set -eu
export DEBIAN_FRONTEND=noninteractive

# Documentation, manual pages and translations stay out, as in Debian's -slim images (their
# own dpkg.cfg.d file does the same on the Containerfile's base; this one is for the other).
cat >/etc/dpkg/dpkg.cfg.d/ociresolve-slim <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG

apt-get update -q
apt-get upgrade -y -q
# python3-bpfcc: BCC's Python module, for the tracer; libbpfcc: the library it loads. No
# kernel headers: the DaemonSet mounts the host's.
apt-get install -y -q --no-install-recommends python3 python3-bpfcc libbpfcc

# What the excludes above did not catch (installed before them) and apt's caches.
apt-get clean
find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find /usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/groff/* /usr/share/info/* /usr/share/lintian/* \
    /usr/share/linda/* /usr/share/locale/*
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/lib/dpkg/*-old \
    /var/log/apt/* /var/log/dpkg.log /var/log/alternatives.log /var/log/bootstrap.log

# Byte-code once, at build time: the root filesystem is read-only when it runs.
python3 -m compileall -q /opt/ociresolve/lib
